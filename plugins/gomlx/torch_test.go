//go:build libtorch

package gomlx

import (
	"fmt"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
	"github.com/groundmesh/groundmesh/plugins/libtorch/torch"
)

func newTorchBackend(t testing.TB) *Backend {
	t.Helper()
	b, err := New(Config{Engine: EngineLibtorch})
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
