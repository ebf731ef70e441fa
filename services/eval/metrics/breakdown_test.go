package metrics

import (
	"math"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

func TestExprKind(t *testing.T) {
	for expr, want := range map[string]string{
		"the red circle":                      ExprAttribute,
		"the striped square":                  ExprAttribute,
		"the small blue diamond":              ExprSize,
		"the Large  ring":                     ExprSize,
		"the circle left of the blue diamond": ExprRelation,
		"the small cross above the ring":      ExprRelation,
		"the square next to the triangle":     ExprRelation,
		"the smallest thing":                  ExprAttribute, // not a size word of the world
	} {
		if got := ExprKind(expr); got != want {
			t.Errorf("ExprKind(%q) = %s, want %s", expr, got, want)
		}
	}
}

// TestRECBreakdown: a box on the right object counts as selected even when
// imprecise; a box on a distractor is a wrong selection even where its IoU
// with the referent is not 0; precision reads only right selections.
func TestRECBreakdown(t *testing.T) {
	box := func(x1, y1, x2, y2 float64) dataset.Box { return dataset.Box{X1: x1, Y1: y1, X2: x2, Y2: y2} }
	truth := box(0, 0, 10, 10)
	others := []dataset.Box{box(8, 0, 18, 10), box(30, 30, 40, 40)}
	var b RECBreakdown
	exact, loose, wrong := box(0, 0, 10, 10), box(0, 0, 10, 25), box(8, 0, 18, 10)
	b.Add(&exact, truth, others, "the red circle", "small")                // selected, hit
	b.Add(&loose, truth, others, "the circle left of the square", "small") // selected, IoU 0.4: miss
	b.Add(&wrong, truth, others, "the small circle", "large")              // distractor
	b.Add(nil, truth, others, "the red circle", "large")                   // no box
	b.Add(&exact, truth, nil, "the red circle", "")                        // others unknown: not in selection
	m := b.Map()
	want := map[string]float64{
		"selection": 2.0 / 4, "selection_n": 4, "precision_acc@0.5": 0.5, "precision_miou": (1 + 0.4) / 2,
		"acc@0.5_attribute": 2.0 / 3, "n_attribute": 3, "acc@0.5_relation": 0, "n_relation": 1,
		"acc@0.5_size": 0, "n_size": 1, "acc@0.5_small": 0.5, "n_small": 2, "acc@0.5_large": 0, "n_large": 2,
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || math.Abs(got-v) > 1e-9 {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if len(m) != len(want) {
		t.Errorf("%d rows, want %d: %v", len(m), len(want), m)
	}
}
