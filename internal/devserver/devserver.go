// Package devserver runs a Temporal server inside the groundmesh process, for
// `groundmesh up`: all four services (frontend, history, matching, worker) on
// 127.0.0.1, state in a SQLite file under a data folder, so that workflows
// survive a restart, and the Temporal Web UI beside it.
//
// It is built only from public packages of go.temporal.io/server and
// github.com/temporalio/ui-server/v2 and downloads nothing at run time. At
// scale groundmesh talks to a Temporal cluster of its own instead.
package devserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	uiserver "github.com/temporalio/ui-server/v2/server"
	uiconfig "github.com/temporalio/ui-server/v2/server/config"
	uioptions "github.com/temporalio/ui-server/v2/server/server_options"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/membership/static"
	"go.temporal.io/server/common/metrics"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/common/primitives"
	sqliteschema "go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
)

const (
	// DefaultFrontendPort is Temporal's usual gRPC port; pass it for a fixed,
	// well-known address (0 picks a free port).
	DefaultFrontendPort = 7233
	// DefaultUIPort is the Temporal CLI's usual Web UI port.
	DefaultUIPort = 8233
	// NoUI as Config.UIPort runs the server without the Web UI.
	NoUI = -1
	// DefaultNamespace is registered when Config.Namespace is empty.
	DefaultNamespace = "default"
	// DatabaseFile is the SQLite file's name inside Config.DataDir.
	DatabaseFile = "temporal.db"

	host        = "127.0.0.1"
	clusterName = "active"
)

// Config says where the server keeps its state and where it listens.
type Config struct {
	// DataDir holds the SQLite database (DatabaseFile). Created if missing;
	// a folder used before brings back its namespaces and workflows. Required.
	DataDir string
	// Namespace is registered at every start (a no-op when it exists).
	// Default DefaultNamespace ("default").
	Namespace string
	// FrontendPort is the gRPC port clients and workers dial on 127.0.0.1.
	// 0 picks a free port; main passes DefaultFrontendPort (7233) for the
	// usual address. The frontend's HTTP API and the history, matching and
	// worker services always take free ports.
	FrontendPort int
	// UIPort is the Web UI's HTTP port on 127.0.0.1: 0 picks a free port,
	// NoUI (-1) runs no UI; main passes DefaultUIPort (8233) for the usual one.
	UIPort int
	// Logger receives this package's messages and the server's own warnings
	// and errors (its info and debug lines are dropped). Default: slog.Default().
	Logger *slog.Logger
	// StartTimeout bounds the wait for the frontend to serve the namespace
	// and for the UI to answer. Default 60s.
	StartTimeout time.Duration
	// SearchAttributes are custom search attributes the namespace gets
	// when this start registers it (a namespace registered before keeps
	// its own: add to it through the operator API).
	SearchAttributes map[string]enumspb.IndexedValueType
}

func (c *Config) defaults() error {
	if strings.TrimSpace(c.DataDir) == "" {
		return errors.New("devserver config: DataDir is required")
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return fmt.Errorf("devserver config: resolve DataDir: %w", err)
	}
	c.DataDir = abs
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.FrontendPort < 0 || c.FrontendPort > 65535 {
		return fmt.Errorf("devserver config: FrontendPort %d out of range", c.FrontendPort)
	}
	if c.UIPort < NoUI || c.UIPort > 65535 {
		return fmt.Errorf("devserver config: UIPort %d out of range (use %d for no UI)", c.UIPort, NoUI)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.StartTimeout < 0 {
		return errors.New("devserver config: negative StartTimeout")
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 60 * time.Second
	}
	return nil
}

// Server is a running embedded Temporal server (and UI).
type Server struct {
	temporal     temporal.Server
	serverLevel  *slog.LevelVar
	httpAddr     string
	ui           *uiserver.Server
	uiDone       chan struct{}
	frontendAddr string
	uiURL        string
	namespace    string
	dbPath       string
	log          *slog.Logger

	stopOnce sync.Once
	stopErr  error
}

// Start opens (creating it on first use) the SQLite database in
// cfg.DataDir, registers cfg.Namespace, starts the Temporal services and
// the UI, and returns once a client can use the namespace and the UI
// answers. Stop it with Stop.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	begin := time.Now()
	log := cfg.Logger
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("create temporal data folder: %w", err)
	}
	ports, err := reservePorts(cfg.FrontendPort, cfg.UIPort)
	if err != nil {
		return nil, err
	}

	dbPath := filepath.Join(cfg.DataDir, DatabaseFile)
	sqlCfg, err := openDatabase(dbPath, cfg.Namespace, cfg.SearchAttributes)
	if err != nil {
		ports.release()
		return nil, err
	}

	srvCfg := serverConfig(sqlCfg, ports)
	// The services bind their ports while the server is built: let go of
	// ours just before.
	ports.release()
	frontendAddr := net.JoinHostPort(host, strconv.Itoa(ports.frontend))
	serverLevel := new(slog.LevelVar)
	serverLevel.Set(slog.LevelWarn)
	srv, err := temporal.NewServer(
		temporal.WithConfig(srvCfg),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithStaticHosts(map[primitives.ServiceName]static.Hosts{
			primitives.FrontendService: static.SingleLocalHost(frontendAddr),
			primitives.HistoryService:  static.SingleLocalHost(net.JoinHostPort(host, strconv.Itoa(ports.history))),
			primitives.MatchingService: static.SingleLocalHost(net.JoinHostPort(host, strconv.Itoa(ports.matching))),
			primitives.WorkerService:   static.SingleLocalHost(net.JoinHostPort(host, strconv.Itoa(ports.worker))),
		}),
		temporal.WithLogger(serverLogger{slog: log.With("source", "temporal"), min: serverLevel}),
		temporal.WithAuthorizer(authorization.NewNoopAuthorizer()),
		temporal.WithClaimMapper(func(*config.Config) authorization.ClaimMapper {
			return authorization.NewNoopClaimMapper()
		}),
		// No Prometheus listener: groundmesh's own telemetry is OpenTelemetry.
		temporal.WithCustomMetricsHandler(metrics.NoopMetricsHandler),
	)
	if err != nil {
		return nil, fmt.Errorf("build temporal server: %w", err)
	}

	s := &Server{
		temporal:     srv,
		serverLevel:  serverLevel,
		frontendAddr: frontendAddr,
		httpAddr:     net.JoinHostPort(host, strconv.Itoa(ports.http)),
		namespace:    cfg.Namespace,
		dbPath:       dbPath,
		log:          log,
	}
	if err := startTemporal(ctx, srv); err != nil {
		return nil, err
	}

	readyCtx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	if err := waitNamespace(readyCtx, frontendAddr, cfg.Namespace); err != nil {
		return nil, errors.Join(err, s.Stop())
	}
	if ports.ui > 0 {
		if err := s.startUI(readyCtx, ports.ui); err != nil {
			return nil, errors.Join(err, s.Stop())
		}
	}
	log.Info("temporal dev server started", "frontend", frontendAddr, "ui", s.uiURL,
		"namespace", cfg.Namespace, "db", dbPath, "took", time.Since(begin).Round(time.Millisecond))
	return s, nil
}

// FrontendAddr is the host:port that clients and workers dial ("127.0.0.1:7233").
func (s *Server) FrontendAddr() string { return s.frontendAddr }

// HTTPAddr is the host:port of the frontend's HTTP API (and Nexus endpoints).
func (s *Server) HTTPAddr() string { return s.httpAddr }

// UIURL is the Web UI's address ("http://127.0.0.1:8233"), or "" with no UI.
func (s *Server) UIURL() string { return s.uiURL }

// Namespace is the namespace Start registered.
func (s *Server) Namespace() string { return s.namespace }

// DatabasePath is the SQLite file that holds the server's state.
func (s *Server) DatabasePath() string { return s.dbPath }

// Stop stops the UI and the Temporal services. Calling it again returns the
// first call's result.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		begin := time.Now()
		// While stopping, the server's own pollers and clients report closed
		// connections and canceled calls as warnings and errors, during and
		// shortly after Stop: not news. Stop's result says what matters.
		s.serverLevel.Set(slog.LevelError + 1)
		if s.ui != nil {
			s.ui.Stop()
			<-s.uiDone
		}
		if err := s.temporal.Stop(); err != nil {
			s.stopErr = fmt.Errorf("stop temporal server: %w", err)
		}
		s.log.Info("temporal dev server stopped", "took", time.Since(begin).Round(time.Millisecond))
	})
	return s.stopErr
}

// startTemporal runs the blocking Start, giving up (and stopping the server
// once it is up) when ctx ends first.
func startTemporal(ctx context.Context, srv temporal.Server) error {
	done := make(chan error, 1)
	go func() { done <- srv.Start() }()
	select {
	case err := <-done:
		if err != nil {
			_ = srv.Stop()
			return fmt.Errorf("start temporal server: %w", err)
		}
		return nil
	case <-ctx.Done():
		go func() {
			if <-done == nil {
				_ = srv.Stop()
			}
		}()
		return fmt.Errorf("start temporal server: %w", ctx.Err())
	}
}

// openDatabase creates the SQLite schema on first use and registers the
// namespace, returning the persistence config the server runs with.
func openDatabase(path, namespace string, search map[string]enumspb.IndexedValueType) (*config.SQL, error) {
	sqlCfg := &config.SQL{
		PluginName:   sqliteplugin.PluginName,
		DatabaseName: path,
		ConnectAttributes: map[string]string{
			"mode": "rwc",
			// WAL keeps a crash from corrupting the file and lets readers run
			// beside the writer; NORMAL is the usual durability with WAL.
			"journal_mode": "wal",
			"synchronous":  "NORMAL",
			"busy_timeout": "10000",
		},
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		// Build the schema in a side file and rename it into place, so that a
		// crash half way leaves no file that looks ready but is not.
		tmp := path + ".init"
		for _, p := range []string{tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"} {
			_ = os.Remove(p)
		}
		setup := *sqlCfg
		setup.DatabaseName = tmp
		setup.ConnectAttributes = map[string]string{"mode": "rwc"}
		if err := sqliteschema.SetupSchema(&setup); err != nil {
			return nil, fmt.Errorf("create temporal sqlite schema in %s: %w", tmp, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return nil, fmt.Errorf("move temporal sqlite database into place: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("inspect temporal database: %w", err)
	}
	ns, err := sqliteschema.NewNamespaceConfig(clusterName, namespace, false, search)
	if err != nil {
		return nil, fmt.Errorf("describe namespace %q: %w", namespace, err)
	}
	if err := sqliteschema.CreateNamespaces(sqlCfg, ns); err != nil {
		return nil, fmt.Errorf("register namespace %q: %w", namespace, err)
	}
	return sqlCfg, nil
}

func serverConfig(sqlCfg *config.SQL, ports *portSet) *config.Config {
	const store = "sqlite-default"
	frontend := net.JoinHostPort(host, strconv.Itoa(ports.frontend))
	httpAPI := net.JoinHostPort(host, strconv.Itoa(ports.http))
	svc := func(port int) config.Service {
		return config.Service{RPC: config.RPC{GRPCPort: port, BindOnIP: host}}
	}
	c := &config.Config{}
	c.Global.Membership = config.Membership{MaxJoinDuration: 30 * time.Second, BroadcastAddress: host}
	c.Persistence = config.Persistence{
		DefaultStore:     store,
		VisibilityStore:  store,
		NumHistoryShards: 1,
		DataStores:       map[string]config.DataStore{store: {SQL: sqlCfg}},
	}
	c.ClusterMetadata = &cluster.Config{
		EnableGlobalNamespace:    false,
		FailoverVersionIncrement: 10,
		MasterClusterName:        clusterName,
		CurrentClusterName:       clusterName,
		ClusterInformation: map[string]cluster.ClusterInformation{
			// ClusterID stays empty: the server makes a UUID on first start
			// and keeps it in the database.
			clusterName: {Enabled: true, InitialFailoverVersion: 1, RPCAddress: frontend, HTTPAddress: httpAPI},
		},
	}
	c.DCRedirectionPolicy.Policy = "noop"
	fe := svc(ports.frontend)
	fe.RPC.HTTPPort = ports.http
	c.Services = map[string]config.Service{
		string(primitives.FrontendService): fe,
		string(primitives.HistoryService):  svc(ports.history),
		string(primitives.MatchingService): svc(ports.matching),
		string(primitives.WorkerService):   svc(ports.worker),
	}
	c.Archival.History.State = "disabled"
	c.Archival.Visibility.State = "disabled"
	c.NamespaceDefaults.Archival.History.State = "disabled"
	c.NamespaceDefaults.Archival.Visibility.State = "disabled"
	// The server's internal SDK clients (its worker service) dial this.
	c.PublicClient.HostPort = frontend
	return c
}

// waitNamespace returns once the frontend answers DescribeNamespace for ns.
func waitNamespace(ctx context.Context, addr, ns string) error {
	nc, err := client.NewNamespaceClient(client.Options{
		HostPort: addr,
		Logger:   quietSDKLogger(),
	})
	if err != nil {
		return fmt.Errorf("connect to temporal frontend %s: %w", addr, err)
	}
	defer nc.Close()
	var lastErr error
	for {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, lastErr = nc.Describe(callCtx, ns)
		cancel()
		if lastErr == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for namespace %q on %s: %w (last error: %v)", ns, addr, ctx.Err(), lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func quietSDKLogger() sdklog.Logger {
	return sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler))
}

// startUI runs the Web UI on port and waits until it answers.
func (s *Server) startUI(ctx context.Context, port int) (err error) {
	defer func() {
		// ui-server panics on a configuration it rejects; report it instead.
		if r := recover(); r != nil {
			err = fmt.Errorf("build temporal ui server: %v", r)
		}
	}()
	ui := uiserver.NewServer(uioptions.WithConfigProvider(&uiconfig.Config{
		Host:                host,
		Port:                port,
		TemporalGRPCAddress: s.frontendAddr,
		EnableUI:            true,
		DefaultNamespace:    s.namespace,
		// Plain HTTP on loopback: the CSRF cookie must not require TLS.
		CORS:             uiconfig.CORS{CookieInsecure: true},
		HideLogs:         true,
		DisableNewsFetch: true,
	}))
	s.ui = ui
	s.uiDone = make(chan struct{})
	go func() {
		defer close(s.uiDone)
		// Start blocks until Stop. It exits the process when the listener
		// fails, which reservePorts makes unlikely by checking the port first.
		if err := ui.Start(); err != nil {
			s.log.Error("temporal ui server failed", "err", err)
		}
	}()
	s.uiURL = "http://" + net.JoinHostPort(host, strconv.Itoa(port))
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.uiURL+"/healthz", nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for temporal ui on %s: %w", s.uiURL, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// portSet holds the ports Start will use, each held open by a listener until
// release so that two picks cannot collide and a busy port fails early.
type portSet struct {
	frontend, http, history, matching, worker, ui int
	held                                          []net.Listener
}

func reservePorts(frontend, ui int) (*portSet, error) {
	ps := &portSet{}
	take := func(what string, port int) (int, error) {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			if port != 0 {
				return 0, fmt.Errorf("temporal %s port %d on %s is not free: %w", what, port, host, err)
			}
			return 0, fmt.Errorf("pick a free port for temporal %s: %w", what, err)
		}
		ps.held = append(ps.held, l)
		return l.Addr().(*net.TCPAddr).Port, nil
	}
	wanted := []struct {
		what string
		port int
		dst  *int
	}{
		{"frontend", frontend, &ps.frontend},
		{"http api", 0, &ps.http},
		{"history", 0, &ps.history},
		{"matching", 0, &ps.matching},
		{"worker", 0, &ps.worker},
		{"ui", ui, &ps.ui},
	}
	var err error
	for _, w := range wanted {
		if w.what == "ui" && ui == NoUI {
			continue
		}
		if *w.dst, err = take(w.what, w.port); err != nil {
			break
		}
	}
	if err != nil {
		ps.release()
		return nil, err
	}
	return ps, nil
}

func (ps *portSet) release() {
	for _, l := range ps.held {
		_ = l.Close()
	}
	ps.held = nil
}
