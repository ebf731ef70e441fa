package stack

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.temporal.io/sdk/client"

	"github.com/groundmesh/groundmesh/internal/pgembed"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/internal/telemetry"
	"github.com/groundmesh/groundmesh/internal/testutil"
	"github.com/groundmesh/groundmesh/workflows"
)

// The crash tests run the whole pipeline (ingest, synthesis, three training
// stages through the GoMLX plugin, evaluation) on a worker that is this test
// binary re-executed with a data dir of its own (in-process Temporal dev
// server persisted there, the Postgres bus), SIGKILL that worker in the
// middle of a chosen stage, start a new worker on the same data dir and
// database, and check that the Pipeline resumes and completes with one
// effect per stage: one synth set, no duplicated checkpoint or evaluation.

const (
	crashChildEnv   = "GROUNDMESH_STACK_CRASH_CHILD"
	crashChildDBEnv = "GROUNDMESH_STACK_CRASH_DB"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		os.Exit(runCrashChild(dir, os.Getenv(crashChildDBEnv)))
	}
	os.Exit(m.Run())
}

// runCrashChild runs a worker stack on dataDir until it is killed or sent
// SIGTERM, and prints "ADDR <temporal frontend>" once it serves.
func runCrashChild(dataDir, dbURL string) int {
	logger := telemetry.NewLogger(os.Stderr, slog.LevelInfo, "groundmesh-crash-child")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	s, err := Start(ctx, Config{
		DataDir: dataDir, DatabaseURL: dbURL, TemporalPort: 0, UIPort: -1, HTTPAddr: "off",
		PluginDir: os.Getenv("GROUNDMESH_PLUGIN_DIR"), Worker: true, Logger: logger,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child: start:", err)
		return 2
	}
	fmt.Printf("ADDR %s\n", s.TemporalAddr())
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Close(cctx); err != nil {
		fmt.Fprintln(os.Stderr, "crash child: close:", err)
		return 1
	}
	return 0
}

// crashWorker is a worker process started by startCrashWorker.
type crashWorker struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has been waited for
	addr   string
	log    string
}

// startCrashWorker starts a worker on dataDir and waits until its Temporal
// frontend serves. Its log goes to logPath; the test's cleanup kills it
// and every process of its group (plugins it started) if still running.
func startCrashWorker(t *testing.T, dataDir, dbURL, plugins, logPath string) *crashWorker {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dataDir, crashChildDBEnv+"="+dbURL, "GROUNDMESH_PLUGIN_DIR="+plugins)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		logf.Close()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addr <- a
			}
		}
		close(addr)
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatalf("worker exited before serving; its log:\n%s", tailFile(logPath, 4000))
		}
		return &crashWorker{cmd: cmd, exited: exited, addr: a, log: logPath}
	case <-time.After(2 * time.Minute):
		t.Fatalf("worker did not serve within 2 minutes; its log:\n%s", tailFile(logPath, 4000))
	}
	return nil
}

// kill SIGKILLs the worker process alone, the way a crash or an OOM kill
// takes it: the plugin processes it started are left to fend for
// themselves (the test's cleanup reaps them).
func (w *crashWorker) kill(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill worker: %v", err)
	}
	<-w.exited
}

// gone reports whether the worker process has exited.
func (w *crashWorker) gone() bool {
	select {
	case <-w.exited:
		return true
	default:
		return false
	}
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// crashPipeline is testutil.SmallPipeline: synthesis long enough (40
// images, 20,000 samples) and evaluation long enough (every benchmark on
// a few records of three checkpoints) to be killed in.
var crashPipeline = testutil.SmallPipeline(11)

func dialTemporal(t *testing.T, addr string) client.Client {
	t.Helper()
	c, err := client.Dial(client.Options{HostPort: addr, Logger: quietTemporalLogger{}})
	if err != nil {
		t.Fatalf("dial temporal %s: %v", addr, err)
	}
	t.Cleanup(c.Close)
	return c
}

type quietTemporalLogger struct{}

func (quietTemporalLogger) Debug(string, ...any) {}
func (quietTemporalLogger) Info(string, ...any)  {}
func (quietTemporalLogger) Warn(string, ...any)  {}
func (quietTemporalLogger) Error(string, ...any) {}

// waitUntil polls cond every 50 ms until it holds, failing after limit.
func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func count(t *testing.T, pool *pgxpool.Pool, query string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		// A table a service has not migrated yet counts as empty.
		if strings.Contains(err.Error(), "does not exist") {
			return 0
		}
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// TestKillWorkerMidSynthesis and TestKillWorkerMidEvaluation: kill -9 of
// the worker while the named stage runs, then a new worker on the same
// data dir: the Pipeline completes, and the killed stage's effects are
// there once.
func TestKillWorkerMidSynthesis(t *testing.T) {
	runCrashTest(t, "synthesis", func(t *testing.T, pool *pgxpool.Pool) bool {
		return count(t, pool, `SELECT count(*) FROM synth_sets WHERE status = 'building'`) > 0
	}, func(t *testing.T, pool *pgxpool.Pool) {
		if n := count(t, pool, `SELECT count(*) FROM synth_sets WHERE status = 'ready'`); n != 0 {
			t.Fatalf("the synth set was ready when the worker was killed: the kill came too late to test anything")
		}
	})
}

func TestKillWorkerMidEvaluation(t *testing.T) {
	runCrashTest(t, "evaluation", func(t *testing.T, pool *pgxpool.Pool) bool {
		if count(t, pool, `SELECT count(*) FROM "watermill_eval.requested"`) == 0 {
			return false
		}
		// Scoring has begun: the command is out and the plugin has
		// been asked for its first answers.
		time.Sleep(1500 * time.Millisecond)
		return true
	}, func(t *testing.T, pool *pgxpool.Pool) {
		if n := count(t, pool, `SELECT count(*) FROM evaluations`); n != 0 {
			t.Fatalf("%d evaluations were recorded when the worker was killed: the kill came too late to test anything", n)
		}
	})
}

// runCrashTest starts a pipeline on a worker, kills the worker (SIGKILL)
// once killAt holds (polled every 50 ms) and checks atKill right after;
// then starts a second worker on the same data dir and database and waits
// for the pipeline to complete there.
func runCrashTest(t *testing.T, stage string, killAt func(*testing.T, *pgxpool.Pool) bool, atKill func(*testing.T, *pgxpool.Pool)) {
	if testing.Short() {
		t.Skip("runs the whole pipeline twice over; skipped with -short")
	}
	t.Parallel()
	plugins := pluginDir(t)
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	dbURL := store.NewTestDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	pool, err := store.Open(ctx, dbURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	first := startCrashWorker(t, dataDir, dbURL, plugins, filepath.Join(dir, "worker-1.log"))
	tc := dialTemporal(t, first.addr)
	run, err := tc.ExecuteWorkflow(ctx, clientOpts("crash-"+stage), workflows.PipelineWorkflowName, crashPipeline)
	if err != nil {
		t.Fatalf("start pipeline: %v", err)
	}
	waitUntil(t, 4*time.Minute, stage+" to begin", func() bool {
		if first.gone() {
			t.Fatalf("worker exited; its log:\n%s", tailFile(first.log, 4000))
		}
		return killAt(t, pool)
	})
	first.kill(t)
	killedAt := time.Now()
	atKill(t, pool)
	t.Logf("killed the worker during %s", stage)

	second := startCrashWorker(t, dataDir, dbURL, plugins, filepath.Join(dir, "worker-2.log"))
	tc2 := dialTemporal(t, second.addr)
	var res workflows.PipelineResult
	if err := tc2.GetWorkflow(ctx, run.GetID(), "").Get(ctx, &res); err != nil {
		t.Fatalf("pipeline after the restart: %v\nsecond worker's log:\n%s", err, tailFile(second.log, 6000))
	}
	t.Logf("the pipeline completed %v after the kill: stages %v", time.Since(killedAt).Round(time.Second), res.StagesRan)
	if len(res.StagesRan) != 4 || len(res.Checkpoints) != 3 || len(res.Metrics) == 0 {
		t.Fatalf("pipeline result %+v", res)
	}

	// One effect per stage.
	checks := []struct {
		what  string
		query string
		want  int
	}{
		{"dataset versions", `SELECT count(*) FROM dataset_versions`, 1},
		{"synth sets", `SELECT count(*) FROM synth_sets`, 1},
		{"ready synth sets", `SELECT count(*) FROM synth_sets WHERE status = 'ready'`, 1},
		{"training runs", `SELECT count(*) FROM runs`, 1},
		{"evaluations recorded twice", testutil.EvaluationsRecordedTwiceSQL, 0},
		{"synth.completed facts and answers for more than one set", `SELECT count(DISTINCT convert_from(payload, 'UTF8')::jsonb->>'synth_set_id') FROM "watermill_synth.completed"`, 1},
	}
	for _, c := range checks {
		if got := count(t, pool, c.query); got != c.want {
			t.Errorf("%s: %d, want %d", c.what, got, c.want)
		}
	}
	if n := count(t, pool, `SELECT count(*) FROM evaluations`); n == 0 {
		t.Errorf("no evaluations recorded")
	}
	if t.Failed() {
		t.Logf("second worker's log:\n%s", tailFile(second.log, 6000))
	}
}

// TestPostgresRestartMidPipeline stops the stack's Postgres while training
// runs and starts it again two seconds later: the services reconnect, the
// Pipeline completes, and nothing is lost or doubled.
func TestPostgresRestartMidPipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline with a private Postgres; skipped with -short")
	}
	t.Parallel()
	// The postgres user must reach the cluster's folder when the tests
	// run as root (t.TempDir makes its folders 0700).
	base := t.TempDir()
	for _, p := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pgDir := filepath.Join(base, "pg")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cl, err := pgembed.Start(ctx, pgembed.Config{Dir: pgDir, Logger: quiet})
	if err != nil {
		t.Fatalf("private Postgres: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cl.Stop(context.Background())
		}
	})
	plugins := pluginDir(t)
	dir := t.TempDir()
	w := startCrashWorker(t, filepath.Join(dir, "data"), cl.URL(), plugins, filepath.Join(dir, "worker.log"))
	tc := dialTemporal(t, w.addr)
	run, err := tc.ExecuteWorkflow(ctx, clientOpts("pg-restart"), workflows.PipelineWorkflowName, crashPipeline)
	if err != nil {
		t.Fatalf("start pipeline: %v", err)
	}
	pool, err := store.Open(ctx, cl.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 4*time.Minute, "training to begin", func() bool {
		return count(t, pool, `SELECT count(*) FROM runs`) > 0
	})
	ckpts := count(t, pool, `SELECT count(*) FROM checkpoints`)
	if n := count(t, pool, `SELECT count(*) FROM evaluations`); n > 0 {
		t.Fatalf("%d evaluations recorded before Postgres was stopped: too late to test anything", n)
	}
	pool.Close()
	stopped = true
	if err := cl.Stop(ctx); err != nil {
		t.Fatalf("stop postgres: %v", err)
	}
	t.Logf("postgres stopped while training ran (%d checkpoints recorded)", ckpts)
	time.Sleep(2 * time.Second)
	cl, err = pgembed.Start(ctx, pgembed.Config{Dir: pgDir, Logger: quiet})
	if err != nil {
		t.Fatalf("start postgres again: %v", err)
	}
	stopped = false
	if cl.URL() == "" {
		t.Fatal("no URL")
	}
	var res workflows.PipelineResult
	if err := tc.GetWorkflow(ctx, run.GetID(), "").Get(ctx, &res); err != nil {
		t.Fatalf("pipeline after the restart: %v\nworker's log:\n%s", err, tailFile(w.log, 6000))
	}
	pool, err = store.Open(ctx, cl.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, c := range []struct {
		what, query string
		want        int
	}{
		{"synth sets", `SELECT count(*) FROM synth_sets WHERE status = 'ready'`, 1},
		{"training runs", `SELECT count(*) FROM runs`, 1},
		{"evaluations recorded twice", testutil.EvaluationsRecordedTwiceSQL, 0},
	} {
		if got := count(t, pool, c.query); got != c.want {
			t.Errorf("%s: %d, want %d", c.what, got, c.want)
		}
	}
	// What the outage cost, for the log: the worker's warnings and errors
	// by message.
	complaints := map[string]int{}
	for _, line := range strings.Split(tailFile(w.log, 1<<22), "\n") {
		var rec struct{ Level, Msg, Err string }
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Level != "ERROR" && rec.Level != "WARN" || strings.Contains(rec.Msg, "unhandled signals") {
			continue
		}
		complaints[fmt.Sprintf("%s %s: %.120s", rec.Level, rec.Msg, rec.Err)]++
	}
	t.Logf("the worker's warnings and errors: %v", complaints)
	// The outbox relays what it held when the server went away.
	waitUntil(t, time.Minute, "the outbox to relay every fact", func() bool {
		return count(t, pool, `SELECT count(*) FROM outbox WHERE published_at IS NULL`) == 0
	})
	if t.Failed() {
		t.Logf("worker's log:\n%s", tailFile(w.log, 6000))
	}
}

// TestFullBlobDiskMidPipeline runs the pipeline with its blob store on a
// real file system that is full (a 48 MiB tmpfs with a filler file leaving
// 1 MiB free: this test mounts, so it needs root and skips without it).
// Synthesis fails on the full disk with an error that names it and records
// the set failed, not ready; once the filler is removed, the activity's
// retry builds the set and the Pipeline completes, with nothing partial
// left behind.
func TestFullBlobDiskMidPipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline; skipped with -short")
	}
	t.Parallel()
	plugins := pluginDir(t)
	dataDir := t.TempDir()
	blobs := filepath.Join(dataDir, "blobs")
	free := mountSmallDisk(t, blobs, "48m")
	filler := filepath.Join(blobs, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, zeroReader{}, free-1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s, _, _ := testStack(t, func(c *Config) { c.DataDir = dataDir; c.PluginDir = plugins })
	ctx, run := startPipeline(t, s, "full-disk", crashPipeline)
	var why string
	waitUntil(t, 4*time.Minute, "synthesis to fail on the full disk", func() bool {
		err := s.Pool.QueryRow(ctx, `SELECT error FROM synth_sets WHERE status = 'failed'`).Scan(&why)
		return err == nil
	})
	t.Logf("synthesis on the full disk: %s", why)
	if !strings.Contains(why, "no space left on device") {
		t.Errorf("the failure does not name the full disk: %q", why)
	}
	if n := count(t, s.Pool, `SELECT count(*) FROM synth_sets WHERE status = 'ready'`); n != 0 {
		t.Fatalf("%d synth sets recorded ready on a full disk", n)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	pipelineDone(t, ctx, run, "once the disk had room")
	if n := count(t, s.Pool, `SELECT count(*) FROM synth_sets WHERE status = 'ready'`); n != 1 {
		t.Fatalf("%d ready synth sets", n)
	}
	noTempFiles(t, blobs)
}

// startPipeline starts a Pipeline with input on the stack s under a
// workflow id starting with prefix; the context bounds the test's waits.
func startPipeline(t *testing.T, s *Stack, prefix string, input json.RawMessage) (context.Context, client.WorkflowRun) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	run, err := s.Temporal.ExecuteWorkflow(ctx, clientOpts(prefix), workflows.PipelineWorkflowName, input)
	if err != nil {
		t.Fatalf("start pipeline: %v", err)
	}
	return ctx, run
}

// pipelineDone waits for run to complete with a checkpoint per stage.
func pipelineDone(t *testing.T, ctx context.Context, run client.WorkflowRun, when string) workflows.PipelineResult {
	t.Helper()
	var res workflows.PipelineResult
	if err := run.Get(ctx, &res); err != nil {
		t.Fatalf("pipeline %s: %v", when, err)
	}
	if len(res.Checkpoints) != 3 {
		t.Fatalf("pipeline %s: checkpoints %v, want one per stage", when, res.Checkpoints)
	}
	return res
}

// noTempFiles checks that nothing half-written is left in the blob store
// at root: no temporary file of its Put.
func noTempFiles(t *testing.T, root string) {
	t.Helper()
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(filepath.Base(p), ".tmp") {
			t.Errorf("temporary file left in the blob store: %s", p)
		}
		return nil
	})
}

// mountSmallDisk mounts a tmpfs of the given size on dir (created) for
// the test's length and returns its free bytes. It skips the test where
// mounting is not allowed (not root, or no mount namespace rights).
func mountSmallDisk(t *testing.T, dir, size string) int64 {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small file system needs root")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
