package eval

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Wilson returns the Wilson score interval of a proportion with k
// successes in n trials at the normal quantile z (1.96 for 95%). Unlike
// the normal approximation it stays inside [0, 1] and is not empty at 0
// or n successes, which is where a weak model and a fixed-box baseline
// sit. n == 0 gives [0, 1].
func Wilson(k, n int, z float64) (lo, hi float64) {
	if n <= 0 {
		return 0, 1
	}
	nf, p := float64(n), float64(k)/float64(n)
	z2 := z * z
	centre := (p + z2/(2*nf)) / (1 + z2/nf)
	half := z * math.Sqrt(p*(1-p)/nf+z2/(4*nf*nf)) / (1 + z2/nf)
	return math.Max(0, centre-half), math.Min(1, centre+half)
}

// RECVersusBaseline is one stage's REC Acc@0.5 against the fixed-box
// baseline's, each pooled over the splits both were measured on.
type RECVersusBaseline struct {
	Stage                  string
	Splits                 []string
	Hits, N                int     // the model's boxes with IoU >= 0.5, of N
	BaseHits, BaseN        int     // the same for the baseline box
	Lo, Hi, BaseLo, BaseHi float64 // Wilson 95% intervals
}

// Acc is the model's pooled Acc@0.5.
func (r RECVersusBaseline) Acc() float64 { return float64(r.Hits) / math.Max(1, float64(r.N)) }

// BaseAcc is the baseline's pooled Acc@0.5.
func (r RECVersusBaseline) BaseAcc() float64 {
	return float64(r.BaseHits) / math.Max(1, float64(r.BaseN))
}

// ClearlyAbove says whether the model's 95% interval lies wholly above
// the baseline's: a conservative test (non-overlapping Wilson intervals
// imply a difference at well under the 5% level).
func (r RECVersusBaseline) ClearlyAbove() bool { return r.Lo > r.BaseHi }

func (r RECVersusBaseline) String() string {
	verdict := "not clearly above the baseline (the 95% intervals overlap)"
	if r.ClearlyAbove() {
		verdict = "clearly above the baseline (the 95% intervals do not overlap)"
	}
	return fmt.Sprintf("%s: Acc@0.5 %.3f [%.3f, %.3f] (%d/%d) vs fixed box %.3f [%.3f, %.3f] (%d/%d) on %s: %s",
		r.Stage, r.Acc(), r.Lo, r.Hi, r.Hits, r.N, r.BaseAcc(), r.BaseLo, r.BaseHi, r.BaseHits, r.BaseN,
		strings.Join(r.Splits, "+"), verdict)
}

// CompareRECToBaseline reads flat metrics ("<stage>/<benchmark>/<split>/
// <metric>", as events.EvaluationCompleted.Metrics and the pipeline's
// result carry them) and returns, per stage in stage order, its REC
// Acc@0.5 against the baseline's, pooled over the splits that both have
// (hits recovered as round(acc * n)). Stages without REC, or runs without
// a baseline, give nothing.
func CompareRECToBaseline(metrics map[string]float64) []RECVersusBaseline {
	type cell struct{ acc, n float64 }
	get := func(stage, bench, split string) (cell, bool) {
		a, ok1 := metrics[metricKey(stage, bench, split, "acc@0.5")]
		n, ok2 := metrics[metricKey(stage, bench, split, "n")]
		return cell{a, n}, ok1 && ok2 && n > 0
	}
	stageSet := map[string]bool{}
	splitSet := map[string]bool{}
	for k := range metrics {
		parts := strings.Split(k, "/")
		if len(parts) == 4 && parts[1] == BenchREC && parts[0] != StageBaseline {
			stageSet[parts[0]] = true
			splitSet[parts[2]] = true
		}
	}
	var stages, splits []string
	for st := range stageSet {
		stages = append(stages, st)
	}
	for sp := range splitSet {
		splits = append(splits, sp)
	}
	sortStages(stages)
	sortSplits(splits)
	var out []RECVersusBaseline
	for _, st := range stages {
		r := RECVersusBaseline{Stage: st}
		for _, sp := range splits {
			m, ok := get(st, BenchREC, sp)
			b, okb := get(StageBaseline, BenchRECBaseline, sp)
			if !ok || !okb {
				continue
			}
			r.Splits = append(r.Splits, sp)
			r.Hits += int(math.Round(m.acc * m.n))
			r.N += int(m.n)
			r.BaseHits += int(math.Round(b.acc * b.n))
			r.BaseN += int(b.n)
		}
		if len(r.Splits) == 0 {
			continue
		}
		r.Lo, r.Hi = Wilson(r.Hits, r.N, 1.96)
		r.BaseLo, r.BaseHi = Wilson(r.BaseHits, r.BaseN, 1.96)
		out = append(out, r)
	}
	return slices.Clip(out)
}
