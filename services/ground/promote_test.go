package ground

import (
	"context"
	"image/color"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// TestPromotionDuringLoad: requests run without pause while a checkpoint
// is promoted to production and then another; none fails, every answer
// names the model that served it, requests sent after a promotion get the
// promoted model, and each promotion's fact is in the outbox.
func TestPromotionDuringLoad(t *testing.T) {
	ctx := context.Background()
	pool, err := store.Open(ctx, store.NewTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	bs, err := blob.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, b := testModel(t, bs, "a"), testModel(t, bs, "b")
	insertModel(t, pool, &a)
	insertModel(t, pool, &b) // the newest run: served before any promotion
	toy := computetest.NewToy(computetest.ToyOptions{})
	svc, err := New(Config{
		Catalog: NewPGCatalog(pool), Blob: bs, Batch: BatchConfig{MaxModels: 1},
		Backends: func(string) (compute.Backend, error) { return toy, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	img := scene(t, 48, 48, 4, 4, color.RGBA{0, 0, 200, 255})
	ask := func() (events.GroundCompleted, error) {
		return svc.Ground(ctx, events.GroundRequested{Image: img, Expression: "the blue square"})
	}
	if res, err := ask(); err != nil || res.ModelVersion != b.CheckpointID {
		t.Fatalf("before promotion: %v, %v; want the newest run's %s", res.ModelVersion, err, b.CheckpointID)
	}

	var failed atomic.Int64
	var mu sync.Mutex
	served := map[string]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := ask()
				if err != nil {
					failed.Add(1)
					t.Errorf("request during promotion: %v", err)
					return
				}
				mu.Lock()
				served[res.ModelVersion]++
				mu.Unlock()
			}
		})
	}
	// MaxModels 1: every promotion swaps the one loaded model.
	for _, ref := range []ModelRef{a, b, a} {
		time.Sleep(150 * time.Millisecond)
		p, err := svc.Promote(ctx, "", ref.CheckpointID)
		if err != nil {
			t.Fatal(err)
		}
		if p.Alias != DefaultAlias || p.CheckpointID != ref.CheckpointID || p.RunID != ref.RunID || p.PromotedAt.IsZero() {
			t.Fatalf("promotion %+v", p)
		}
		if res, err := ask(); err != nil || res.ModelVersion != ref.CheckpointID {
			t.Fatalf("after promoting %s: served by %s, %v", ref.CheckpointID, res.ModelVersion, err)
		}
	}
	time.Sleep(150 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed during promotions", failed.Load())
	}
	if served[a.CheckpointID] == 0 || served[b.CheckpointID] == 0 {
		t.Fatalf("served %v: both models should have answered", served)
	}
	var facts int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE topic = $1`, events.TopicModelPromoted).Scan(&facts); err != nil || facts != 3 {
		t.Fatalf("model.promoted facts %d (%v), want 3", facts, err)
	}

	// Refusals.
	if _, err := svc.Promote(ctx, "Prod uction", a.CheckpointID); CodeOf(err) != CodeBadRequest {
		t.Fatalf("bad alias: %v", err)
	}
	if _, err := svc.Promote(ctx, "", "00000000-0000-0000-0000-000000000000"); CodeOf(err) != CodeModelNotFound {
		t.Fatalf("unknown checkpoint: %v", err)
	}
}

// A request for a model beyond MaxModels retires the least recently used
// one instead of failing.
func TestModelSwapRetiresIdleModel(t *testing.T) {
	bs, err := blob.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]ModelRef{}
	for _, id := range []string{"m1", "m2", "m3"} {
		r := testModel(t, bs, id)
		refs[id] = r
	}
	cb := &countingBackend{Backend: computetest.NewToy(computetest.ToyOptions{})}
	svc, err := New(Config{
		Catalog: &mapCatalog{refs: refs}, Blob: bs, Batch: BatchConfig{MaxModels: 2},
		Backends: func(string) (compute.Backend, error) { return cb, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	img := scene(t, 32, 32, 0, 0, color.RGBA{200, 0, 0, 255})
	for _, id := range []string{"m1", "m2", "m3", "m1"} {
		res, err := svc.Ground(context.Background(), events.GroundRequested{Image: img, Expression: "the square", CheckpointID: id})
		if err != nil || res.ModelVersion != id {
			t.Fatalf("%s: %v %v", id, res.ModelVersion, err)
		}
	}
	if n := queuedWorkers(svc); n > 2 {
		t.Fatalf("%d models loaded, the most is 2", n)
	}
	if cb.loads != 4 {
		t.Fatalf("%d loads, want 4 (m1 again after it was retired)", cb.loads)
	}
}

func queuedWorkers(s *Service) int {
	s.batcher.mu.Lock()
	defer s.batcher.mu.Unlock()
	return len(s.batcher.workers)
}
