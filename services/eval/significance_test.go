package eval

import (
	"math"
	"strings"
	"testing"
)

func TestWilson(t *testing.T) {
	for _, c := range []struct {
		k, n   int
		lo, hi float64
	}{
		// Reference values (Wilson 1927; as statsmodels' proportion_confint
		// with method="wilson" gives them).
		{0, 100, 0, 0.0370},
		{5, 100, 0.0215, 0.1118},
		{50, 100, 0.4038, 0.5962},
		{100, 100, 0.9630, 1},
		{1, 300, 0.0006, 0.0186},
	} {
		lo, hi := Wilson(c.k, c.n, 1.96)
		if math.Abs(lo-c.lo) > 5e-4 || math.Abs(hi-c.hi) > 5e-4 {
			t.Errorf("Wilson(%d, %d) = [%.4f, %.4f], want [%.4f, %.4f]", c.k, c.n, lo, hi, c.lo, c.hi)
		}
	}
	if lo, hi := Wilson(0, 0, 1.96); lo != 0 || hi != 1 {
		t.Errorf("Wilson(0, 0) = [%v, %v], want [0, 1]", lo, hi)
	}
}

func TestCompareRECToBaseline(t *testing.T) {
	m := map[string]float64{
		"baseline/rec_baseline/val/acc@0.5": 0.01, "baseline/rec_baseline/val/n": 100,
		"baseline/rec_baseline/test/acc@0.5": 0, "baseline/rec_baseline/test/n": 100,
		"stage2/rec/val/acc@0.5": 0.02, "stage2/rec/val/n": 100,
		"stage2/rec/test/acc@0.5": 0.03, "stage2/rec/test/n": 100,
		"stage3/rec/val/acc@0.5": 0.12, "stage3/rec/val/n": 100,
		"stage3/rec/test/acc@0.5": 0.10, "stage3/rec/test/n": 100,
		"stage3/rec/heldout/acc@0.5": 0.5, "stage3/rec/heldout/n": 100, // no baseline on heldout: left out
		"stage3/pope_random/val/f1": 0.7,
	}
	got := CompareRECToBaseline(m)
	if len(got) != 2 || got[0].Stage != "stage2" || got[1].Stage != "stage3" {
		t.Fatalf("stages %+v, want stage2 and stage3", got)
	}
	s2, s3 := got[0], got[1]
	if s2.Hits != 5 || s2.N != 200 || s2.BaseHits != 1 || s2.BaseN != 200 || strings.Join(s2.Splits, ",") != "val,test" {
		t.Fatalf("stage2 pooled %+v, want 5/200 vs 1/200 on val and test", s2)
	}
	if s2.ClearlyAbove() {
		t.Errorf("stage2 5/200 vs 1/200 called clearly above: %s", s2)
	}
	if s3.Hits != 22 || !s3.ClearlyAbove() {
		t.Errorf("stage3 22/200 vs 1/200 not called clearly above: %s", s3)
	}
	if !strings.Contains(s3.String(), "clearly above the baseline") || !strings.Contains(s2.String(), "not clearly above") {
		t.Errorf("verdicts: %q / %q", s2, s3)
	}
	if len(CompareRECToBaseline(map[string]float64{"stage3/rec/val/acc@0.5": 0.1, "stage3/rec/val/n": 10})) != 0 {
		t.Error("a run without a baseline gave a comparison")
	}
}
