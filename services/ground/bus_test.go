package ground

import (
	"context"
	"image"
	"image/color"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/internal/testutil"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

var (
	pluginOnce sync.Once
	pluginPath string
	pluginErr  error
)

// gomlxPlugin returns the real plugin binary: GROUNDMESH_PLUGIN_DIR's
// (make test builds it there), else one built for this test run.
func gomlxPlugin(t testing.TB) string {
	t.Helper()
	pluginOnce.Do(func() {
		if dir := os.Getenv("GROUNDMESH_PLUGIN_DIR"); dir != "" {
			pluginPath = filepath.Join(dir, "groundmesh-gomlx")
			_, pluginErr = os.Stat(pluginPath)
			return
		}
		dir, err := os.MkdirTemp("", "ground-plugin-")
		if err != nil {
			pluginErr = err
			return
		}
		pluginPath = filepath.Join(dir, "groundmesh-gomlx")
		cmd := exec.Command("go", "build", "-o", pluginPath, "./plugins/gomlx/cmd/groundmesh-gomlx")
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			pluginErr = err
			t.Logf("%s", out)
		}
	})
	if pluginErr != nil {
		t.Fatalf("the GoMLX plugin binary (set GROUNDMESH_PLUGIN_DIR or let the test build it): %v", pluginErr)
	}
	return pluginPath
}

// insertModel records ref as the final checkpoint of a completed run, as
// the service learns of one: services/train's train.completed fact,
// through the Projection into ground's own tables.
func insertModel(t testing.TB, pool *pgxpool.Pool, ref *ModelRef) {
	t.Helper()
	ref.RunID, ref.CheckpointID = uuid.NewString(), uuid.NewString()
	p, err := NewProjection(ProjectionConfig{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RecordRun(context.Background(), trainCompleted(*ref), time.Now()); err != nil {
		t.Fatal(err)
	}
}

// trainCompleted is the train.completed fact of a run whose final
// checkpoint ref is.
func trainCompleted(ref ModelRef) events.TrainCompleted {
	return events.TrainCompleted{RunID: ref.RunID, Checkpoints: map[string]string{ref.Stage: ref.CheckpointID},
		Run: &events.RunFacts{Backend: ref.Backend, ModelConfig: ref.ModelConfig, TokenizerKey: ref.TokenizerKey,
			Checkpoints: []events.CheckpointRef{{ID: ref.CheckpointID, Stage: ref.Stage, Step: ref.Step, BlobKey: ref.BlobKey}}}}
}

// insertTrainRows records ref's run and checkpoint in services/train's
// own tables, for tests where services/train itself works on the
// checkpoint (exports it): ground reads none of them.
func insertTrainRows(t testing.TB, pool *pgxpool.Pool, ref ModelRef) {
	t.Helper()
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO runs (id, synth_set_id, backend, spec, model_config, tokenizer_key, status)
		VALUES ($1, $2, 'gomlx', '{}', $3, $4, 'completed')`, ref.RunID, uuid.NewString(), string(ref.ModelConfig), ref.TokenizerKey); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO checkpoints (id, run_id, stage, step, loss, blob_key, sha256, bytes)
		VALUES ($1, $2, $3, $4, 0.5, $5, '', 0)`, ref.CheckpointID, ref.RunID, ref.Stage, ref.Step, ref.BlobKey); err != nil {
		t.Fatal(err)
	}
}

type answers struct {
	mu sync.Mutex
	n  map[string]int
}

func (a *answers) count(corr string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n[corr]
}

// TestOverTheBus: a pure bus client asks ground, on the Postgres bus and
// on NATS JetStream, and the real GoMLX plugin process answers; the answer
// is the one the same checkpoint gives through a direct plugin call; a
// duplicate request is answered once; failures come back with their code;
// one trace runs from the client through the batch to the plugin call.
func TestOverTheBus(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	otel.SetTracerProvider(tp)
	host := pluginHost(t)
	// Requests left in the NATS streams by earlier runs would be read by
	// this run's new consumer group, ahead of this run's.
	testutil.PurgeNATS(t, events.TopicGroundRequested, events.TopicGroundCompleted, events.TopicGroundFailed)
	for _, kind := range []string{bus.KindPostgres, bus.KindNATS} {
		t.Run(kind, func(t *testing.T) { testOverTheBus(t, kind, host, rec) })
	}
}

// busFixture is services/ground on a real bus and a fresh database, with
// a model it has learned of (insertModel) and a Client.
type busFixture struct {
	pool   *pgxpool.Pool
	bs     *blob.Local
	ref    ModelRef
	svc    *Service
	bus    *bus.Bus
	client *Client
}

// newBusFixture builds the fixture; register adds handlers before the bus
// runs. Everything stops at cleanup.
func newBusFixture(t testing.TB, kind string, host compute.Backend, batch BatchConfig, poll time.Duration, register func(b *bus.Bus)) *busFixture {
	t.Helper()
	ctx := context.Background()
	f := &busFixture{}
	var err error
	if f.pool, err = store.Open(ctx, store.NewTestDB(t), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.pool.Close)
	if f.bs, err = blob.NewLocal(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	f.ref = testModel(t, f.bs, "m")
	insertModel(t, f.pool, &f.ref)
	logger := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	f.svc, err = New(Config{
		Catalog: NewPGCatalog(f.pool), Blob: f.bs, Logger: logger, Batch: batch,
		Backends: func(name string) (compute.Backend, error) { return host, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.svc.Close)
	// A fresh consumer prefix per run: NATS keeps its streams between tests.
	prefix := "t" + uuid.NewString()[:8] + "."
	if f.bus, err = bus.New(ctx, bus.Config{Kind: kind, ConsumerPrefix: prefix, PollInterval: poll, Logger: logger}, f.pool); err != nil {
		t.Fatal(err)
	}
	cons, err := Serve(f.bus, ConsumerConfig{Pool: f.pool, Logger: logger}, f.svc)
	if err != nil {
		t.Fatal(err)
	}
	if f.client, err = NewClient(f.bus, ClientConfig{Handler: "test-client"}); err != nil {
		t.Fatal(err)
	}
	if register != nil {
		register(f.bus)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.bus.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		cons.Close()
		_ = f.bus.Close()
		<-done
	})
	select {
	case <-f.bus.Running():
	case <-time.After(30 * time.Second):
		t.Fatal("bus did not start")
	}
	return f
}

func testOverTheBus(t *testing.T, kind string, host *compute.Host, rec *tracetest.SpanRecorder) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	seen := &answers{n: map[string]int{}}
	f := newBusFixture(t, kind, host, BatchConfig{}, 20*time.Millisecond, func(b *bus.Bus) {
		if err := b.Handle("test-answers", events.TopicGroundCompleted, func(ctx context.Context, msg *message.Message) error {
			seen.mu.Lock()
			seen.n[msg.Metadata.Get(events.MetaCorrelationID)]++
			seen.mu.Unlock()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
	pool, bs, ref, client, b := f.pool, f.bs, f.ref, f.client, f.bus

	img := scene(t, 96, 64, 50, 10, color.RGBA{40, 70, 220, 255})
	rctx, rcancel := context.WithTimeout(ctx, time.Minute)
	defer rcancel()
	res, err := client.Ground(rctx, events.GroundRequested{Image: img, Expression: "the blue square"})
	if err != nil {
		t.Fatal(err)
	}
	if res.ModelVersion != ref.CheckpointID || res.RunID != ref.RunID || res.Width != 96 || res.Height != 64 || len(res.Box) != 4 {
		t.Fatalf("answer %+v", res)
	}

	// The same question through a direct plugin call.
	tp, _ := bs.Path(ref.TokenizerKey)
	cp, _ := bs.Path(ref.BlobKey)
	sess, err := infer.Open(ctx, host, infer.OpenRequest{ModelConfig: ref.ModelConfig, TokenizerPath: tp, CheckpointPath: cp})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(context.Background())
	decoded, _, err := infer.DecodeImage(img, infer.ImageLimits{})
	if err != nil {
		t.Fatal(err)
	}
	prompt, _ := infer.RECPrompt("the blue square")
	gens, err := sess.Generator.Generate(ctx, []model.Prompt{{Text: prompt, Images: []image.Image{decoded}}}, infer.Decoding{}.Options(infer.Ground, 0))
	if err != nil {
		t.Fatal(err)
	}
	direct, err := infer.ReadBox(gens[0], 96, 64)
	if err != nil {
		t.Fatal(err)
	}
	if res.Text != direct.Text || res.Boxes[0].Pixel != [4]float64{direct.Pixel.X1, direct.Pixel.Y1, direct.Pixel.X2, direct.Pixel.Y2} {
		t.Fatalf("over the bus %q %v, direct %q %v", res.Text, res.Boxes[0].Pixel, direct.Text, direct.Pixel)
	}
	// The served model has a grounding head: its probability for the
	// picked cell travels with the box.
	if sc := res.Boxes[0].Score; sc == nil || *sc <= 0 || *sc > 1 {
		t.Fatalf("score %v: want the head's probability in (0, 1]", sc)
	}

	// One trace: client -> ground.requested -> handler -> batch -> plugin.
	var clientTrace string
	for _, s := range rec.Ended() {
		if s.Name() == "ground.Client.Ground" {
			clientTrace = s.SpanContext().TraceID().String()
		}
	}
	// The batch span ends just after its answers go out: wait for it. A
	// batch continues its first request's trace and links the others (on
	// NATS, a new consumer group also reads requests left in the stream by
	// earlier runs, which may come first); the plugin call is in the
	// batch's trace.
	traceCheck := func() string {
		got := map[string]bool{}
		batchTraces := map[string]bool{}
		for _, s := range rec.Ended() {
			tr := s.SpanContext().TraceID().String()
			switch s.Name() {
			case "ground.requested process", "ground.Ground":
				if tr == clientTrace {
					got[s.Name()] = true
				}
			case "ground.batch":
				linked := tr == clientTrace
				for _, l := range s.Links() {
					linked = linked || l.SpanContext.TraceID().String() == clientTrace
				}
				if linked {
					got["ground.batch"] = true
					batchTraces[tr] = true
				}
			}
		}
		for _, s := range rec.Ended() {
			if s.Name() == "compute.Generate" && batchTraces[s.SpanContext().TraceID().String()] {
				got["compute.Generate"] = true
			}
		}
		for _, name := range []string{"ground.requested process", "ground.Ground", "ground.batch", "compute.Generate"} {
			if !got[name] {
				return name
			}
		}
		return ""
	}
	for deadline := time.Now().Add(5 * time.Second); traceCheck() != "" && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if missing := traceCheck(); missing != "" {
		t.Errorf("no %q span in (or linked to) the client's trace %s", missing, clientTrace)
	}

	// Failures keep their reason codes across the bus.
	_, err = client.Ground(rctx, events.GroundRequested{Image: img, Expression: "x", CheckpointID: uuid.NewString()})
	if CodeOf(err) != CodeModelNotFound {
		t.Fatalf("unknown checkpoint: %v (code %q)", err, CodeOf(err))
	}
	_, err = client.Ground(rctx, events.GroundRequested{ImageKey: "uploads/missing.png", Expression: "x"})
	if CodeOf(err) != CodeImageNotFound {
		t.Fatalf("missing image: %v (code %q)", err, CodeOf(err))
	}

	// A duplicate (same correlation id, new message) is answered once.
	dup := events.GroundRequested{CorrelationID: "dup-" + uuid.NewString(), Image: img, Expression: "the blue square", Deadline: time.Now().Add(time.Minute)}
	for range 2 {
		if err := b.Publish(ctx, events.TopicGroundRequested, dup, nil); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return seen.count(dup.CorrelationID) >= 1 })
	// A later request's answer arrives after any second answer to the
	// duplicate would have (one consumer, in order).
	if _, err := client.Ground(rctx, events.GroundRequested{Image: img, Expression: "the red square"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := seen.count(dup.CorrelationID); n != 1 {
		t.Fatalf("duplicate request answered %d times", n)
	}
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM ground_requests WHERE correlation_id = $1`, dup.CorrelationID).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("ground_requests rows %d, %v", rows, err)
	}
}
