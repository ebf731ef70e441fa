package gomlx

import (
	"math"
	"testing"

	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/groundmesh/groundmesh/internal/model"
)

// TestTargetDistBoxLabelSmoothing: a box-number target spreads a Gaussian
// over the coarse range only, peaked on the target and symmetric about it;
// every other target stays one-hot; sigma 0 is one-hot everywhere.
func TestTargetDistBoxLabelSmoothing(t *testing.T) {
	b := newTestBackend(t)
	c := tinyConfig()
	c.VocabSize, c.BoxToken0, c.BoxTokens, c.BoxLabelSigma = 40, 10, 21, 1.5
	targets := []int32{3, 10, 20, 30, 35} // text, first, middle, last box number, text
	dist := func(c2 c2cfg) [][]float32 {
		exec, err := graph.NewExec(b.ml, func(tgt *graph.Node) *graph.Node {
			return (&netGraph{cfg: c2.Config}).targetDist(tgt)
		})
		if err != nil {
			t.Fatal(err)
		}
		defer exec.Finalize()
		out, err := exec.Call(tensors.FromFlatDataAndDimensions(targets, len(targets)))
		if err != nil {
			t.Fatal(err)
		}
		flat := tensors.MustCopyFlatData[float32](out[0])
		rows := make([][]float32, len(targets))
		for i := range rows {
			rows[i] = flat[i*c.VocabSize : (i+1)*c.VocabSize]
		}
		return rows
	}
	rows := dist(c2cfg{c})
	for i, tg := range targets {
		row := rows[i]
		sum := 0.0
		for _, v := range row {
			sum += float64(v)
		}
		if math.Abs(sum-1) > 1e-5 {
			t.Fatalf("target %d: row sums to %v", tg, sum)
		}
		box := tg >= 10 && tg <= 30
		for j, v := range row {
			switch {
			case !box && j == int(tg) && v != 1, !box && j != int(tg) && v != 0:
				t.Fatalf("text target %d: p[%d] = %v, want one-hot", tg, j, v)
			case box && (j < 10 || j > 30) && v != 0:
				t.Fatalf("box target %d: mass %v on non-box token %d", tg, v, j)
			case box && j != int(tg) && v >= row[tg]:
				t.Fatalf("box target %d: p[%d] = %v not below the peak %v", tg, j, v, row[tg])
			}
		}
		if box && tg == 20 {
			for d := 1; d <= 10; d++ {
				if math.Abs(float64(row[20-d]-row[20+d])) > 1e-6 || row[20+d] >= row[20+d-1] {
					t.Fatalf("box target 20: not symmetric and falling at distance %d: %v", d, row[10:31])
				}
			}
			if want := math.Exp(-1 / (2 * 1.5 * 1.5)); math.Abs(float64(row[21]/row[20])-want) > 1e-4 {
				t.Fatalf("p[21]/p[20] = %v, want %v", row[21]/row[20], want)
			}
		}
	}
	c.BoxLabelSigma = 0
	for i, row := range dist(c2cfg{c}) {
		for j, v := range row {
			if (j == int(targets[i])) != (v == 1) {
				t.Fatalf("sigma 0, target %d: p[%d] = %v", targets[i], j, v)
			}
		}
	}
}

type c2cfg struct{ Config model.Config }

// TestSinCos2DPositions: every patch of the grid gets a distinct code, and
// neighbouring cells are closer than far ones.
func TestSinCos2DPositions(t *testing.T) {
	const g, w = 6, 64
	v := make([]float32, g*g*w)
	sinCos2D(v, g*g, w)
	dist := func(a, b int) float64 {
		d := 0.0
		for k := range w {
			x := float64(v[a*w+k] - v[b*w+k])
			d += x * x
		}
		return math.Sqrt(d)
	}
	for a := range g * g {
		for b := a + 1; b < g*g; b++ {
			if dist(a, b) < 1e-3 {
				t.Fatalf("patches %d and %d share a position code", a, b)
			}
		}
	}
	if near, far := dist(0, 1), dist(0, g-1); near >= far {
		t.Fatalf("neighbour distance %v not below far distance %v", near, far)
	}
	if near, far := dist(0, g), dist(0, (g-1)*g); near >= far {
		t.Fatalf("row neighbour distance %v not below far distance %v", near, far)
	}
}
