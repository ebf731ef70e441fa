package pgembed

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// clusterDir returns a fresh folder for a cluster that the postgres user can
// reach when the tests run as root (t.TempDir makes its folders 0700).
func clusterDir(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	for _, p := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(base, "pg")
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func startCluster(t *testing.T, cfg Config) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("Start took %v, url %s", time.Since(start).Round(time.Millisecond), c.URL())
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	return c
}

// running reports whether pid is a process that has not exited (a child
// that exited but was not waited for is a zombie, which signal 0 still
// reaches).
func running(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	_, rest, ok := strings.Cut(string(b), ") ")
	return ok && !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestLifecycle runs every scenario on one cluster folder, in order, since
// initdb is the slow part (seconds to tens of seconds on a busy machine).
func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := clusterDir(t)
	cfg := Config{Dir: dir, Logger: testLogger(t)}
	var port int

	step(t, "start, write, stop, restart, read", func(t *testing.T) {
		c := startCluster(t, cfg)
		if !strings.HasPrefix(c.URL(), "postgres://postgres@127.0.0.1:") || !strings.HasSuffix(c.URL(), "/groundmesh?sslmode=disable") {
			t.Fatalf("URL = %q", c.URL())
		}
		if c.Port() == 0 {
			t.Fatal("Port() = 0")
		}
		conn := connect(t, c.URL())
		var db string
		if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil || db != "groundmesh" {
			t.Fatalf("current_database = %q, %v", db, err)
		}
		var listen string
		if err := conn.QueryRow(ctx, "SHOW listen_addresses").Scan(&listen); err != nil || listen != "127.0.0.1" {
			t.Fatalf("listen_addresses = %q, %v", listen, err)
		}
		if _, err := conn.Exec(ctx, "CREATE TABLE kept (id int PRIMARY KEY, name text); INSERT INTO kept VALUES (1, 'first'), (2, 'second')"); err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)

		start := time.Now()
		if err := c.Stop(ctx); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		t.Logf("Stop took %v", time.Since(start).Round(time.Millisecond))
		if _, err := os.Stat(filepath.Join(c.DataDir(), "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("postmaster.pid still there after Stop: %v", err)
		}
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(short, c.URL()); err == nil {
			conn.Close(ctx)
			t.Fatal("connected to a stopped cluster")
		}
		if err := c.Stop(ctx); err != nil {
			t.Fatalf("second Stop: %v", err)
		}

		initdbStamp, err := os.Stat(filepath.Join(c.DataDir(), "PG_VERSION"))
		if err != nil {
			t.Fatal(err)
		}
		c2 := startCluster(t, cfg)
		if c2.Port() != c.Port() {
			t.Logf("port changed across restart: %d -> %d", c.Port(), c2.Port())
		}
		port = c2.Port()
		again, err := os.Stat(filepath.Join(c2.DataDir(), "PG_VERSION"))
		if err != nil || !again.ModTime().Equal(initdbStamp.ModTime()) {
			t.Fatalf("cluster was re-created on restart (%v)", err)
		}
		conn2 := connect(t, c2.URL())
		var n int
		var names string
		if err := conn2.QueryRow(ctx, "SELECT count(*), string_agg(name, ',' ORDER BY id) FROM kept").Scan(&n, &names); err != nil {
			t.Fatalf("read after restart: %v", err)
		}
		if n != 2 || names != "first,second" {
			t.Fatalf("after restart: %d rows %q, want 2 rows first,second", n, names)
		}
		conn2.Close(ctx)
		if err := c2.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	})

	step(t, "stale postmaster.pid", func(t *testing.T) {
		// As after a crash in a container: the old pid now belongs to another
		// live program of the server's own user, which postgres alone takes
		// for a running postmaster ("lock file already exists").
		run, err := newRunner(dir)
		if err != nil {
			t.Fatal(err)
		}
		impostor := exec.Command("sleep", "300")
		if run.asUser {
			impostor.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(run.uid), Gid: uint32(run.gid)}}
		}
		if err := impostor.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = impostor.Process.Kill(); _ = impostor.Wait() }()
		dataDir := filepath.Join(dir, "data")
		stale := strings.Join([]string{
			strconv.Itoa(impostor.Process.Pid), dataDir, "1700000000", strconv.Itoa(port),
			filepath.Join(dir, "run"), "127.0.0.1", "  1234567  7", "ready   ", "",
		}, "\n")
		pidFile := filepath.Join(dataDir, "postmaster.pid")
		if err := os.WriteFile(pidFile, []byte(stale), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := run.chown(pidFile); err != nil {
			t.Fatal(err)
		}
		c := startCluster(t, cfg)
		conn := connect(t, c.URL())
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM kept").Scan(&n); err != nil || n != 2 {
			t.Fatalf("after stale pid recovery: n=%d err=%v", n, err)
		}
		conn.Close(ctx)
		// The program that holds the old pid is not ours to stop.
		if !running(impostor.Process.Pid) {
			t.Fatal("the program holding the stale pid was stopped")
		}

		// A second Start on the same folder (say, after the first process
		// died and left its server running) uses the server that is there.
		c2 := startCluster(t, cfg)
		if c2.Port() != c.Port() {
			t.Fatalf("adopted port %d, running on %d", c2.Port(), c.Port())
		}
		conn2 := connect(t, c2.URL())
		if err := conn2.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		conn2.Close(ctx)
		// Stopping the adopter must not stop the server under the process
		// that started it (a CLI verb run beside `groundmesh up` did).
		if err := c2.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		conn3 := connect(t, c.URL())
		if err := conn3.Ping(ctx); err != nil {
			t.Fatalf("the adopter's Stop stopped the server: %v", err)
		}
		conn3.Close(ctx)

		other := c.Port() + 1
		if other > 65535 {
			other = c.Port() - 1
		}
		withPort := cfg
		withPort.Port = other
		if _, err := Start(ctx, withPort); err == nil || !strings.Contains(err.Error(), "already running") {
			t.Fatalf("Start on another port of a running cluster: err = %v", err)
		}
		if err := c2.Stop(ctx); err != nil {
			t.Fatal(err)
		}

		// The owner dies without stopping its server (kill -9 of `up`;
		// here its lock is dropped, as the kernel drops a dead process's):
		// the next Start adopts the server and owns it, and its Stop stops
		// it rather than leaking it.
		c.releaseOwner()
		c3 := startCluster(t, cfg)
		if !c3.adopted || c3.owner == nil || c3.Port() != c.Port() {
			t.Fatalf("after the owner died: adopted %v, owner %v, port %d (server on %d)", c3.adopted, c3.owner != nil, c3.Port(), c.Port())
		}
		if err := c3.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the adopting owner's Stop left the server running (postmaster.pid: %v)", err)
		}
		if conn, err := pgx.Connect(ctx, c.URL()); err == nil {
			conn.Close(ctx)
			t.Fatal("the server still answers after the adopting owner stopped it")
		}
	})

	step(t, "another data dir's server", func(t *testing.T) {
		// The stale postmaster.pid names a live postgres of another data
		// dir (its pid and port): that server is neither adopted nor
		// stopped, by Start or by Stop.
		other := startCluster(t, Config{Dir: clusterDir(t), Logger: testLogger(t)})
		b, err := os.ReadFile(filepath.Join(other.DataDir(), "postmaster.pid"))
		if err != nil {
			t.Fatal(err)
		}
		otherPid, _, _ := strings.Cut(string(b), "\n")
		run, err := newRunner(dir)
		if err != nil {
			t.Fatal(err)
		}
		dataDir := filepath.Join(dir, "data")
		pidFile := filepath.Join(dataDir, "postmaster.pid")
		stale := strings.Join([]string{
			otherPid, dataDir, "1700000000", strconv.Itoa(other.Port()),
			filepath.Join(dir, "run"), "127.0.0.1", "  1234567  7", "ready   ", "",
		}, "\n")
		if err := os.WriteFile(pidFile, []byte(stale), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := run.chown(pidFile); err != nil {
			t.Fatal(err)
		}
		c := startCluster(t, cfg)
		if c.adopted {
			t.Fatalf("adopted the server of %s (pid %s)", other.DataDir(), otherPid)
		}
		var n int
		if err := connect(t, c.URL()).QueryRow(ctx, "SELECT count(*) FROM kept").Scan(&n); err != nil || n != 2 {
			t.Fatalf("this data dir's own server: n=%d err=%v", n, err)
		}
		if err := c.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := connect(t, other.URL()).Ping(ctx); err != nil {
			t.Fatalf("the other data dir's server was stopped: %v", err)
		}
	})

	step(t, "explicit port and database", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		free := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		explicit := cfg
		explicit.Port, explicit.Database = free, "other_db"
		c := startCluster(t, explicit)
		if c.Port() != free {
			t.Fatalf("Port() = %d, want %d", c.Port(), free)
		}
		conn := connect(t, c.URL())
		var db string
		if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil || db != "other_db" {
			t.Fatalf("current_database = %q, %v", db, err)
		}
		conn.Close(ctx)
		if err := c.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// step runs a dependent subtest and stops the test when it fails.
func step(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

func TestConfigValidation(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []Config{{}, {Dir: "  "}, {Dir: t.TempDir(), Port: -1}, {Dir: t.TempDir(), Port: 70000}} {
		if _, err := Start(ctx, cfg); err == nil {
			t.Errorf("Start(%+v) succeeded", cfg)
		}
	}
}

func TestFindBinDir(t *testing.T) {
	root := t.TempDir()
	mk := func(dir string, names ...string) string {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	all := []string{"initdb", "pg_ctl", "postgres"}
	lib := filepath.Join(root, "lib", "postgresql")
	mk(filepath.Join(lib, "9.6", "bin"), all...)
	v15 := mk(filepath.Join(lib, "15", "bin"), all...)
	mk(filepath.Join(lib, "16", "bin"), "initdb", "pg_ctl") // incomplete: no postgres
	globs := []string{filepath.Join(lib, "*", "bin")}

	// Nothing anywhere: a clear error that says what to install.
	_, err := findBinDir("", mk(filepath.Join(root, "empty")), []string{filepath.Join(root, "none", "*")})
	if !errors.Is(err, ErrNoPostgres) || !strings.Contains(err.Error(), "apt install postgresql") {
		t.Fatalf("err = %v, want ErrNoPostgres naming apt install postgresql", err)
	}

	// The newest complete version wins.
	got, err := findBinDir("", "", globs)
	if err != nil || got != v15 {
		t.Fatalf("findBinDir = %q, %v; want %q", got, err, v15)
	}

	// PATH first, through a symlink to the real folder (as /usr/local/bin/initdb).
	pathDir := mk(filepath.Join(root, "localbin"))
	for _, n := range all {
		if err := os.Symlink(filepath.Join(lib, "9.6", "bin", n), filepath.Join(pathDir, n)); err != nil {
			t.Fatal(err)
		}
	}
	got, err = findBinDir("", pathDir, globs)
	if want := filepath.Join(lib, "9.6", "bin"); err != nil || got != want {
		t.Fatalf("findBinDir via PATH = %q, %v; want %q", got, err, want)
	}

	// An explicit BinDir must be complete.
	if _, err := findBinDir(filepath.Join(lib, "16", "bin"), "", nil); !errors.Is(err, ErrNoPostgres) || !strings.Contains(err.Error(), "postgres") {
		t.Fatalf("incomplete BinDir: err = %v", err)
	}
	if got, err := findBinDir(v15, "", nil); err != nil || got != v15 {
		t.Fatalf("BinDir = %q, %v", got, err)
	}

	// Start reports it too, before touching the folder.
	_, err = Start(context.Background(), Config{Dir: filepath.Join(root, "c"), BinDir: filepath.Join(root, "empty")})
	if !errors.Is(err, ErrNoPostgres) {
		t.Fatalf("Start with no binaries: err = %v", err)
	}
	if _, statErr := os.Stat(filepath.Join(root, "c")); !errors.Is(statErr, os.ErrNotExist) {
		t.Fatalf("Start created the folder before failing: %v", statErr)
	}
}

func TestMachineHasPostgres(t *testing.T) {
	// The integration tests above need the machine's binaries; say plainly
	// which were used, and fail (not skip) when there are none.
	dir, err := findBinDir("", os.Getenv("PATH"), defaultBinGlobs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PostgreSQL binaries: %s", dir)
}
