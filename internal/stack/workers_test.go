package stack

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/groundmesh/groundmesh/internal/devserver"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/internal/testutil"
	"github.com/groundmesh/groundmesh/workflows"
)

// TestWorkersSplitByServiceAndQueue is issue 24's first criterion: three
// `groundmesh worker` processes with different services and queues share
// one Temporal (a dev server in this test), one Postgres database and
// this machine's NATS JetStream:
//
//	ingest-synth-a  --services ingest,synth --queue cpu-<run>
//	synth-b         --services synth        --queue cpu-<run>
//	train-eval      --services train,eval   --queue train-cpu-<run> --backends gomlx
//
// The Pipeline routes ingest and synth to cpu-<run> and train and eval to
// train-cpu-<run> (input "queues"). Once services/synth reports progress
// (the synth activity's heartbeat names the worker that handles it), that
// worker is SIGKILLed: JetStream hands the unacknowledged command to the
// other synth worker when its lease (GROUNDMESH_COMMAND_LEASE, 5 s here)
// runs out, and the run finishes. Each command's answer names the worker
// that handled it; the test checks each ran on a worker that owns its
// service and queue, and that synthesis finished in the activity's first
// attempt (the bus redelivered it; Temporal did not retry it).
func TestWorkersSplitByServiceAndQueue(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline on three worker processes; skipped with -short")
	}
	requireNATSServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := groundmeshBinary(t)
	plugins := pluginDir(t)
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data") // shared by the workers: the blob store
	dbURL := store.NewTestDB(t)
	pool, err := store.Open(ctx, dbURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dev, err := devserver.Start(ctx, devserver.Config{
		DataDir: filepath.Join(dir, "temporal"), UIPort: devserver.NoUI,
		SearchAttributes: workflows.SearchAttributeTypes(), Logger: quiet,
	})
	if err != nil {
		t.Fatalf("temporal dev server: %v", err)
	}
	t.Cleanup(func() { _ = dev.Stop() })

	// Fresh consumer groups and command topics for this run: NATS keeps
	// streams and durable consumers between runs.
	run := fmt.Sprintf("%d", time.Now().UnixNano()%1_000_000_000)
	prefix := "workers-test-" + run + "."
	cpuQueue, trainQueue := "cpu-"+run, "train-cpu-"+run
	t.Cleanup(func() { cleanNATS(t, prefix, cpuQueue, trainQueue) })
	env := []string{
		"DATABASE_URL=" + dbURL, "TEMPORAL_ADDRESS=" + dev.FrontendAddr(),
		"GROUNDMESH_BUS=nats", "NATS_URL=nats://127.0.0.1:4222", "GROUNDMESH_BUS_PREFIX=" + prefix,
		"GROUNDMESH_DATA_DIR=" + dataDir, "GROUNDMESH_PLUGIN_DIR=" + plugins,
		"GROUNDMESH_COMMAND_LEASE=5s",
	}
	type spec struct {
		id, services, queue string
		extra               []string
	}
	specs := []spec{
		{"ingest-synth-a", "ingest,synth", cpuQueue, nil},
		{"synth-b", "synth", cpuQueue, nil},
		{"train-eval", "train,eval", trainQueue, []string{"--backends", "gomlx"}},
	}
	workers := map[string]*crashWorker{}
	for _, sp := range specs {
		args := append([]string{"worker", "--metrics", "off", "--worker-id", sp.id, "--services", sp.services, "--queue", sp.queue}, sp.extra...)
		workers[sp.id] = startWorkerProcess(t, bin, args, env, filepath.Join(dir, sp.id+".log"))
	}
	logs := func() string {
		var b strings.Builder
		for _, sp := range specs {
			fmt.Fprintf(&b, "\n--- %s ---\n%s", sp.id, tailFile(workers[sp.id].log, 3000))
		}
		return b.String()
	}
	live, err := (&Registry{Pool: pool}).Live(ctx)
	if err != nil || len(live) != 3 {
		t.Fatalf("worker registry: %v, %+v", err, live)
	}

	var input map[string]any
	if err := json.Unmarshal(testutil.SmallPipeline(31), &input); err != nil {
		t.Fatal(err)
	}
	input["queues"] = map[string]string{"ingest": cpuQueue, "synth": cpuQueue, "train": trainQueue, "eval": trainQueue}
	raw, _ := json.Marshal(input)
	tc := dialTemporal(t, dev.FrontendAddr())
	wf, err := tc.ExecuteWorkflow(ctx, clientOpts("workers"), workflows.PipelineWorkflowName, json.RawMessage(raw))
	if err != nil {
		t.Fatalf("start pipeline: %v", err)
	}

	// Kill the synth worker that handles the synth command, while it does.
	var killed string
	waitUntil(t, 3*time.Minute, "services/synth to report progress", func() bool {
		for id, w := range workers {
			if w.gone() {
				t.Fatalf("worker %s exited:%s", id, logs())
			}
		}
		p, ok := heartbeat(ctx, tc, wf.GetID()+"/synth")
		if ok && p.Service == "synth" && p.Worker != "" {
			killed = p.Worker
			return true
		}
		return false
	})
	if n := count(t, pool, `SELECT count(*) FROM synth_sets WHERE status = 'ready'`); n != 0 {
		t.Fatalf("the synth set was ready when its worker was to be killed: too late to test anything")
	}
	w := workers[killed]
	if killed != "ingest-synth-a" && killed != "synth-b" {
		t.Fatalf("synth progress from worker %q, which does not run synth", killed)
	}
	w.kill(t)
	killedAt := time.Now()
	t.Logf("SIGKILLed %s while it synthesized", killed)

	var res workflows.PipelineResult
	if err := wf.Get(ctx, &res); err != nil {
		t.Fatalf("pipeline: %v%s", err, logs())
	}
	t.Logf("the pipeline finished %v after the kill: stages %v", time.Since(killedAt).Round(time.Second), res.StagesRan)
	if len(res.StagesRan) != 4 || len(res.Checkpoints) != 3 || len(res.Metrics) == 0 {
		t.Fatalf("pipeline result %+v", res)
	}

	// Who ran what: each command's answer (the activity's result) names
	// the worker that handled it.
	survivor := "ingest-synth-a"
	if killed == survivor {
		survivor = "synth-b"
	}
	want := map[string][]string{
		"ingest": {"ingest-synth-a"},
		"synth":  {survivor},
		"train":  {"train-eval"},
		"eval":   {"train-eval"},
	}
	for _, stage := range []string{"ingest", "synth", "train", "eval"} {
		by, attempt := answeredBy(t, ctx, tc, wf.GetID()+"/"+stage)
		t.Logf("%s: answered by %s (activity attempt %d)", stage, by, attempt)
		if !slices.Contains(want[stage], by) {
			t.Errorf("%s was answered by worker %q, want one of %v", stage, by, want[stage])
		}
		if stage == "synth" && attempt != 1 {
			t.Errorf("synth completed in activity attempt %d: Temporal retried it instead of the bus handing the command on", attempt)
		}
	}
	checks := []struct {
		what, query string
		want        int
	}{
		{"ready synth sets", `SELECT count(*) FROM synth_sets WHERE status = 'ready'`, 1},
		{"training runs", `SELECT count(*) FROM runs`, 1},
		{"evaluations recorded twice", testutil.EvaluationsRecordedTwiceSQL, 0},
	}
	for _, c := range checks {
		if got := count(t, pool, c.query); got != c.want {
			t.Errorf("%s: %d, want %d", c.what, got, c.want)
		}
	}
	if t.Failed() {
		t.Log(logs())
	}
}

// requireNATSServer fails (never skips, as internal/bus's NATS tests)
// when this machine's NATS is not reachable.
func requireNATSServer(t *testing.T) {
	t.Helper()
	c, err := net.DialTimeout("tcp", "127.0.0.1:4222", 3*time.Second)
	if err != nil {
		t.Fatalf("NATS with JetStream must run at 127.0.0.1:4222 for this test (start nats-server -js): %v", err)
	}
	_ = c.Close()
}

// groundmeshBinary is $GROUNDMESH_BIN, or groundmesh built into a
// temporary folder.
func groundmeshBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("GROUNDMESH_BIN"); b != "" {
		return b
	}
	out := filepath.Join(t.TempDir(), "groundmesh")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/groundmesh")
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build groundmesh (or set GROUNDMESH_BIN): %v\n%s", err, b)
	}
	return out
}

// startWorkerProcess starts `groundmesh <args>` with env added to this
// process's and waits until it says it is up. Its log goes to logPath;
// the test's cleanup kills its process group.
func startWorkerProcess(t *testing.T, bin string, args, env []string, logPath string) *crashWorker {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
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
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "groundmesh is up") {
				close(up)
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		logf.Close()
	})
	select {
	case <-up:
		return &crashWorker{cmd: cmd, exited: exited, log: logPath}
	case <-exited:
		t.Fatalf("groundmesh %s exited before it was up; its log:\n%s", strings.Join(args, " "), tailFile(logPath, 4000))
	case <-time.After(2 * time.Minute):
		t.Fatalf("groundmesh %s was not up within 2 minutes; its log:\n%s", strings.Join(args, " "), tailFile(logPath, 4000))
	}
	return nil
}

// heartbeat is the last progress the bridge recorded as the heartbeat of
// the pending Command activity of workflow id.
func heartbeat(ctx context.Context, tc client.Client, id string) (events.Progress, bool) {
	d, err := tc.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		return events.Progress{}, false
	}
	for _, pa := range d.GetPendingActivities() {
		if pa.GetHeartbeatDetails() == nil {
			continue
		}
		var p events.Progress
		if converter.GetDefaultDataConverter().FromPayloads(pa.GetHeartbeatDetails(), &p) == nil {
			return p, true
		}
	}
	return events.Progress{}, false
}

// answeredBy reads the history of workflow id: the worker its completed
// Command activity's answer names, and the attempt that completed.
func answeredBy(t *testing.T, ctx context.Context, tc client.Client, id string) (worker string, attempt int32) {
	t.Helper()
	it := tc.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	attempts := map[int64]int32{} // started event id -> attempt
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatalf("history of %s: %v", id, err)
		}
		if a := ev.GetActivityTaskStartedEventAttributes(); a != nil {
			attempts[ev.GetEventId()] = a.GetAttempt()
		}
		if a := ev.GetActivityTaskCompletedEventAttributes(); a != nil {
			var raw json.RawMessage
			if err := converter.GetDefaultDataConverter().FromPayloads(a.GetResult(), &raw); err != nil {
				t.Fatalf("%s: decode the activity result: %v", id, err)
			}
			var answer struct {
				Worker string `json:"worker"`
			}
			if err := json.Unmarshal(raw, &answer); err != nil {
				t.Fatalf("%s: answer %s: %v", id, raw, err)
			}
			worker, attempt = answer.Worker, attempts[a.GetStartedEventId()]
		}
	}
	if worker == "" {
		t.Fatalf("%s: no completed command names its worker", id)
	}
	return worker, attempt
}

// cleanNATS deletes this run's durable consumers (prefix) and its queues'
// command streams from this machine's NATS.
func cleanNATS(t *testing.T, prefix string, queues ...string) {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		t.Logf("clean NATS: %v", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	durable := strings.ReplaceAll(prefix, ".", "_")
	names := js.StreamNames(ctx)
	var streams []string
	for n := range names.Name() {
		streams = append(streams, n)
	}
	for _, name := range streams {
		for _, q := range queues {
			if strings.HasSuffix(name, "_requested_"+q) {
				_ = js.DeleteStream(ctx, name)
			}
		}
		s, err := js.Stream(ctx, name)
		if err != nil {
			continue
		}
		cs := s.ConsumerNames(ctx)
		var mine []string
		for c := range cs.Name() {
			if strings.HasPrefix(c, durable) {
				mine = append(mine, c)
			}
		}
		for _, c := range mine {
			_ = s.DeleteConsumer(ctx, c)
		}
	}
}

// A worker's services, queues and backends are checked before anything
// starts, and each error names what is wrong.
func TestWorkersConfigRejectsBadInput(t *testing.T) {
	for _, c := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Services = []string{"ingest", "trian"} }, `unknown service "trian" (want some of ingest, synth, train, eval, ground)`},
		{func(c *Config) { c.Services = []string{"eval", "eval"} }, `"eval" listed twice`},
		{func(c *Config) { c.Queues = []string{"train.cuda"} }, `queue "train.cuda": want lower-case`},
		{func(c *Config) { c.Queues = []string{"default", ""} }, `"default" listed twice`},
		{func(c *Config) { c.Backends = []string{"tensorrt"} }, `unknown backend "tensorrt" (want some of ggml, gomlx, libtorch, onnx)`},
		{func(c *Config) { c.WorkerID = "a b" }, `worker id "a b"`},
		{func(c *Config) { c.CommandLease = time.Millisecond }, `command lease 1ms`},
	} {
		cfg := Config{DataDir: t.TempDir()}
		c.edit(&cfg)
		_, err := Start(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", cfg, err, c.want)
		}
	}
	cfg := Config{DataDir: t.TempDir()}
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Services, AllServices) || !slices.Equal(cfg.Queues, []string{events.DefaultQueue}) || cfg.WorkerID == "" {
		t.Errorf("defaults: services %v, queues %v, worker id %q", cfg.Services, cfg.Queues, cfg.WorkerID)
	}
	if !cfg.backendAllowed("libtorch:cuda") {
		t.Error("no Backends should allow every backend")
	}
	cfg.Backends = []string{"libtorch"}
	if !cfg.backendAllowed("libtorch:cuda") || cfg.backendAllowed("gomlx") {
		t.Error(`Backends ["libtorch"] should allow libtorch:cuda and not gomlx`)
	}
}

// A process builds only the services it runs (synth reads datasets
// through ingest's reader without an ingest service), refuses a backend
// it does not run, and the registry tells who serves which queue.
func TestWorkersBuildOnlyTheirServices(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx, Config{DataDir: t.TempDir(), DatabaseURL: store.NewTestDB(t), Offline: true, HTTPAddr: "off",
		Services: []string{"synth"}, Backends: []string{"libtorch"}, WorkerID: "w-synth"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	sv := s.Services
	if sv.Synth == nil || sv.Ingest != nil || sv.Train != nil || sv.Eval != nil || sv.Ground != nil {
		t.Fatalf("services built: ingest %v synth %v train %v eval %v ground %v", sv.Ingest != nil, sv.Synth != nil, sv.Train != nil, sv.Eval != nil, sv.Ground != nil)
	}
	if _, err := sv.Backend("gomlx"); err == nil || !strings.Contains(err.Error(), "worker w-synth runs only backends libtorch") {
		t.Errorf("a backend the worker does not run: %v", err)
	}
	if len(sv.hosts) != 0 {
		t.Errorf("plugin hosts started: %d", len(sv.hosts))
	}

	if _, err := s.Pool.Exec(ctx, `INSERT INTO workers (worker_id, host, pid, services, queues, backends, seen_at) VALUES
		('gpu-1', 'h', 1, '{train,eval}', '{train-cuda}', '{libtorch}', now()),
		('cpu-1', 'h', 2, '{ingest,synth,train}', '{default}', '{gomlx}', now()),
		('old-1', 'h', 3, '{synth}', '{synth}', '{gomlx}', now() - interval '1 hour')`); err != nil {
		t.Fatal(err)
	}
	reg := &Registry{Pool: s.Pool}
	for _, c := range []struct {
		service, queue string
		want           []string
	}{
		{"train", "train-cuda", []string{"gpu-1"}},
		{"train", "default", []string{"cpu-1"}},
		{"train.describe", "", []string{"cpu-1", "gpu-1"}},
		{"synth.describe", "", []string{"cpu-1"}}, // every live synth worker
		{"synth", "synth", nil},                   // old-1 stopped refreshing its row
		{"eval", "default", nil},
	} {
		got, err := reg.Serving(ctx, c.service, c.queue)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s on %q: served by %v, want %v", c.service, c.queue, got, c.want)
		}
	}
}

// On the Postgres bus, a worker that serves only ingest on queue "cpu-pg"
// takes the ingest command routed there and its answer names it; an
// ingest routed to a queue no worker serves waits, and its pending
// activity says so in its heartbeat (what the Temporal UI shows).
func TestWorkersQueueOnThePostgresBus(t *testing.T) {
	s, _, _ := testStack(t, func(c *Config) {
		c.HTTPAddr, c.Services, c.Queues, c.WorkerID = "off", []string{ServiceIngest}, []string{"cpu-pg"}, "pg-worker"
	})
	ctx, run := startPipeline(t, s, "pg-queue", json.RawMessage(`{"stages": ["ingest"], "dataset": {"images": 20, "size": 48, "seed": 5}, "queues": {"ingest": "cpu-pg"}}`))
	var res workflows.PipelineResult
	if err := run.Get(ctx, &res); err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	if by, _ := answeredBy(t, ctx, s.Temporal, run.GetID()+"/ingest"); by != "pg-worker" {
		t.Errorf("ingest answered by %q, want pg-worker", by)
	}
	// The bridge completes the activity, then marks its row done: the
	// pipeline may finish in between.
	waitUntil(t, 10*time.Second, "the ingest command on ingest.requested.cpu-pg marked answered", func() bool {
		return count(t, s.Pool, `SELECT count(*) FROM activity_bridge WHERE topic = 'ingest.requested.cpu-pg' AND completed_at IS NOT NULL`) == 1
	})

	_, lost := startPipeline(t, s, "pg-unserved", json.RawMessage(`{"stages": ["ingest"], "dataset": {"images": 20, "size": 48, "seed": 6}, "queues": {"ingest": "nobody"}}`))
	var p events.Progress
	waitUntil(t, 30*time.Second, "the unserved command's heartbeat", func() bool {
		var ok bool
		p, ok = heartbeat(ctx, s.Temporal, lost.GetID()+"/ingest")
		return ok
	})
	if p.Phase != "unserved" || !strings.Contains(p.Message, `no live worker serves ingest on queue "nobody"`) {
		t.Errorf("heartbeat of the unserved command: %+v", p)
	}
	if err := s.Temporal.TerminateWorkflow(ctx, lost.GetID(), "", "test done"); err != nil {
		t.Fatal(err)
	}
}
