package ground

import (
	"context"
	"errors"
	"image/color"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

func toyService(t *testing.T, batch BatchConfig) (*Service, *countingBackend, *blob.Local, ModelRef) {
	t.Helper()
	bs, err := blob.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ref := testModel(t, bs, "ck-1")
	ref.Backend = "toy"
	cb := &countingBackend{Backend: computetest.NewToy(computetest.ToyOptions{})}
	svc, err := New(Config{
		Catalog: &mapCatalog{refs: map[string]ModelRef{ref.CheckpointID: ref}, latest: ref.CheckpointID},
		Backends: func(name string) (compute.Backend, error) {
			if name != "toy" {
				return nil, errors.New("no backend " + name)
			}
			return cb, nil
		},
		Blob: bs, Batch: batch,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return svc, cb, bs, ref
}

func TestGroundAnswersInBothFrames(t *testing.T) {
	svc, cb, bs, ref := toyService(t, BatchConfig{})
	img := scene(t, 120, 80, 10, 20, color.RGBA{220, 40, 40, 255})
	res, err := svc.Ground(context.Background(), events.GroundRequested{CorrelationID: "c1", Image: img, Expression: "  the red square. "})
	if err != nil {
		t.Fatal(err)
	}
	if res.ModelVersion != ref.CheckpointID || res.RunID != ref.RunID || res.Stage != "stage3" || res.Step != 7 {
		t.Fatalf("model: %+v", res)
	}
	if res.Width != 120 || res.Height != 80 || len(res.Boxes) != 1 || res.Boxes[0].Phrase != "the red square" {
		t.Fatalf("answer: %+v", res)
	}
	b := res.Boxes[0]
	// The toy backend has no grounding head, so there is no score to
	// report (TestOverTheBus checks the real plugin's).
	if b.Score != nil {
		t.Fatalf("score %v from a backend without a head", *b.Score)
	}
	for i, v := range b.Norm {
		if v < 0 || v > 1 {
			t.Fatalf("norm[%d] = %v", i, v)
		}
	}
	// The pixel box is the normalized one undone from the padded square:
	// 120x80 pads 20 rows above.
	want := [4]float64{b.Norm[0] * 120, b.Norm[1]*120 - 20, b.Norm[2] * 120, b.Norm[3]*120 - 20}
	for i := range want {
		want[i] = min(max(want[i], 0), float64([]int{120, 80}[i%2]))
		if d := want[i] - b.Pixel[i]; d > 1e-9 || d < -1e-9 {
			t.Fatalf("pixel %v, want %v from norm %v", b.Pixel, want, b.Norm)
		}
	}
	if res.LatencyMS <= 0 || res.Text == "" {
		t.Fatalf("latency %v text %q", res.LatencyMS, res.Text)
	}
	// The same request by blob key gives the same answer, and the model
	// stays loaded.
	if _, _, err := bs.Put("uploads/a.png", bytesReader(img)); err != nil {
		t.Fatal(err)
	}
	res2, err := svc.Ground(context.Background(), events.GroundRequested{CorrelationID: "c2", ImageKey: "uploads/a.png", Expression: "the red square"})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Text != res.Text || res2.Boxes[0].Pixel != res.Boxes[0].Pixel {
		t.Fatalf("by key %q, inline %q", res2.Text, res.Text)
	}
	if cb.loads != 1 {
		t.Fatalf("%d loads, want 1", cb.loads)
	}
	// A caller may phrase the whole question (one of the trained phrasings).
	res3, err := svc.Ground(context.Background(), events.GroundRequested{CorrelationID: "c3", Image: img, Prompt: "Where is the red square? Answer with a bounding box."})
	if err != nil {
		t.Fatal(err)
	}
	if res3.Boxes[0].Phrase != "Where is the red square? Answer with a bounding box." || len(res3.Box) != 4 {
		t.Fatalf("prompt answer %+v", res3)
	}
	if _, err := svc.Ground(context.Background(), events.GroundRequested{Image: img, Prompt: "<image> a <image> b"}); CodeOf(err) != CodeBadExpression {
		t.Fatalf("two placeholders: %v", err)
	}
}

func TestGroundRefusals(t *testing.T) {
	svc, cb, _, _ := toyService(t, BatchConfig{})
	img := scene(t, 40, 40, 0, 0, color.RGBA{0, 0, 200, 255})
	cases := []struct {
		name string
		req  events.GroundRequested
		code string
	}{
		{"no image", events.GroundRequested{Expression: "x"}, CodeBadRequest},
		{"two images", events.GroundRequested{Image: img, ImageKey: "k", Expression: "x"}, CodeBadRequest},
		{"no expression", events.GroundRequested{Image: img}, CodeBadExpression},
		{"expression and prompt", events.GroundRequested{Image: img, Expression: "a", Prompt: "b"}, CodeBadRequest},
		{"long expression", events.GroundRequested{Image: img, Expression: string(make([]byte, 513))}, CodeExpressionTooLong},
		{"missing blob", events.GroundRequested{ImageKey: "uploads/none.png", Expression: "x"}, CodeImageNotFound},
		{"unknown checkpoint", events.GroundRequested{Image: img, Expression: "x", CheckpointID: "nope"}, CodeModelNotFound},
		{"past deadline", events.GroundRequested{Image: img, Expression: "x", Deadline: time.Now().Add(-time.Second)}, CodeDeadlineExceeded},
		{"not an image", events.GroundRequested{Image: []byte("hello, world"), Expression: "x"}, CodeUnsupportedFormat},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := svc.Ground(context.Background(), c.req)
			if CodeOf(err) != c.code {
				t.Fatalf("code %q (%v), want %q", CodeOf(err), err, c.code)
			}
		})
	}
	if n := len(cb.calls()); n != 0 {
		t.Fatalf("%d plugin calls for refused requests", n)
	}
}

// Concurrent requests share one plugin call, and each gets the answer it
// would get alone.
func TestBatching(t *testing.T) {
	svc, cb, _, _ := toyService(t, BatchConfig{MaxBatch: 8, MaxDelay: 5 * time.Second}) // full at 8: no wait
	imgs := [][]byte{}
	for i := range 8 {
		imgs = append(imgs, scene(t, 64, 48, 4*i, 2*i, color.RGBA{uint8(30 * i), 100, 200, 255}))
	}
	exprs := []string{"the red square", "the blue circle", "the green square", "the square", "the red circle", "the blue square", "the green circle", "the circle"}
	got := make([]events.GroundCompleted, 8)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			var err error
			got[i], err = svc.Ground(context.Background(), events.GroundRequested{Image: imgs[i], Expression: exprs[i]})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if calls := cb.calls(); len(calls) != 1 || calls[0] != 8 {
		t.Fatalf("plugin calls (batch sizes) %v, want one call of 8", calls)
	}
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(svc.Gatherer(), promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`groundmesh_ground_requests_total{code="ok"} 8`,
		"groundmesh_ground_generate_calls_total 1",
		`groundmesh_ground_batch_size_bucket{le="8"} 1`,
		`groundmesh_ground_batch_size_bucket{le="4"} 0`,
		"groundmesh_ground_queued_requests 0",
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, rec.Body)
		}
	}
	// The same model (deterministic weights), answering one at a time.
	single, _, _, _ := toyService(t, BatchConfig{MaxBatch: 1})
	for i := range 8 {
		alone, err := single.Ground(context.Background(), events.GroundRequested{Image: imgs[i], Expression: exprs[i]})
		if err != nil {
			t.Fatal(err)
		}
		if alone.Text != got[i].Text {
			t.Errorf("request %d: batched %q, alone %q", i, got[i].Text, alone.Text)
		}
	}
}

// A full queue answers overloaded at once; a caller that goes away
// cancels the plugin call it alone was waiting for.
func TestQueueBoundAndCancellation(t *testing.T) {
	svc, cb, _, _ := toyService(t, BatchConfig{MaxBatch: 1, MaxQueue: 1, MaxDelay: time.Millisecond})
	img := scene(t, 32, 32, 0, 0, color.RGBA{200, 0, 0, 255})
	// Load the model first, so that the blocked call below is a Generate.
	if _, err := svc.Ground(context.Background(), events.GroundRequested{Image: img, Expression: "the square"}); err != nil {
		t.Fatal(err)
	}
	block := make(chan struct{})
	cb.mu.Lock()
	cb.block = block
	cb.mu.Unlock()
	// Runs before the service's own cleanup, which waits for its workers:
	// a failure below must not leave one blocked for good.
	t.Cleanup(func() { close(block) })
	ctx1, cancel1 := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := svc.Ground(ctx1, events.GroundRequested{Image: img, Expression: "the square"})
		first <- err
	}()
	waitFor(t, func() bool { return len(cb.calls()) == 2 }) // the worker is in Generate
	second := make(chan error, 1)
	go func() {
		_, err := svc.Ground(context.Background(), events.GroundRequested{Image: img, Expression: "the square"})
		second <- err
	}()
	waitFor(t, func() bool { return queued(svc) == 1 })
	// A deadline, so that a queue that takes a third request fails here
	// instead of waiting for the blocked call forever.
	ctx3, cancel3 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel3()
	_, err := svc.Ground(ctx3, events.GroundRequested{Image: img, Expression: "the square"})
	if CodeOf(err) != CodeOverloaded || HTTPStatus(CodeOf(err)) != 429 {
		t.Fatalf("third request: %v (code %q), want overloaded", err, CodeOf(err))
	}
	// The plugin call of the caller that goes away is cancelled: its
	// Generate returns on ctx (its block is never closed), which frees the
	// worker for the queued request, whose own call does not block (set
	// before the cancel: the worker may start it at once).
	cb.mu.Lock()
	cb.block = nil
	cb.mu.Unlock()
	cancel1()
	if err := <-first; CodeOf(err) != CodeDeadlineExceeded {
		t.Fatalf("cancelled caller: %v", err)
	}
	select {
	case err := <-second:
		if err != nil {
			t.Fatalf("queued request after the cancelled one: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the queued request was not served in 10 s: the plugin call of the caller that went away was not cancelled")
	}
}

func queued(s *Service) int { return s.batcher.queued() }

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A question too long for the model's context fails alone, not its batch.
func TestTooLongForTheModelFailsAlone(t *testing.T) {
	svc, _, _, _ := toyService(t, BatchConfig{MaxBatch: 4, MaxDelay: 200 * time.Millisecond})
	img := scene(t, 32, 32, 0, 0, color.RGBA{200, 0, 0, 255})
	long := strings.Repeat("the red square left of ", 15) // under the byte limit, over 160 tokens
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, e := range []string{"the red square", long, "the blue circle"} {
		wg.Go(func() {
			_, errs[i] = svc.Ground(context.Background(), events.GroundRequested{Image: img, Expression: e})
		})
	}
	wg.Wait()
	if errs[0] != nil || errs[2] != nil {
		t.Fatalf("short questions failed: %v, %v", errs[0], errs[2])
	}
	if CodeOf(errs[1]) != CodeExpressionTooLong || !strings.Contains(errs[1].Error(), "context of 160 tokens") {
		t.Fatalf("long question: %v (code %q)", errs[1], CodeOf(errs[1]))
	}
}
