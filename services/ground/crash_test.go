package ground

import (
	"context"
	"fmt"
	"image/color"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// TestPluginKilledBetweenAndDuringRequests: the GoMLX plugin process is
// SIGKILLed while the service holds its model, idle, and again while a
// batch of requests runs; each request is still answered (the host starts
// a new plugin process, the model is loaded into it again and the batch
// is asked once more), none fails.
func TestPluginKilledBetweenAndDuringRequests(t *testing.T) {
	host := pluginHost(t)
	bs, err := blob.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ref := testModel(t, bs, "crash")
	svc, err := New(Config{
		Catalog:  &mapCatalog{refs: map[string]ModelRef{ref.CheckpointID: ref}, latest: ref.CheckpointID},
		Backends: func(string) (compute.Backend, error) { return host, nil }, Blob: bs,
		Batch: BatchConfig{MaxBatch: 8, MaxDelay: 20 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	img := scene(t, 64, 48, 8, 8, color.RGBA{220, 40, 40, 255})
	ask := func() error {
		_, err := svc.Ground(ctx, events.GroundRequested{Image: img, Expression: "the red square"})
		return err
	}
	if err := ask(); err != nil {
		t.Fatal(err)
	}
	kill := func() {
		pid := host.PID()
		if pid <= 0 {
			t.Fatal("no plugin process")
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil {
				return
			}
		}
	}

	// Killed while idle: the next request finds the model gone.
	kill()
	if err := ask(); err != nil {
		t.Fatalf("the request after the plugin was killed: %v", err)
	}
	if n := svc.CrashRetries(); n != 1 {
		t.Fatalf("%d batches asked again, want 1", n)
	}

	// Killed while batches run: every request is answered.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Go(func() {
			if err := ask(); err != nil {
				errs <- err
			}
		})
	}
	time.Sleep(30 * time.Millisecond)
	kill()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a request failed across the plugin's crash: %v", err)
	}
	t.Logf("batches asked again after a crash: %d", svc.CrashRetries())
}
