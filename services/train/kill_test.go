package train_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/services/train"
)

// The kill tests run a worker (this test binary, re-executed) that trains
// through a real plugin process, SIGKILL the plugin mid-stage (the worker
// resumes in-process), then SIGKILL the worker and its plugin mid-stage;
// a new worker (this process) finishes the run from the last checkpoint,
// and no checkpoint row or checkpoint.saved fact is duplicated.

const workerEnv = "GROUNDMESH_TRAIN_TEST_WORKER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(workerEnv); spec != "" {
		os.Exit(runWorker(spec))
	}
	os.Exit(m.Run())
}

// workerSpec is what the worker process is told, as JSON in workerEnv.
type workerSpec struct {
	DatabaseURL string
	BlobDir     string
	DataDir     string
	Plugin      string
	PluginEnv   []string
	Request     events.TrainRequested
}

// runWorker trains req and prints one line per progress report:
// "PROGRESS <phase> <step> <plugin pid>", then "DONE".
func runWorker(specJSON string) int {
	var ws workerSpec
	if err := json.Unmarshal([]byte(specJSON), &ws); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	ctx := context.Background()
	pool, err := store.Open(ctx, ws.DatabaseURL, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	defer pool.Close()
	b, err := blob.NewLocal(ws.BlobDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	host, err := compute.NewHost(compute.HostConfig{Path: ws.Plugin, Env: ws.PluginEnv})
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	defer host.Close()
	svc, err := train.New(train.Config{
		DataDir: ws.DataDir, Blob: b, Synth: fakeSynth(40),
		Backends: train.BackendMap(map[string]compute.Backend{ws.Request.Backend: host}),
	}, pool)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	_, err = svc.Train(ctx, ws.Request, func(p events.Progress) {
		var d struct{ Step int }
		json.Unmarshal(p.Details, &d)
		fmt.Printf("PROGRESS %s %d %d\n", p.Phase, d.Step, host.PID())
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker: train:", err)
		return 1
	}
	fmt.Println("DONE")
	return 0
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || (b[i+2] != 'Z' && b[i+2] != 'X')
}

type progressLine struct {
	phase     string
	step, pid int
}

func buildPlugin(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", bin, "./"+pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	t.Logf("built %s in %v", pkg, time.Since(start).Round(time.Millisecond))
	return bin
}

func TestKillToyPlugin(t *testing.T) {
	bin := buildPlugin(t, "services/train/testdata/toyplugin")
	runKillTest(t, bin, "toy", []string{"TOY_STEP_DELAY=40ms"}, false)
}

// TestKillGoMLXPlugin is the acceptance test with the real pure-Go backend.
func TestKillGoMLXPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("trains with the GoMLX plugin; skipped with -short")
	}
	bin := buildPlugin(t, "plugins/gomlx/cmd/groundmesh-gomlx")
	env := []string{}
	if runtime.NumCPU() <= 2 {
		env = append(env, "GROUNDMESH_GOMLX_OPTIONS=ops_sequential")
	}
	runKillTest(t, bin, "gomlx", env, true)
}

// TestKillLibtorchPlugin is the same acceptance test with the libtorch
// backend, as `make libtorch` builds it into GROUNDMESH_PLUGIN_DIR (make
// test does; skipped where it is not built).
func TestKillLibtorchPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("trains with the libtorch plugin; skipped with -short")
	}
	dir := os.Getenv("GROUNDMESH_PLUGIN_DIR")
	bin := filepath.Join(dir, "groundmesh-libtorch")
	if _, err := os.Stat(bin); dir == "" || err != nil {
		t.Skip("groundmesh-libtorch is not built in GROUNDMESH_PLUGIN_DIR (make libtorch builds it; make test runs this test)")
	}
	runKillTest(t, bin, "libtorch", []string{"GROUNDMESH_LIBTORCH_THREADS=1"}, true)
}

func runKillTest(t *testing.T, plugin, backend string, pluginEnv []string, wantLearning bool) {
	e := newEnv(t)
	const every = 3
	req := newRequest(tinySpec([3]int{4, 12, 4}, every))
	req.Backend = backend
	ws, _ := json.Marshal(workerSpec{DatabaseURL: e.url, BlobDir: e.blob.Root, DataDir: e.dataDir,
		Plugin: plugin, PluginEnv: pluginEnv, Request: req})

	ctx := ctxT(t, 8*time.Minute)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), workerEnv+"="+string(ws))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan progressLine, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 4 && f[0] == "PROGRESS" {
				step, _ := strconv.Atoi(f[2])
				pid, _ := strconv.Atoi(f[3])
				lines <- progressLine{f[1], step, pid}
			}
		}
	}()
	next := func(what string, ok func(progressLine) bool) progressLine {
		t.Helper()
		for {
			select {
			case l, open := <-lines:
				if !open {
					cmd.Wait()
					t.Fatalf("worker ended while waiting for %s; stderr:\n%s", what, stderr.String())
				}
				if ok(l) {
					return l
				}
			case <-ctx.Done():
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}

	// 1. Kill the plugin mid-stage 2: the worker's host restarts it and
	// the stage resumes from its last checkpoint, in the same worker.
	l := next("stage2 past its first checkpoint", func(l progressLine) bool { return l.phase == "stage2" && l.step > every })
	firstPID := l.pid
	if err := syscall.Kill(firstPID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill plugin %d: %v", firstPID, err)
	}
	t.Logf("killed plugin %d at stage2 step %d", firstPID, l.step)
	l = next("stage2 on a restarted plugin", func(l progressLine) bool {
		return l.phase == "stage2" && l.pid != firstPID && l.pid != 0 && l.step > 2*every
	})

	// 2. Kill the worker and its plugin mid-stage 2.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	for range lines {
	}
	t.Logf("killed worker at stage2 step %d", l.step)
	// The plugin dies with its host (parent-death signal).
	deadline := time.Now().Add(10 * time.Second)
	for alive(l.pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(l.pid) {
		syscall.Kill(l.pid, syscall.SIGKILL)
		t.Errorf("plugin %d outlived its killed worker", l.pid)
	}
	before := stepsByStage(checkpoints(t, e, req.RunID))
	last := slices.Max(before["stage2"])

	// 3. A new worker finishes the run.
	host, err := compute.NewHost(compute.HostConfig{Path: plugin, Env: pluginEnv})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	svc, err := train.New(train.Config{
		DataDir: e.dataDir, Blob: e.blob, Synth: fakeSynth(40), Logger: testLogger(t),
		Backends: train.BackendMap(map[string]compute.Backend{backend: host}),
	}, e.pool)
	if err != nil {
		t.Fatal(err)
	}
	firstResumed := 0
	out, err := svc.Train(ctx, req, func(p events.Progress) {
		var d struct{ Step int }
		json.Unmarshal(p.Details, &d)
		if p.Phase == "stage2" && firstResumed == 0 {
			firstResumed = d.Step
		}
	})
	if err != nil {
		t.Fatalf("resumed Train: %v", err)
	}
	if firstResumed != last+1 {
		t.Errorf("resumed stage2 at step %d; its last checkpoint was step %d", firstResumed, last)
	}

	cks := checkpoints(t, e, req.RunID)
	got := stepsByStage(cks)
	want := map[string][]int{"stage1": {3, 4}, "stage2": {3, 6, 9, 12}, "stage3": {3, 4}}
	for st, steps := range want {
		if !slices.Equal(got[st], steps) {
			t.Errorf("%s checkpoint steps %v, want %v (each once)", st, got[st], steps)
		}
	}
	if n := count(t, e, `SELECT count(*) FROM outbox WHERE topic = $1 AND payload->>'run_id' = $2`,
		events.TopicCheckpointSaved, req.RunID); n != len(cks) {
		t.Errorf("%d checkpoint.saved facts for %d checkpoints", n, len(cks))
	}
	if n := count(t, e, `SELECT attempts FROM run_stages WHERE run_id = $1 AND stage = 'stage2'`, req.RunID); n < 3 {
		t.Errorf("stage2 attempts %d; want at least 3 (start, plugin crash, worker restart)", n)
	}
	if n := count(t, e, `SELECT attempts FROM run_stages WHERE run_id = $1 AND stage = 'stage1'`, req.RunID); n != 1 {
		t.Errorf("stage1 attempts %d; a finished stage must not run again", n)
	}
	if n := count(t, e, `SELECT count(*) FROM train_metrics WHERE run_id = $1 AND stage = 'stage2'`, req.RunID); n != 12 {
		t.Errorf("stage2 loss points %d, want 12", n)
	}
	for _, c := range cks {
		p, _ := e.blob.Path(c.Key)
		if sum, _, err := blob.FileSHA256(p); err != nil || sum != c.SHA {
			t.Errorf("checkpoint %s: file sha %s (%v), row %s", c.Key, sum, err, c.SHA)
		}
	}
	if wantLearning {
		rows, err := e.pool.Query(context.Background(), `SELECT stage, first_loss, last_loss FROM run_stages WHERE run_id = $1`, req.RunID)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var st string
			var first, last float64
			if err := rows.Scan(&st, &first, &last); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s loss %.4f -> %.4f", st, first, last)
			if !(last < first) {
				t.Errorf("%s loss did not go down: %.4f -> %.4f", st, first, last)
			}
		}
	}
	t.Logf("completed: %v", out.FinalLoss)
}
