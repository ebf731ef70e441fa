//go:build libtorch

package gomlx

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
	"github.com/groundmesh/groundmesh/plugins/libtorch/torch"
)

// torchTestDevice is the device the libtorch tests compute on:
// GROUNDMESH_TORCH_DEVICE (scripts/gpu-check.sh sets cuda), cpu by default.
func torchTestDevice() string { return os.Getenv("GROUNDMESH_TORCH_DEVICE") }

func newTorchBackend(t testing.TB) *Backend {
	t.Helper()
	b, err := New(Config{Engine: EngineLibtorch, Device: torchTestDevice()})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTorchMatrix runs the conformance matrix, training and inference
// cells, on the libtorch engine against the references the GoMLX engine
// recorded.
func TestTorchMatrix(t *testing.T) {
	computetest.RunMatrix(t, computetest.MatrixHarness{New: func(t *testing.T) compute.Backend { return newTorchBackend(t) }})
}

func init() {
	matmulPeak = func(b *testing.B) (float64, string) {
		const n, reps = 1024, 10
		a := torch.NewArena()
		defer a.Close()
		o := &torch.Ops{Arena: a}
		x := a.FromFloats(make([]float32, n*n), []int{n, n}, torch.CPU, false)
		o.MatMul(x, x)
		t0 := time.Now()
		for range reps {
			o.MatMul(x, x)
		}
		return 2 * n * n * n * reps / time.Since(t0).Seconds() / 1e9, fmt.Sprintf("libtorch %s, %d threads", torch.Version(), torch.Threads())
	}
}

// TestTorchCheckpointsAcrossEngines: a stage trained on one engine resumes
// on the other and ends where an uninterrupted run on the first ends
// (the same checkpoint format, optimizer state and data position), both
// ways round.
func TestTorchCheckpointsAcrossEngines(t *testing.T) {
	ctx := context.Background()
	cfg := computetest.TinyConfig()
	shard, err := computetest.WriteTinyShard(t.TempDir(), cfg, 64, 3)
	if err != nil {
		t.Fatal(err)
	}
	engines := map[string]*Backend{EngineGoMLX: newTestBackend(t), EngineLibtorch: newTorchBackend(t)}
	req := func(dir string) compute.TrainRequest {
		return compute.TrainRequest{RunID: "cross", Stage: "stage1", ModelConfig: computetest.TinyConfigJSON(),
			Shards: []string{shard}, Steps: 6, BatchSize: 8, LearningRate: 3e-3, WarmupSteps: 1, WeightDecay: 0.01,
			Seed: 5, LogEvery: 1, CheckpointEvery: 3, CheckpointDir: dir}
	}
	specs := paramSpecs(cfg)
	weights := func(path string) map[string][]float32 {
		st, err := readCheckpoint(path, specs, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		return st.weights
	}
	for _, pair := range [][2]string{{EngineGoMLX, EngineLibtorch}, {EngineLibtorch, EngineGoMLX}} {
		first, second := pair[0], pair[1]
		t.Run(first+"_then_"+second, func(t *testing.T) {
			dir := t.TempDir()
			whole, err := engines[first].Train(ctx, req(dir), nil)
			if err != nil {
				t.Fatal(err)
			}
			mid := filepath.Join(dir, "stage1-step000003.safetensors")
			r := req(t.TempDir())
			r.ResumeCheckpoint = mid
			resumed, err := engines[second].Train(ctx, r, nil)
			if err != nil {
				t.Fatalf("resume %s's checkpoint on %s: %v", first, second, err)
			}
			if resumed.Steps != 6 {
				t.Fatalf("resumed run ended at step %d, want 6", resumed.Steps)
			}
			a, b := weights(whole.Final.Path), weights(resumed.Final.Path)
			worst, where := 0.0, ""
			for name, wa := range a {
				for i := range wa {
					if d := math.Abs(float64(wa[i] - b[name][i])); d > worst {
						worst, where = d, name
					}
				}
			}
			t.Logf("%s 6 steps vs %s 3 + %s 3: largest weight difference %.2g (%s); final loss %.5f vs %.5f",
				first, first, second, worst, where, whole.LastLoss, resumed.LastLoss)
			if worst > 1e-3 {
				t.Errorf("weights differ by %.3g at %s after resuming on %s", worst, where, second)
			}
			f, err := readSafetensors(resumed.Final.Path)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Metadata["backend"]; got != second {
				t.Errorf("checkpoint records backend %q, want %q", got, second)
			}
		})
	}
}

// TestTorchPlugin builds groundmesh-libtorch and runs the conformance
// suite and the matrix through compute.Host, over gRPC, as the product
// does; Describe names the engine and its device.
func TestTorchPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary; skipped with -short")
	}
	bin := filepath.Join(t.TempDir(), "groundmesh-libtorch")
	cmd := exec.Command("go", "build", "-tags", "libtorch", "-o", bin, "../libtorch/cmd/groundmesh-libtorch")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build plugin: %v\n%s", err, out)
	}
	newHost := func(t *testing.T) compute.Backend {
		h, err := compute.NewHost(compute.HostConfig{Path: bin, Env: []string{"GROUNDMESH_LIBTORCH_THREADS=2"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		return h
	}
	computetest.RunConformance(t, computetest.Harness{New: newHost})
	t.Run("Matrix", func(t *testing.T) { computetest.RunMatrix(t, computetest.MatrixHarness{New: newHost}) })
	h := newHost(t)
	d, err := h.Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.Backend != EngineLibtorch || len(d.Devices) == 0 || d.Devices[0] != "cpu" || !strings.Contains(d.Version, "libtorch") {
		t.Errorf("Describe = %+v, want backend libtorch on cpu first", d)
	}
	t.Logf("describe: %s", d.Version)
	// A device this machine does not have is refused at start, by name.
	if !torch.CUDAAvailable() {
		if _, err := New(Config{Engine: EngineLibtorch, Device: "cuda"}); err == nil || !strings.Contains(err.Error(), "cuda") {
			t.Errorf("New(device cuda) without CUDA: %v, want an error naming cuda", err)
		}
	}
}
