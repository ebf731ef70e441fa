package eval

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"

	"go.opentelemetry.io/otel/attribute"
)

// Table is two runs' metrics side by side.
type Table struct {
	RunA, RunB string
	Rows       []CompareRow
}

// CompareRow is one metric of both runs. A value a run lacks is NaN.
type CompareRow struct {
	// Metric is "<stage>/<benchmark>/<split>/<metric>", as in
	// events.EvaluationCompleted.Metrics.
	Metric string
	A, B   float64
}

// Delta is B - A (NaN when either is missing).
func (r CompareRow) Delta() float64 { return r.B - r.A }

// Compare reads the latest evaluation of each (stage, benchmark, split) of
// two runs and lines their metrics up. Sample counts ("n", "pairs") are
// left out: they say how much was measured, not how well.
func (s *Service) Compare(ctx context.Context, runA, runB string) (Table, error) {
	ctx, span := tracer.Start(ctx, "eval.Compare")
	defer span.End()
	span.SetAttributes(attribute.String("run_a", runA), attribute.String("run_b", runB))
	a, err := latestEvaluations(ctx, s.pool, runA)
	if err != nil {
		return Table{}, fmt.Errorf("compare: %w", err)
	}
	b, err := latestEvaluations(ctx, s.pool, runB)
	if err != nil {
		return Table{}, fmt.Errorf("compare: %w", err)
	}
	if len(a) == 0 {
		return Table{}, fmt.Errorf("compare: run %s has no evaluations", runA)
	}
	if len(b) == 0 {
		return Table{}, fmt.Errorf("compare: run %s has no evaluations", runB)
	}
	return compareTable(runA, runB, a, b), nil
}

// metricKey is a metric's flat name, "<stage>/<benchmark>/<split>/<metric>",
// as events.EvaluationCompleted.Metrics carries it.
func metricKey(stage, bench, split, metric string) string {
	return stage + "/" + bench + "/" + split + "/" + metric
}

// flatMetrics flattens evaluations to metricKey names; the sample counts
// ("n", "pairs") only with counts.
func flatMetrics(es []EvaluationRow, counts bool) map[string]float64 {
	out := map[string]float64{}
	for _, e := range es {
		for m, v := range e.Metrics {
			if !counts && (m == "n" || m == "pairs") {
				continue
			}
			out[metricKey(e.Stage, e.Benchmark, e.Split, m)] = v
		}
	}
	return out
}

func compareTable(runA, runB string, a, b []EvaluationRow) Table {
	ma, mb := flatMetrics(a, false), flatMetrics(b, false)
	var keys []string
	for k := range ma {
		keys = append(keys, k)
	}
	for k := range mb {
		if _, ok := ma[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, compareKeys)
	t := Table{RunA: runA, RunB: runB}
	for _, k := range keys {
		r := CompareRow{Metric: k, A: math.NaN(), B: math.NaN()}
		if v, ok := ma[k]; ok {
			r.A = v
		}
		if v, ok := mb[k]; ok {
			r.B = v
		}
		t.Rows = append(t.Rows, r)
	}
	return t
}

// compareKeys orders "<stage>/<bench>/<split>/<metric>" keys the way the
// report does: stage (baseline last), benchmark, split, metric.
func compareKeys(x, y string) int {
	px, py := strings.SplitN(x, "/", 4), strings.SplitN(y, "/", 4)
	if len(px) != 4 || len(py) != 4 {
		return strings.Compare(x, y)
	}
	if px[0] != py[0] {
		st := []string{px[0], py[0]}
		sortStages(st)
		if st[0] == px[0] {
			return -1
		}
		return 1
	}
	if c := benchRank(px[1]) - benchRank(py[1]); c != 0 {
		return c
	}
	if c := strings.Compare(px[1], py[1]); c != 0 {
		return c
	}
	if px[2] != py[2] {
		sp := []string{px[2], py[2]}
		sortSplits(sp)
		if sp[0] == px[2] {
			return -1
		}
		return 1
	}
	ms := []string{px[3], py[3]}
	sortMetrics(ms)
	if px[3] == py[3] {
		return 0
	}
	if ms[0] == px[3] {
		return -1
	}
	return 1
}

func fmtCell(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.4f", v)
}

// Print writes the table as aligned text columns: metric, A, B, delta.
func (t Table) Print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "metric\tA\tB\tdelta\t\n")
	fmt.Fprintf(tw, "\t%s\t%s\t\t\n", shortID(t.RunA), shortID(t.RunB))
	for _, r := range t.Rows {
		d := "–"
		if !math.IsNaN(r.Delta()) {
			d = fmt.Sprintf("%+.4f", r.Delta())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", r.Metric, fmtCell(r.A), fmtCell(r.B), d)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("print comparison: %w", err)
	}
	return nil
}

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}
