// Package pgembed runs a private PostgreSQL cluster from the machine's own
// PostgreSQL binaries, under a folder of its own, for `groundmesh up` when no
// DATABASE_URL is given.
//
// The cluster listens on 127.0.0.1 only, trusts local connections, and keeps
// its data between runs: Start creates it on first use (initdb) and reuses it
// afterwards. When the process runs as root, which initdb refuses, the
// programs run as the postgres system user and the cluster folder belongs to
// that user.
package pgembed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Superuser is the role initdb creates; local connections need no password.
const Superuser = "postgres"

// DefaultDatabase is the database that URL names.
const DefaultDatabase = "groundmesh"

// Config says where the cluster lives and how to reach it.
type Config struct {
	// Dir holds everything the cluster owns: data/ (PGDATA), run/ (the Unix
	// socket), postgres.log and the last port used. Created if missing.
	// Required. When running as root every folder above Dir must be
	// searchable by the postgres user (it is for /tmp, /var/lib, /work...).
	Dir string
	// Port is the TCP port on 127.0.0.1. 0 picks one: the port of the last run
	// when it is still free, else any free port.
	Port int
	// Database is the database URL points at, created when missing.
	// Default DefaultDatabase ("groundmesh").
	Database string
	// BinDir is the folder of initdb, pg_ctl and postgres. Default: found on
	// PATH, else in /usr/lib/postgresql/*/bin (the newest version) and other
	// usual places.
	BinDir string
	// StartTimeout bounds the wait for the server to accept connections.
	// Default 60s.
	StartTimeout time.Duration
	// Logger receives lifecycle messages. Default: slog.Default().
	Logger *slog.Logger
}

func (c *Config) defaults() error {
	if strings.TrimSpace(c.Dir) == "" {
		return errors.New("pgembed config: Dir is required")
	}
	abs, err := filepath.Abs(c.Dir)
	if err != nil {
		return fmt.Errorf("pgembed config: resolve Dir: %w", err)
	}
	c.Dir = abs
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("pgembed config: Port %d out of range", c.Port)
	}
	if c.Database == "" {
		c.Database = DefaultDatabase
	}
	if c.StartTimeout < 0 {
		return errors.New("pgembed config: negative StartTimeout")
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Cluster is a running private PostgreSQL server.
type Cluster struct {
	cfg     Config
	binDir  string
	dataDir string
	runDir  string
	logFile string
	port    int
	run     runner
	log     *slog.Logger
	// adopted marks a server this Cluster found running rather than
	// started.
	adopted bool
	// owner holds an exclusive lock on Dir/owner.lock while this Cluster
	// owns the server: it stops it at Stop, whether it started it or
	// adopted it from a process that died. A Cluster that could not take
	// the lock is a guest of a live owner (a CLI verb beside a running
	// `groundmesh up`) and leaves the server running. The kernel drops the
	// lock when its process dies, however it dies.
	owner *os.File
}

// Start makes the cluster in cfg.Dir ready: it runs initdb on first use,
// clears a postmaster.pid left by a crash, starts the server (or adopts one
// already serving this folder, as after a crash of the process that started
// it) and creates the database that URL names.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	binDir, err := findBinDir(cfg.BinDir, os.Getenv("PATH"), defaultBinGlobs)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	run, err := newRunner(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	c := &Cluster{
		cfg:     cfg,
		binDir:  binDir,
		dataDir: filepath.Join(cfg.Dir, "data"),
		runDir:  filepath.Join(cfg.Dir, "run"),
		logFile: filepath.Join(cfg.Dir, "postgres.log"),
		run:     run,
		log:     cfg.Logger.With("component", "pgembed", "dir", cfg.Dir),
	}
	if err := c.prepareDirs(); err != nil {
		return nil, err
	}
	if c.owner, err = tryLock(filepath.Join(cfg.Dir, "owner.lock")); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	fail := func(err error) (*Cluster, error) {
		c.releaseOwner()
		return nil, err
	}
	if err := c.initdbOnce(ctx); err != nil {
		return fail(err)
	}
	adopted, err := c.adoptOrClearPidFile()
	if err != nil {
		return fail(err)
	}
	c.adopted = adopted
	if adopted && c.owner != nil {
		c.log.Info("postgres adopted from a process that is gone: this one owns it now and stops it when it stops", "port", c.port)
	}
	if !adopted {
		if err := c.startServer(ctx); err != nil {
			return fail(err)
		}
	}
	if err := c.ensureDatabase(ctx); err != nil {
		return nil, errors.Join(err, c.Stop(context.WithoutCancel(ctx)))
	}
	return c, nil
}

// URL is the connection string of the cluster's database
// (postgres://postgres@127.0.0.1:PORT/groundmesh?sslmode=disable).
func (c *Cluster) URL() string { return c.urlFor(c.cfg.Database) }

// AdminURL is the connection string of the "postgres" maintenance database,
// for creating and dropping databases.
func (c *Cluster) AdminURL() string { return c.urlFor("postgres") }

// Port is the TCP port the server listens on, on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// DataDir is the cluster's PGDATA folder.
func (c *Cluster) DataDir() string { return c.dataDir }

func (c *Cluster) urlFor(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(Superuser),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Stop shuts the server down (pg_ctl stop -m fast: open sessions are
// disconnected, nothing committed is lost) when this Cluster owns it: it
// started it, or adopted it after the process that started it died.
// Stopping a stopped cluster is a no-op, and so is stopping as a guest of a
// live owner (a CLI verb that opened the data dir of a running stack):
// stopping the server would cut that process off. Only this data dir's
// server is ever stopped.
func (c *Cluster) Stop(ctx context.Context) error {
	if c.owner == nil {
		c.log.Info("leaving postgres running: another live groundmesh process owns it", "port", c.port)
		return nil
	}
	defer c.releaseOwner()
	if _, err := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	start := time.Now()
	out, err := c.run.output(ctx, c.bin("pg_ctl"), "stop", "-D", c.dataDir, "-m", "fast", "-w", "-t", "60")
	if err != nil {
		if bytes.Contains(out, []byte("Is server running?")) {
			return nil
		}
		return fmt.Errorf("stop postgres in %s: %w: %s", c.dataDir, err, strings.TrimSpace(string(out)))
	}
	c.log.Info("postgres stopped", "port", c.port, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func (c *Cluster) bin(name string) string { return filepath.Join(c.binDir, name) }

// tryLock takes an exclusive lock on path without waiting: the open file
// holds it, or nil when another open file (of a live process) does.
func tryLock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open owner lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// releaseOwner gives up ownership (the lock) without stopping anything.
func (c *Cluster) releaseOwner() {
	if c.owner != nil {
		_ = c.owner.Close()
		c.owner = nil
	}
}

// prepareDirs creates Dir, data/, run/ and the log file, owned by the user the
// server runs as.
func (c *Cluster) prepareDirs() error {
	if err := c.run.checkReachable(c.cfg.Dir); err != nil {
		return fmt.Errorf("prepare postgres folder: %w", err)
	}
	// Folders above Dir that do not exist yet must stay searchable for the
	// server's user, whatever mode Dir itself gets.
	if err := os.MkdirAll(filepath.Dir(c.cfg.Dir), 0o755); err != nil {
		return fmt.Errorf("prepare postgres folder: %w", err)
	}
	for _, d := range []string{c.cfg.Dir, c.dataDir, c.runDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("prepare postgres folder: %w", err)
		}
		if err := c.run.chown(d); err != nil {
			return fmt.Errorf("prepare postgres folder: %w", err)
		}
	}
	f, err := os.OpenFile(c.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("prepare postgres log: %w", err)
	}
	f.Close()
	if err := c.run.chown(c.logFile); err != nil {
		return fmt.Errorf("prepare postgres log: %w", err)
	}
	return nil
}

// initdbOnce creates the cluster unless data/ already holds one.
func (c *Cluster) initdbOnce(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION")); err == nil {
		return nil
	}
	entries, err := os.ReadDir(c.dataDir)
	if err != nil {
		return fmt.Errorf("read postgres data folder: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("postgres data folder %s is not empty but holds no cluster (no PG_VERSION): move it away", c.dataDir)
	}
	start := time.Now()
	out, err := c.run.output(ctx, c.bin("initdb"),
		"-D", c.dataDir, "-U", Superuser, "--auth=trust", "--encoding=UTF8", "--locale=C")
	if err != nil {
		// Leave an empty folder so that the next Start tries again.
		c.clearDir(c.dataDir)
		return fmt.Errorf("initdb %s: %w: %s", c.dataDir, err, tail(out, 2000))
	}
	// Our settings live in a file of their own, rewritten at every start; the
	// include comes last so that it wins over initdb's defaults.
	conf := filepath.Join(c.dataDir, "postgresql.conf")
	f, err := os.OpenFile(conf, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	_, werr := f.WriteString("\n# Added by groundmesh: listen address, port and socket folder.\ninclude_if_exists = 'groundmesh.conf'\n")
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("write postgresql.conf: %w", werr)
	}
	c.log.Info("postgres cluster created", "data", c.dataDir, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func (c *Cluster) clearDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		_ = os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// adoptOrClearPidFile looks at data/postmaster.pid. A live postmaster serving
// this folder is adopted (true). A pid file whose process is gone, or is now
// some other program, is stale: it and any socket lock files are removed, as
// postgres itself refuses to start when the old pid has been reused.
func (c *Cluster) adoptOrClearPidFile() (bool, error) {
	pidPath := filepath.Join(c.dataDir, "postmaster.pid")
	data, err := os.ReadFile(pidPath)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read postmaster.pid: %w", err)
	}
	lines := strings.Split(string(data), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(lines[0]))
	port := 0
	if len(lines) > 3 {
		port, _ = strconv.Atoi(strings.TrimSpace(lines[3]))
	}
	if pid > 0 && port > 0 && postmasterAlive(pid, c.dataDir) {
		if c.cfg.Port != 0 && c.cfg.Port != port {
			return false, fmt.Errorf("postgres in %s is already running on port %d (pid %d), not %d: stop it first", c.dataDir, port, pid, c.cfg.Port)
		}
		c.port = port
		c.log.Info("postgres already running, adopted", "pid", pid, "port", port)
		return true, nil
	}
	c.log.Warn("removing stale postmaster.pid", "pid", pid)
	if err := os.Remove(pidPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("remove stale postmaster.pid: %w", err)
	}
	locks, _ := filepath.Glob(filepath.Join(c.runDir, ".s.PGSQL.*"))
	for _, l := range locks {
		_ = os.Remove(l)
	}
	return false, nil
}

// postmasterAlive reports whether pid is a running postgres whose data folder
// is dataDir. A reused pid (common in containers after a restart) is not.
func postmasterAlive(pid int, dataDir string) bool {
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		if _, statErr := os.Stat("/proc/self"); statErr == nil {
			return false // /proc works and has no such process
		}
		return syscall.Kill(pid, 0) == nil // no /proc: trust the pid
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != "postgres" {
		return false
	}
	want := sameFile(dataDir)
	for i := 1; i < len(args)-1; i++ {
		if args[i] == "-D" && sameFile(args[i+1]) == want {
			return true
		}
	}
	return false
}

func sameFile(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return filepath.Clean(p)
}

// startServer writes groundmesh.conf for a port and runs pg_ctl start,
// trying other ports when a picked one was taken in the meantime.
func (c *Cluster) startServer(ctx context.Context) error {
	tries := 1
	if c.cfg.Port == 0 {
		tries = 3
	}
	var lastErr error
	for i := range tries {
		port := c.cfg.Port
		if port == 0 {
			p, err := c.pickPort(i == 0)
			if err != nil {
				return err
			}
			port = p
		}
		c.port = port
		if err := c.writeConf(); err != nil {
			return err
		}
		start := time.Now()
		out, err := c.run.output(ctx, c.bin("pg_ctl"), "start", "-D", c.dataDir, "-l", c.logFile,
			"-w", "-t", strconv.Itoa(int(c.cfg.StartTimeout.Seconds()+0.5)))
		if err == nil {
			_ = os.WriteFile(filepath.Join(c.cfg.Dir, "port"), []byte(strconv.Itoa(port)+"\n"), 0o644)
			c.log.Info("postgres started", "port", port, "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		logTail := c.logTail()
		lastErr = fmt.Errorf("pg_ctl start on port %d: %w: %s\npostgres.log: %s", port, err, strings.TrimSpace(string(out)), logTail)
		if ctx.Err() != nil || !strings.Contains(logTail, "could not bind") {
			break
		}
	}
	return fmt.Errorf("start postgres in %s: %w", c.dataDir, lastErr)
}

// pickPort prefers the port of the last run, so that URLs stay the same
// across restarts, and otherwise takes one the kernel says is free.
func (c *Cluster) pickPort(preferLast bool) (int, error) {
	if preferLast {
		if b, err := os.ReadFile(filepath.Join(c.cfg.Dir, "port")); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && p > 0 && portFree(p) {
				return p, nil
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func portFree(p int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// maxSocketPath is the longest Unix socket path the kernel accepts, less a margin.
const maxSocketPath = 100

func (c *Cluster) writeConf() error {
	socketDirs := c.runDir
	if len(filepath.Join(c.runDir, ".s.PGSQL.65535")) > maxSocketPath {
		// Too long for a socket address: TCP only.
		socketDirs = ""
		c.log.Warn("postgres socket folder path too long, Unix socket disabled", "run", c.runDir)
	}
	conf := fmt.Sprintf("# Written by groundmesh at every start; edit postgresql.conf instead.\n"+
		"listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n",
		c.port, strings.ReplaceAll(socketDirs, "'", "''"))
	path := filepath.Join(c.dataDir, "groundmesh.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write groundmesh.conf: %w", err)
	}
	if err := c.run.chown(path); err != nil {
		return fmt.Errorf("write groundmesh.conf: %w", err)
	}
	return nil
}

func (c *Cluster) logTail() string {
	b, err := os.ReadFile(c.logFile)
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	return tail(b, 1500)
}

func tail(b []byte, n int) string {
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// ensureDatabase creates the configured database unless it exists.
func (c *Cluster) ensureDatabase(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.AdminURL())
	if err != nil {
		return fmt.Errorf("connect to postgres on port %d: %w", c.port, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", c.cfg.Database).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %q: %w", c.cfg.Database, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{c.cfg.Database}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: created meanwhile
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %q: %w", c.cfg.Database, err)
	}
	c.log.Info("database created", "database", c.cfg.Database)
	return nil
}

// runner runs the PostgreSQL programs: directly, or, when this process is
// root, as the postgres system user (initdb and postgres refuse root).
type runner struct {
	workDir string
	asUser  bool
	uid     int
	gid     int
	groups  []int
	runuser string // path of runuser; empty: switch user through SysProcAttr
}

func newRunner(workDir string) (runner, error) {
	r := runner{workDir: workDir}
	if os.Geteuid() != 0 {
		return r, nil
	}
	u, err := user.Lookup(Superuser)
	if err != nil {
		return r, fmt.Errorf("running as root, so initdb and postgres must run as the %q system user, which was not found (apt install postgresql creates it): %w", Superuser, err)
	}
	r.asUser = true
	r.uid, _ = strconv.Atoi(u.Uid)
	r.gid, _ = strconv.Atoi(u.Gid)
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.Atoi(g); err == nil {
				r.groups = append(r.groups, n)
			}
		}
	}
	if p, err := exec.LookPath("runuser"); err == nil {
		r.runuser = p
	} else {
		for _, p := range []string{"/usr/sbin/runuser", "/sbin/runuser"} {
			if _, err := os.Stat(p); err == nil {
				r.runuser = p
				break
			}
		}
	}
	return r, nil
}

func (r runner) command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	switch {
	case !r.asUser:
		cmd = exec.CommandContext(ctx, bin, args...)
	case r.runuser != "":
		cmd = exec.CommandContext(ctx, r.runuser, append([]string{"-u", Superuser, "--", bin}, args...)...)
	default:
		cmd = exec.CommandContext(ctx, bin, args...)
		groups := make([]uint32, len(r.groups))
		for i, g := range r.groups {
			groups[i] = uint32(g)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(r.uid), Gid: uint32(r.gid), Groups: groups}}
	}
	// The caller's working folder may be closed to the postgres user (/root).
	cmd.Dir = r.workDir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "PGTZ=UTC")
	return cmd
}

func (r runner) output(ctx context.Context, bin string, args ...string) ([]byte, error) {
	cmd := r.command(ctx, bin, args...)
	// pg_ctl start leaves the postmaster holding no pipe of ours: it redirects
	// the server's output to the log file, so CombinedOutput returns.
	return cmd.CombinedOutput()
}

func (r runner) chown(path string) error {
	if !r.asUser {
		return nil
	}
	if err := os.Lchown(path, r.uid, r.gid); err != nil {
		return fmt.Errorf("give %s to the %s user: %w", path, Superuser, err)
	}
	return nil
}

// checkReachable fails, naming the folder to open, when the postgres user
// could not walk down to dir.
func (r runner) checkReachable(dir string) error {
	if !r.asUser {
		return nil
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err == nil {
			if !r.canSearch(st) {
				return fmt.Errorf("the %s user cannot reach %s because %s is closed to it (mode %v): use a folder elsewhere, or open it with chmod o+x %s",
					Superuser, dir, p, st.Mode().Perm(), p)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("inspect %s: %w", p, err)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func (r runner) canSearch(st os.FileInfo) bool {
	mode := st.Mode().Perm()
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return mode&0o001 != 0
	}
	switch {
	case int(sys.Uid) == r.uid:
		return mode&0o100 != 0
	case int(sys.Gid) == r.gid || containsInt(r.groups, int(sys.Gid)):
		return mode&0o010 != 0
	default:
		return mode&0o001 != 0
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
