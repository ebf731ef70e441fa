package gomlx

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// TestMatrix runs the conformance matrix against the reference backend
// and its checked-in references. With GROUNDMESH_RECORD_MATRIX=1 it
// records them instead (see computetest's testdata/matrix/README.md).
func TestMatrix(t *testing.T) {
	h := computetest.MatrixHarness{New: func(t *testing.T) compute.Backend { return newTestBackend(t) }}
	if os.Getenv("GROUNDMESH_RECORD_MATRIX") == "1" {
		h.Record = filepath.Join("..", "compute", "computetest", "testdata", "matrix", computetest.MatrixVersion)
	}
	computetest.RunMatrix(t, h)
}

// TestMatrixCatchesWrongBackend shows that the matrix can fail: a backend
// that ignores Config.PatchPositions (one wrong operation, in training and
// inference) fails exactly the cells that turn the option on, and passes
// the others.
func TestMatrixCatchesWrongBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the matrix twice over; skipped with -short")
	}
	b := newTestBackend(t)
	b.faults.ignorePatchPositions = true
	ctx := context.Background()
	var failed []string
	for _, cell := range computetest.MatrixCells() {
		err := computetest.CheckCell(ctx, b, cell, t.TempDir(), computetest.MatrixTolerance{})
		uses := cell.Config.PatchPositions
		switch {
		case err != nil:
			failed = append(failed, cell.Name)
			t.Logf("cell %s fails as it should:\n%v", cell.Name, err)
			if !uses {
				t.Errorf("cell %s (no patch positions) failed: %v", cell.Name, err)
			} else if !strings.Contains(err.Error(), "prefill logits") {
				t.Errorf("cell %s failed, but not on its prefill logits: %v", cell.Name, err)
			}
		case uses:
			t.Errorf("cell %s turns on patch_positions, and the wrong backend passed it", cell.Name)
		}
	}
	if want := []string{"patch_positions", "demo"}; !slices.Equal(failed, want) {
		t.Errorf("failed cells %v, want %v", failed, want)
	}
}
