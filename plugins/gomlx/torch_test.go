//go:build libtorch

package gomlx

import (
	"testing"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
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
