// Package stack is groundmesh's composition root: it builds the whole
// system from one validated Config — telemetry, Postgres (given or a private
// cluster), migrations, the blob store, the Watermill bus and outbox relay,
// Temporal (given or an in-process dev server with the UI), the workflow
// worker and event bridge, the services as bus consumers, and the HTTP
// gateway — and tears it down in reverse order.
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.temporal.io/sdk/client"
	totel "go.temporal.io/sdk/contrib/opentelemetry"
	"go.temporal.io/sdk/interceptor"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/devserver"
	"github.com/groundmesh/groundmesh/internal/outbox"
	"github.com/groundmesh/groundmesh/internal/pgembed"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/migrations"
	"github.com/groundmesh/groundmesh/services/ground"
	"github.com/groundmesh/groundmesh/workflows"
)

// Config configures a stack. main parses the environment once and fills it.
type Config struct {
	// DataDir holds everything the embedded stack writes: pg/ (private
	// cluster), temporal.db, blobs/, traces.jsonl, scenes/. Required.
	DataDir string
	// BlobURL names the blob store (GROUNDMESH_BLOB_URL, blob.OpenURL):
	// file:///abs/dir or s3://bucket/prefix?endpoint=...&region=...; empty
	// is DataDir/blobs. An S3 store keeps its local cache in
	// DataDir/blobcache.
	BlobURL string
	// DatabaseURL is an existing Postgres; empty starts a private cluster
	// under DataDir/pg from the machine's PostgreSQL binaries.
	DatabaseURL string
	// TemporalAddress is an existing Temporal frontend (host:port); empty
	// starts the in-process dev server persisted to DataDir/temporal.db.
	TemporalAddress string
	// TemporalNamespace defaults to "default".
	TemporalNamespace string
	// TemporalPort and UIPort for the dev server (0 = any free port; UIPort
	// -1 = no UI). The CLI passes 7233 and 8233.
	TemporalPort, UIPort int
	// Bus is "postgres" (default) or "nats"; NATSURL for the latter.
	Bus, NATSURL string
	// HTTPAddr is the gateway's listen address (default 127.0.0.1:8080;
	// "off" disables it).
	HTTPAddr string
	// PluginDir holds the compute plugin binaries (groundmesh-gomlx, ...).
	PluginDir string
	// Offline starts only Postgres, migrations, the blob store and the
	// services, for CLI verbs that call a use case directly; facts they
	// write to the outbox are relayed by the next stack that runs the bus.
	Offline bool
	// Worker runs the Temporal worker, the bridge and the service consumers
	// (true for `up` and `worker`, false for CLI verbs that only need the
	// database and the client).
	Worker bool
	// Ground configures the grounding service and its HTTP API.
	Ground GroundConfig
	Logger *slog.Logger
	// Metrics are the process's OpenTelemetry metrics in the Prometheus
	// model (telemetry.Telemetry.Gatherer), served by GET /metrics beside
	// the grounding service's own. nil: the grounding service's only.
	Metrics prometheus.Gatherer
	// MetricsAddr, when set and not "off", is a listen address that serves
	// GET /metrics and GET /healthz alone: for processes without the
	// gateway (`groundmesh worker`).
	MetricsAddr string
	// Services are the services this process builds and serves: some of
	// ingest, synth, train, eval, ground (AllServices when empty). A
	// service left out is not constructed: no consumer, no plugin host.
	Services []string
	// Queues are the command queues (capabilities, e.g. "train-cuda") the
	// process's command consumers read: for each service it runs and each
	// queue, events.CommandTopic(service, queue). Empty: the default
	// queue alone ("<svc>.requested"), as a single process always did.
	Queues []string
	// Backends are the compute backends ("gomlx", "libtorch", or a backend
	// and device such as "libtorch:cuda") whose plugins the process may
	// start; a command that needs another one fails with an error that
	// says so. Empty: every backend built in.
	Backends []string
	// WorkerID names this process in its command answers (the "worker"
	// metadata key and field) and in the worker registry (table workers).
	// Default "<host>-<pid>".
	WorkerID string
	// BusConsumerPrefix is prepended to every consumer group
	// (bus.Config.ConsumerPrefix): deployments sharing one NATS set
	// different ones.
	BusConsumerPrefix string
	// CommandLease is how soon, on NATS, a command whose worker died goes
	// to another worker of its queue (bus.HandleOptions.Lease; the live
	// worker renews it while it works). Default 30s.
	CommandLease time.Duration
}

// GroundConfig configures services/ground and POST /v1/ground.
type GroundConfig struct {
	// APITokens are the bearer tokens the grounding API accepts. With none,
	// it refuses every request (401) and says how to set one.
	APITokens []string
	// TokenHelp is how an operator sets a token, shown in that 401.
	// Default: "set GROUNDMESH_API_TOKENS (comma-separated) where groundmesh runs".
	TokenHelp string
	// Limits bound requests; Batch configures batching (zero fields take
	// services/ground's defaults).
	Limits ground.Limits
	Batch  ground.BatchConfig
	// Timeout bounds an HTTP grounding request; default 30s.
	Timeout time.Duration
	// ExportBackends is the backend that serves an export of each format
	// (services/ground's ExportBackends) when the request or alias names
	// none. Default: ggml for gguf where its plugin is built and this
	// process may run it; the run's backend otherwise.
	ExportBackends map[string]string
}

func (c *Config) defaults() error {
	if c.DataDir == "" {
		return errors.New("stack config: DataDir is required")
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return fmt.Errorf("stack config: data dir: %w", err)
	}
	c.DataDir = abs
	if c.TemporalNamespace == "" {
		c.TemporalNamespace = "default"
	}
	if c.Bus == "" {
		c.Bus = bus.KindPostgres
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = "127.0.0.1:8080"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := c.workerDefaults(); err != nil {
		return err
	}
	if c.Ground.TokenHelp == "" {
		c.Ground.TokenHelp = "set GROUNDMESH_API_TOKENS (comma-separated) where groundmesh runs"
	}
	return nil
}

// Stack is a running groundmesh.
type Stack struct {
	cfg      Config
	Logger   *slog.Logger
	Pool     *pgxpool.Pool
	Blob     blob.Store
	Bus      *bus.Bus
	Temporal client.Client
	Services *Services

	// groundClient asks services/ground over the bus for the gateway.
	groundClient *ground.Client
	pg           *pgembed.Cluster
	dev          *devserver.Server
	worker       worker.Worker
	relay        *outbox.Relay
	http         *http.Server
	httpURL      string
	metricsSrv   *http.Server
	metricsURL   string
	cancel       context.CancelFunc
	done         []chan error
	closers      []func(context.Context) error
}

// Start builds and starts the stack. On error everything already started
// is stopped again.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	s := &Stack{cfg: cfg, Logger: cfg.Logger}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = s.Close(sctx)
		}
	}()
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel

	// Postgres.
	dbURL := cfg.DatabaseURL
	if dbURL == "" {
		s.pg, err = pgembed.Start(ctx, pgembed.Config{Dir: filepath.Join(cfg.DataDir, "pg"), Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("start private postgres (or set DATABASE_URL): %w", err)
		}
		dbURL = s.pg.URL()
	}
	s.Pool, err = store.Open(ctx, dbURL, cfg.Logger)
	if err != nil {
		return nil, err
	}
	if err := migrations.ApplyPool(ctx, s.Pool, cfg.Logger); err != nil {
		return nil, fmt.Errorf("apply migrations: %w", err)
	}
	if cfg.BlobURL == "" {
		s.Blob, err = blob.NewLocal(filepath.Join(cfg.DataDir, "blobs"))
	} else {
		s.Blob, err = blob.OpenURL(cfg.BlobURL, filepath.Join(cfg.DataDir, "blobcache"))
	}
	if err != nil {
		return nil, err
	}

	if cfg.Offline {
		s.Services, err = newServices(ctx, s)
		return s, err
	}

	// Bus and outbox relay.
	s.Bus, err = bus.New(ctx, bus.Config{Kind: cfg.Bus, NATSURL: cfg.NATSURL, ConsumerPrefix: cfg.BusConsumerPrefix, Logger: cfg.Logger.With("component", "bus")}, s.Pool)
	if err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	s.relay, err = outbox.NewRelay(outbox.RelayConfig{Logger: cfg.Logger.With("component", "outbox")}, s.Pool, s.Bus.Publisher())
	if err != nil {
		return nil, fmt.Errorf("outbox relay: %w", err)
	}
	s.goRun(func() error { return s.relay.Run(runCtx) })

	// Temporal.
	addr := cfg.TemporalAddress
	if addr == "" {
		s.dev, err = devserver.Start(ctx, devserver.Config{
			DataDir: cfg.DataDir, Namespace: cfg.TemporalNamespace, SearchAttributes: workflows.SearchAttributeTypes(),
			FrontendPort: cfg.TemporalPort, UIPort: cfg.UIPort, Logger: cfg.Logger.With("component", "temporal"),
		})
		if err != nil {
			return nil, fmt.Errorf("start temporal dev server: %w", err)
		}
		addr = s.dev.FrontendAddr()
	}
	ti, err := totel.NewTracingInterceptor(totel.TracerOptions{})
	if err != nil {
		return nil, fmt.Errorf("temporal tracing: %w", err)
	}
	s.Temporal, err = client.DialContext(ctx, client.Options{
		HostPort: addr, Namespace: cfg.TemporalNamespace,
		Logger:       tlog.NewStructuredLogger(cfg.Logger.With("component", "temporal-client")),
		Interceptors: []interceptor.ClientInterceptor{ti},
	})
	if err != nil {
		return nil, fmt.Errorf("dial temporal %s: %w", addr, err)
	}
	if cfg.Worker {
		// The Pipeline sets them; a namespace without them would fail its
		// workflow tasks.
		if err := workflows.EnsureSearchAttributes(ctx, s.Temporal, cfg.TemporalNamespace); err != nil {
			return nil, err
		}
	}

	// Services and their consumers.
	s.Services, err = newServices(ctx, s)
	if err != nil {
		return nil, err
	}
	if cfg.Worker {
		if err := s.Services.serveCommands(s.Bus, s.Pool, cfg.Logger); err != nil {
			return nil, err
		}
		if err := s.register(runCtx); err != nil {
			return nil, err
		}
		bridge := workflows.NewBridge(s.Temporal, &workflows.PGTokens{Pool: s.Pool}, cfg.Logger.With("component", "bridge"))
		if err := registerBridge(s.Bus, bridge); err != nil {
			return nil, err
		}
		s.worker = worker.New(s.Temporal, workflows.TaskQueue, worker.Options{})
		workflows.Register(s.worker, &workflows.Activities{Pub: s.Bus, Tokens: &workflows.PGTokens{Pool: s.Pool}, Promoter: ground.NewPGCatalog(s.Pool),
			Workers: &Registry{Pool: s.Pool}})
		if err := s.worker.Start(); err != nil {
			return nil, fmt.Errorf("start temporal worker: %w", err)
		}
	}
	if cfg.HTTPAddr != "off" && s.Services.Ground == nil {
		return nil, errors.New("the HTTP gateway serves the grounding API: run the ground service (services include \"ground\") or turn the gateway off")
	}
	if cfg.HTTPAddr != "off" {
		// Every gateway process must see every answer: its own consumer
		// group, named after the host.
		s.groundClient, err = ground.NewClient(s.Bus, ground.ClientConfig{Handler: gatewayGroup()})
		if err != nil {
			return nil, fmt.Errorf("ground client: %w", err)
		}
	}
	s.goRun(func() error { return s.Bus.Run(runCtx) })
	select {
	case <-s.Bus.Running():
	case <-time.After(30 * time.Second):
		return nil, errors.New("bus router did not start within 30s")
	}

	if cfg.HTTPAddr != "off" {
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("gateway listen %s: %w", cfg.HTTPAddr, err)
		}
		s.httpURL = "http://" + ln.Addr().String()
		gw, err := newGateway(s)
		if err != nil {
			_ = ln.Close()
			return nil, err
		}
		s.http = &http.Server{Handler: gw, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = s.http.Serve(ln) }()
	}
	if cfg.MetricsAddr != "" && cfg.MetricsAddr != "off" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return nil, fmt.Errorf("metrics listen %s: %w", cfg.MetricsAddr, err)
		}
		s.metricsURL = "http://" + ln.Addr().String()
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", s.metricsHandler())
		mux.HandleFunc("GET /healthz", s.healthz)
		s.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = s.metricsSrv.Serve(ln) }()
	}
	return s, nil
}

// WorkerID is the id this process's command answers carry.
func (s *Stack) WorkerID() string { return s.cfg.WorkerID }

// RunsWorker reports whether the process consumes commands (Config.Worker).
func (s *Stack) RunsWorker() bool { return s.cfg.Worker }

// ServiceNames lists the services this process runs.
func (s *Stack) ServiceNames() []string { return slices.Clone(s.cfg.Services) }

// Queues lists the command queues this process's consumers read.
func (s *Stack) Queues() []string { return slices.Clone(s.cfg.Queues) }

// metricsHandler serves the grounding service's metrics and the
// process's OpenTelemetry metrics (Config.Metrics) in the Prometheus text
// format.
func (s *Stack) metricsHandler() http.Handler {
	var gatherers prometheus.Gatherers
	if s.Services.Ground != nil {
		gatherers = append(gatherers, s.Services.Ground.Gatherer())
	}
	if s.cfg.Metrics != nil {
		gatherers = append(gatherers, s.cfg.Metrics)
	}
	return promhttp.HandlerFor(gatherers, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// MetricsURL is the base URL of the metrics-only listener
// (Config.MetricsAddr), or "" when there is none.
func (s *Stack) MetricsURL() string { return s.metricsURL }

// gatewayGroup is the consumer group prefix of this process's ground
// answers: "gateway-ground-<host>".
func gatewayGroup() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "local"
	}
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return '-'
	}, host)
	return "gateway-ground-" + clean
}

func (s *Stack) goRun(fn func() error) {
	ch := make(chan error, 1)
	s.done = append(s.done, ch)
	go func() { ch <- fn() }()
}

// UIURL is the Temporal Web UI ("" when not embedded or disabled).
func (s *Stack) UIURL() string {
	if s.dev == nil {
		return ""
	}
	return s.dev.UIURL()
}

// TemporalAddr is the Temporal frontend address.
func (s *Stack) TemporalAddr() string {
	if s.dev != nil {
		return s.dev.FrontendAddr()
	}
	return s.cfg.TemporalAddress
}

// GatewayURL is the HTTP gateway's base URL ("" when off).
func (s *Stack) GatewayURL() string { return s.httpURL }

// DataDir is the stack's data directory.
func (s *Stack) DataDir() string { return s.cfg.DataDir }

// Close stops everything in reverse order of start.
func (s *Stack) Close(ctx context.Context) error {
	var errs []error
	if s.metricsSrv != nil {
		errs = append(errs, s.metricsSrv.Shutdown(ctx))
	}
	if s.http != nil {
		errs = append(errs, s.http.Shutdown(ctx))
	}
	if s.worker != nil {
		s.worker.Stop()
	}
	if s.cancel != nil {
		s.cancel()
	}
	if s.Bus != nil {
		errs = append(errs, s.Bus.Close())
	}
	for _, ch := range s.done {
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
	if s.Services != nil {
		errs = append(errs, s.Services.close())
	}
	if s.Temporal != nil {
		s.Temporal.Close()
	}
	if s.dev != nil {
		errs = append(errs, s.dev.Stop())
	}
	if s.Pool != nil {
		s.Pool.Close()
	}
	if s.pg != nil {
		errs = append(errs, s.pg.Stop(ctx))
	}
	return errors.Join(errs...)
}
