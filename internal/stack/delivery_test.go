package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/internal/telemetry"
	"github.com/groundmesh/groundmesh/internal/testutil"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
	"github.com/groundmesh/groundmesh/workflows"
)

// TestEveryEventTwiceAndOutOfOrder: every event type a consumer reads off
// the bus (the five commands the services serve, and the progress,
// completed and failed answers of the four services the workflow bridge
// waits on) is delivered twice (one message, one id, published twice) and
// as a pair published in reverse order, to the real handlers as
// serveCommands and registerBridge register them, on the Postgres bus of a
// real database. Each has the effect of one delivery in order, counted in
// rows: two dataset versions, two synth sets, two runs of three
// checkpoints, the evaluations the two answers list, two grounding
// requests, and per bridge topic one activity completed per answer (and
// one heartbeat per progress report); each command is answered once.
//
// A command re-sent under a new message id (its processed_messages row
// lost in a crash after its effects committed) changes no row either.
//
// The compute backend is the contract's toy, in process: the handlers,
// services and tables are the production ones. The test fails with the
// bus's idempotency middleware left out (every command answered twice,
// a heartbeat per copy).
//
// The same runs on NATS JetStream (this machine's server), less the
// grounding command, whose streams services/ground's tests use at the
// same time (they check its duplicates on NATS themselves).
func TestEveryEventTwiceAndOutOfOrder(t *testing.T) {
	for _, kind := range []string{bus.KindPostgres, bus.KindNATS} {
		t.Run(kind, func(t *testing.T) { testEveryEventTwice(t, kind) })
	}
}

func testEveryEventTwice(t *testing.T, kind string) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	logger := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		logger = telemetry.NewLogger(os.Stderr, slog.LevelInfo, "groundmesh-test")
	}
	s, err := Start(ctx, Config{DataDir: dir, DatabaseURL: store.NewTestDB(t), Offline: true, HTTPAddr: "off", Logger: logger})
	if err != nil {
		t.Fatalf("start stack: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	toy := computetest.NewToy(computetest.ToyOptions{})
	sv := &Services{logger: logger, hosts: map[string]*compute.Host{}}
	if err := sv.build(ctx, s, func(string) (compute.Backend, error) { return toy, nil }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sv.close() })

	prefix := ""
	if kind == bus.KindNATS {
		// A new consumer group reads a stream from its start: what earlier
		// runs left in these streams goes first.
		var topics []string
		for _, svc := range workflows.CommandServices {
			for _, k := range []string{"requested", "progress", "completed", "failed"} {
				topics = append(topics, svc+"."+k)
			}
		}
		testutil.PurgeNATS(t, topics...)
		prefix = fmt.Sprintf("delivery-test-%d.", time.Now().UnixNano())
	}
	b, err := bus.New(ctx, bus.Config{
		Kind: kind, ConsumerPrefix: prefix, Logger: logger, PollInterval: 20 * time.Millisecond, CloseTimeout: 10 * time.Second,
		Retry: bus.RetryConfig{MaxRetries: 2, InitialInterval: 10 * time.Millisecond, MaxInterval: 50 * time.Millisecond},
	}, s.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := sv.serveCommands(b, s.Pool, logger); err != nil {
		t.Fatal(err)
	}
	completer := &recordingCompleter{}
	if err := registerBridge(b, workflows.NewBridge(completer, &workflows.PGTokens{Pool: s.Pool}, logger)); err != nil {
		t.Fatal(err)
	}
	answers := &answerLog{byCorr: map[string][]answer{}}
	for _, svc := range append(slices.Clone(workflows.CommandServices), "ground") {
		for _, kind := range []string{"completed", "failed"} {
			topic := svc + "." + kind
			if err := b.HandleWith("test-answers-"+topic, topic, bus.HandleOptions{NoDedupe: true}, func(_ context.Context, msg *message.Message) error {
				answers.add(topic, msg)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		<-done
		_ = b.Close()
	})
	select {
	case <-b.Running():
	case err := <-done:
		t.Fatalf("bus stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("bus did not start in 30s")
	}

	d := &deliverer{t: t, ctx: ctx, b: b, s: s, answers: answers}
	count := func(sql string, args ...any) int {
		t.Helper()
		var n int
		if err := s.Pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n
	}

	// Each command is sent as a pair (first, second) published second,
	// first, second, first: the pair in reverse order, and each message
	// twice; a fence after them says when they have been handled. Then the
	// first is re-sent under a new message id. A pair is built when its
	// row runs, from what the rows before it made.
	var datasets, synthSets, runs [2]string
	var synthFacts [2]*events.SynthFacts
	var trained [2]*events.RunFacts
	var evaluations int
	cases := []struct {
		svc  string
		pair func() [2]any
		// fence is a request the service refuses at once.
		fence func(corr string) any
		// keep reads what later rows need from the answers.
		keep func(t *testing.T, answers [2]json.RawMessage)
		// effect counts the rows the pair made; want is their number.
		effect string
		want   func() int
	}{
		{
			svc: "ingest",
			pair: func() [2]any {
				return [2]any{
					events.IngestRequested{CorrelationID: "ingest-1", Format: "scenes", Scenes: &events.ScenesSpec{Seed: 1, Images: 60, Size: 64}},
					events.IngestRequested{CorrelationID: "ingest-2", Format: "scenes", Scenes: &events.ScenesSpec{Seed: 2, Images: 60, Size: 64}},
				}
			},
			fence: func(corr string) any { return events.IngestRequested{CorrelationID: corr, Format: "no-such-format"} },
			keep: func(t *testing.T, a [2]json.RawMessage) {
				for i := range 2 {
					datasets[i] = decode[events.DatasetIngested](t, a[i]).DatasetID
				}
			},
			effect: `SELECT count(*) FROM dataset_versions`, want: func() int { return 2 },
		},
		{
			svc: "synth",
			pair: func() [2]any {
				return [2]any{
					events.SynthRequested{CorrelationID: "synth-1", DatasetID: datasets[0], Seed: 1, Samples: 300},
					events.SynthRequested{CorrelationID: "synth-2", DatasetID: datasets[1], Seed: 2, Samples: 300},
				}
			},
			fence: func(corr string) any {
				return events.SynthRequested{CorrelationID: corr, DatasetID: "not-a-uuid", Samples: 1}
			},
			keep: func(t *testing.T, a [2]json.RawMessage) {
				for i := range 2 {
					done := decode[events.SynthCompleted](t, a[i])
					synthSets[i], synthFacts[i] = done.SynthSetID, done.Facts()
				}
			},
			effect: `SELECT count(*) FROM synth_sets WHERE status = 'ready'`, want: func() int { return 2 },
		},
		{
			svc: "train",
			pair: func() [2]any {
				runs = [2]string{uuid.NewString(), uuid.NewString()}
				return [2]any{
					events.TrainRequested{CorrelationID: "train-1", RunID: runs[0], SynthSetID: synthSets[0], Backend: "toy", Spec: toySpec, Synth: synthFacts[0]},
					events.TrainRequested{CorrelationID: "train-2", RunID: runs[1], SynthSetID: synthSets[1], Backend: "toy", Spec: toySpec, Synth: synthFacts[1]},
				}
			},
			fence: func(corr string) any { return events.TrainRequested{CorrelationID: corr, RunID: "not-a-uuid"} },
			keep: func(t *testing.T, a [2]json.RawMessage) {
				for i := range 2 {
					if trained[i] = decode[events.TrainCompleted](t, a[i]).Run; trained[i] == nil {
						t.Fatalf("train answer %d has no run facts", i)
					}
				}
			},
			// Two runs of three stages, one checkpoint each.
			effect: `SELECT count(*) FROM checkpoints`, want: func() int { return 6 },
		},
		{
			// Each run's final checkpoint as a q8_0 GGUF: one file and
			// one model_exports row each, however often asked.
			svc: "train.export",
			pair: func() [2]any {
				return [2]any{
					events.ExportRequested{CorrelationID: "export-1", CheckpointID: trained[0].Checkpoints[2].ID, Format: "gguf", Dtype: "q8_0"},
					events.ExportRequested{CorrelationID: "export-2", CheckpointID: trained[1].Checkpoints[2].ID, Format: "gguf", Dtype: "q8_0"},
				}
			},
			fence: func(corr string) any {
				return events.ExportRequested{CorrelationID: corr, CheckpointID: "not-a-uuid", Format: "gguf"}
			},
			keep: func(t *testing.T, a [2]json.RawMessage) {
				for i := range 2 {
					if x := decode[events.ExportCompleted](t, a[i]); x.CheckpointID != trained[i].Checkpoints[2].ID || x.SHA256 == "" || x.Bytes == 0 {
						t.Fatalf("export %d: %+v", i, x)
					}
				}
			},
			effect: `SELECT count(*) FROM model_exports`, want: func() int { return 2 },
		},
		{
			// What the Evaluate workflow asks when it has only a run id:
			// the same facts as the train answer, and no rows.
			svc: "train.describe",
			pair: func() [2]any {
				return [2]any{
					events.TrainDescribeRequested{CorrelationID: "describe-1", RunID: runs[0]},
					events.TrainDescribeRequested{CorrelationID: "describe-2", RunID: runs[1]},
				}
			},
			fence: func(corr string) any { return events.TrainDescribeRequested{CorrelationID: corr, RunID: "not-a-uuid"} },
			keep: func(t *testing.T, a [2]json.RawMessage) {
				for i := range 2 {
					got := decode[events.TrainCompleted](t, a[i]).Run
					if got == nil || len(got.Checkpoints) != 3 || got.Checkpoints[2] != trained[i].Checkpoints[2] ||
						got.ModelConfigSHA256 != trained[i].ModelConfigSHA256 || got.ManifestKey == "" || got.DatasetRoot == "" {
						t.Fatalf("described run %d: %+v, trained %+v", i, got, trained[i])
					}
					trained[i] = got // eval below runs from the described facts
				}
			},
			effect: `SELECT count(*) FROM checkpoints`, want: func() int { return 6 },
		},
		{
			svc: "eval",
			pair: func() [2]any {
				return [2]any{
					events.EvalRequested{CorrelationID: "eval-1", RunID: runs[0], Run: trained[0], Splits: []string{"val"}, MaxSamples: 3},
					events.EvalRequested{CorrelationID: "eval-2", RunID: runs[1], Run: trained[1], Splits: []string{"val"}, MaxSamples: 3},
				}
			},
			fence: func(corr string) any { return events.EvalRequested{CorrelationID: corr} },
			keep: func(t *testing.T, a [2]json.RawMessage) {
				for i := range 2 {
					evaluations += len(decode[events.EvaluationCompleted](t, a[i]).EvaluationIDs)
				}
			},
			// Re-sent, Evaluate answers from the evaluations recorded
			// under the correlation id (before it did, the pair's 50 rows
			// became 75).
			effect: `SELECT count(*) FROM evaluations`, want: func() int { return evaluations },
		},
		{
			svc: "ground",
			pair: func() [2]any {
				img := squarePNG(t)
				return [2]any{
					events.GroundRequested{CorrelationID: "ground-1", Image: img, Expression: "the red square"},
					events.GroundRequested{CorrelationID: "ground-2", Image: img, Expression: "the blue circle"},
				}
			},
			fence:  func(corr string) any { return events.GroundRequested{CorrelationID: corr, Expression: "no image"} },
			keep:   func(*testing.T, [2]json.RawMessage) {},
			effect: `SELECT count(*) FROM ground_requests WHERE correlation_id IN ('ground-1', 'ground-2')`, want: func() int { return 2 },
		},
	}
	for _, c := range cases {
		if kind == bus.KindNATS && c.svc == "ground" {
			continue
		}
		t.Run(c.svc+".requested", func(t *testing.T) {
			topic := c.svc + ".requested"
			pair := c.pair()
			first, second := d.message(topic, pair[0]), d.message(topic, pair[1])
			d.publish(topic, second, first, second, first)
			d.fence(topic, c.fence(c.svc+"-fence"), func() bool { return len(d.answers.of(c.svc+"-fence")) > 0 })
			var got [2]json.RawMessage
			for i, m := range []*message.Message{first, second} {
				got[i] = d.completed(t, c.svc, m.Metadata.Get(events.MetaCorrelationID))
			}
			c.keep(t, got)
			want := c.want()
			if n := count(c.effect); n != want || want == 0 {
				t.Errorf("%s: %d, want %d", c.effect, n, want)
			}

			resent := message.NewMessage(uuid.NewString(), first.Payload)
			for k, v := range first.Metadata {
				resent.Metadata.Set(k, v)
			}
			d.publish(topic, resent)
			d.fence(topic, c.fence(c.svc+"-fence-2"), func() bool { return len(d.answers.of(c.svc+"-fence-2")) > 0 })
			if n := count(c.effect); n != want {
				t.Errorf("after the first request was re-sent under a new message id: %s: %d, want %d", c.effect, n, want)
			}
		})
	}

	// The bridge's answers: per service, two completed answers (reverse
	// order, each twice), one failed answer twice, one progress twice.
	for _, svc := range []string{"ingest", "synth", "train", "eval"} {
		t.Run(svc+" answers to the bridge", func(t *testing.T) {
			ids := map[string]string{}
			for _, k := range []string{"a", "b", "c", "d", "e", "fence-completed", "fence-failed", "fence-progress", "fence-completed-2", "fence-progress-2"} {
				ids[k] = fmt.Sprintf("wf/%s/%s", svc, k)
				if err := (&workflows.PGTokens{Pool: s.Pool}).Save(ctx, workflows.Pending{
					CorrelationID: ids[k], TaskToken: []byte(ids[k]), WorkflowID: "wf", RunID: "r", ActivityID: k, Topic: svc + ".requested",
				}); err != nil {
					t.Fatal(err)
				}
			}
			completedA := d.message(svc+".completed", map[string]any{"correlation_id": ids["a"], "n": 1})
			completedB := d.message(svc+".completed", map[string]any{"correlation_id": ids["b"], "n": 2})
			failedC := d.message(svc+".failed", events.Failed{CorrelationID: ids["c"], Service: svc, Reason: "bad", Retryable: false})
			progressD := d.message(svc+".progress", events.Progress{CorrelationID: ids["d"], Service: svc, Done: 1, Total: 2})
			d.publish(svc+".completed", completedB, completedA, completedB, completedA)
			d.publish(svc+".failed", failedC, failedC)
			d.publish(svc+".progress", progressD, progressD)
			// The fences are answers to activities of their own.
			d.fence(svc+".completed", map[string]any{"correlation_id": ids["fence-completed"]},
				func() bool { return len(completer.completions(ids["fence-completed"])) > 0 })
			d.fence(svc+".failed", events.Failed{CorrelationID: ids["fence-failed"], Service: svc},
				func() bool { return len(completer.completions(ids["fence-failed"])) > 0 })
			d.fence(svc+".progress", events.Progress{CorrelationID: ids["fence-progress"], Service: svc, Done: 1, Total: 2},
				func() bool { return completer.heartbeatsOf(ids["fence-progress"]) > 0 })

			for _, k := range []string{"a", "b", "c"} {
				if got := completer.completions(ids[k]); len(got) != 1 {
					t.Errorf("activity %s completed %d times, want once", k, len(got))
				} else if failed := got[0] != nil; failed != (k == "c") {
					t.Errorf("activity %s completed with error %v", k, got[0])
				}
			}
			if got := completer.completions(ids["d"]); len(got) != 0 {
				t.Errorf("activity d, which only reported progress, completed %d times", len(got))
			}
			if n := completer.heartbeatsOf(ids["d"]); n != 1 {
				t.Errorf("%d heartbeats for one progress report delivered twice, want 1", n)
			}
			// Across topics, out of order: a progress report that arrives
			// after its command's answer (its topic's consumer lagging
			// behind) heartbeats nothing and completes nothing.
			d.publish(svc+".completed", d.message(svc+".completed", map[string]any{"correlation_id": ids["e"], "n": 5}))
			d.fence(svc+".completed", map[string]any{"correlation_id": ids["fence-completed-2"]},
				func() bool { return len(completer.completions(ids["fence-completed-2"])) > 0 })
			d.publish(svc+".progress", d.message(svc+".progress", events.Progress{CorrelationID: ids["e"], Service: svc, Done: 1, Total: 2}))
			d.fence(svc+".progress", events.Progress{CorrelationID: ids["fence-progress-2"], Service: svc, Done: 1, Total: 2},
				func() bool { return completer.heartbeatsOf(ids["fence-progress-2"]) > 0 })
			if got, n := completer.completions(ids["e"]), completer.heartbeatsOf(ids["e"]); len(got) != 1 || got[0] != nil || n != 0 {
				t.Errorf("activity e, answered and then reported on: %d completions %v and %d heartbeats, want one completion and no heartbeat", len(got), got, n)
			}
			if n := count(`SELECT count(*) FROM activity_bridge WHERE correlation_id = ANY($1) AND completed_at IS NOT NULL`,
				[]string{ids["a"], ids["b"], ids["c"], ids["d"]}); n != 3 {
				t.Errorf("%d activities marked completed, want 3", n)
			}
		})
	}
}

// toySpec trains the toy quickly: a 16 px model, one checkpoint per stage.
var toySpec = json.RawMessage(`{
	"recipe": "text-boxes",
	"model": {"image_size": 16, "patch_size": 8, "vision_width": 16, "vision_depth": 1, "width": 32, "depth": 1, "heads": 2, "mlp_ratio": 2},
	"max_words": 64, "samples_per_shard": 64, "log_every": 1,
	"stage1": {"steps": 2, "batch_size": 4, "lr": 0.01, "warmup": 1, "checkpoint_every": 2},
	"stage2": {"steps": 2, "batch_size": 4, "lr": 0.01, "warmup": 1, "checkpoint_every": 2},
	"stage3": {"steps": 2, "batch_size": 4, "lr": 0.01, "warmup": 1, "checkpoint_every": 2}
}`)

// deliverer publishes messages on the bus and waits until they are handled.
type deliverer struct {
	t       *testing.T
	ctx     context.Context
	b       *bus.Bus
	s       *Stack
	answers *answerLog
}

// message builds the message Publish would send.
func (d *deliverer) message(topic string, payload any) *message.Message {
	d.t.Helper()
	msg, err := bus.NewMessage(d.ctx, topic, payload, nil)
	if err != nil {
		d.t.Fatal(err)
	}
	return msg
}

// publish sends msgs in order; a message given twice is one message (one
// id) delivered twice.
func (d *deliverer) publish(topic string, msgs ...*message.Message) {
	d.t.Helper()
	for _, m := range msgs {
		if err := d.b.Publisher().Publish(topic, m.Copy()); err != nil {
			d.t.Fatal(err)
		}
	}
}

// fence publishes payload to topic and waits until arrived reports that
// its handler has run: the Postgres bus hands a consumer group its
// messages one at a time in order, so everything published before it has
// been handled too.
func (d *deliverer) fence(topic string, payload any, arrived func() bool) {
	d.t.Helper()
	d.publish(topic, d.message(topic, payload))
	d.waitFor(topic+" fence", arrived)
}

// completed waits for a command's answer, checks it is the only one and a
// success, and returns it.
func (d *deliverer) completed(t *testing.T, svc, corr string) json.RawMessage {
	t.Helper()
	d.waitFor(svc+" answer to "+corr, func() bool { return len(d.answers.of(corr)) > 0 })
	// A second answer would follow the first closely (ground answers
	// after the handler returns): give it the time to.
	time.Sleep(300 * time.Millisecond)
	got := d.answers.of(corr)
	if len(got) != 1 {
		t.Fatalf("%s: %d answers for %s, want 1: %v", svc, len(got), corr, got)
	}
	if got[0].topic != svc+".completed" {
		t.Fatalf("%s: %s answered on %s: %s", svc, corr, got[0].topic, got[0].payload)
	}
	return got[0].payload
}

// waitFor polls cond for up to 2 minutes.
func (d *deliverer) waitFor(what string, cond func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func decode[T any](t *testing.T, raw json.RawMessage) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("decode %T: %v", v, err)
	}
	return v
}

type answer struct {
	topic   string
	payload json.RawMessage
}

func (a answer) String() string { return a.topic + " " + string(a.payload) }

// answerLog keeps every answer by correlation id.
type answerLog struct {
	mu     sync.Mutex
	byCorr map[string][]answer
}

func (a *answerLog) add(topic string, msg *message.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	corr := msg.Metadata.Get(events.MetaCorrelationID)
	a.byCorr[corr] = append(a.byCorr[corr], answer{topic: topic, payload: json.RawMessage(bytes.Clone(msg.Payload))})
}

func (a *answerLog) of(corr string) []answer {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]answer(nil), a.byCorr[corr]...)
}

// recordingCompleter stands in for Temporal's client: it records what the
// bridge asks of it, by task token.
type recordingCompleter struct {
	mu         sync.Mutex
	completed  map[string][]error
	heartbeats map[string]int
}

func (c *recordingCompleter) CompleteActivity(_ context.Context, token []byte, _ any, err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.completed == nil {
		c.completed = map[string][]error{}
	}
	c.completed[string(token)] = append(c.completed[string(token)], err)
	return nil
}

func (c *recordingCompleter) RecordActivityHeartbeat(_ context.Context, token []byte, _ ...any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.heartbeats == nil {
		c.heartbeats = map[string]int{}
	}
	c.heartbeats[string(token)]++
	return nil
}

func (c *recordingCompleter) SignalWorkflow(context.Context, string, string, string, any) error {
	return nil
}

func (c *recordingCompleter) completions(corr string) []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.completed[corr]...)
}

func (c *recordingCompleter) heartbeatsOf(corr string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.heartbeats[corr]
}

// squarePNG is a 64 px image with a red square.
func squarePNG(t *testing.T) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 64, 64))
	for y := range 64 {
		for x := range 64 {
			c := color.RGBA{230, 230, 230, 255}
			if x >= 10 && x < 30 && y >= 20 && y < 40 {
				c = color.RGBA{220, 30, 30, 255}
			}
			img.Set(x, y, c)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
