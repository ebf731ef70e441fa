package eval

import (
	"fmt"
	"strings"
)

// Target is one figure the demo's model is held to, read from a
// pipeline's flat metrics (stage/benchmark/split/metric).
type Target struct {
	Name    string
	Key     string  // the metric row it reads
	Min     float64 // lowest value that meets it
	Max     float64 // highest value that meets it (0: no upper bound)
	Value   float64
	Present bool
}

// Met reports whether the figure was measured and lies within bounds.
func (t Target) Met() bool {
	return t.Present && t.Value >= t.Min && (t.Max == 0 || t.Value <= t.Max)
}

func (t Target) String() string {
	bound := fmt.Sprintf(">= %.2f", t.Min)
	if t.Max > 0 {
		bound = fmt.Sprintf("%.2f .. %.2f", t.Min, t.Max)
	}
	switch {
	case !t.Present:
		return fmt.Sprintf("%-34s %8s   target %-12s not measured (%s)", t.Name, "-", bound, t.Key)
	case t.Met():
		return fmt.Sprintf("%-34s %8.3f   target %-12s met", t.Name, t.Value, bound)
	}
	return fmt.Sprintf("%-34s %8.3f   target %-12s MISSED by %.3f", t.Name, t.Value, bound, t.miss())
}

func (t Target) miss() float64 {
	if t.Value < t.Min {
		return t.Min - t.Value
	}
	return t.Value - t.Max
}

// DemoTargets are the demo's targets for the model of the last stage in m
// (stage3 when present): REC Acc@0.5 on test and heldout, POPE F1 and its
// yes-ratio on test for each negative sampling, and crop naming accuracy
// on test. Nil when m holds no stage.
func DemoTargets(m map[string]float64) []Target {
	stage := ""
	for k := range m {
		// The last training stage; an export ("stage3@gguf-q8_0") is
		// scored beside its checkpoint, not in its place.
		if s, _, ok := strings.Cut(k, "/"); ok && strings.HasPrefix(s, "stage") && !strings.Contains(s, "@") && s > stage {
			stage = s
		}
	}
	if stage == "" {
		return nil
	}
	var out []Target
	add := func(name, bench, split, metric string, lo, hi float64) {
		k := metricKey(stage, bench, split, metric)
		v, ok := m[k]
		out = append(out, Target{Name: name, Key: k, Min: lo, Max: hi, Value: v, Present: ok})
	}
	add(stage+" REC Acc@0.5 test", BenchREC, "test", "acc@0.5", 0.75, 0)
	add(stage+" REC Acc@0.5 heldout", BenchREC, "heldout", "acc@0.5", 0.65, 0)
	for _, p := range []string{"random", "popular", "adversarial"} {
		add(stage+" POPE "+p+" F1 test", BenchPOPEPrefix+p, "test", "f1", 0.80, 0)
		add(stage+" POPE "+p+" yes-ratio test", BenchPOPEPrefix+p, "test", "yes_ratio", 0.35, 0.65)
	}
	add(stage+" crop naming accuracy test", BenchCropName, "test", "accuracy", 0.70, 0)
	return out
}
