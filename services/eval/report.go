package eval

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"html/template"
	"image"
	"image/color"
	"image/draw"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/attribute"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/infer"
)

// Report sizes.
const (
	galleryPerKind = 6   // hits and misses each
	attentionMax   = 4   // attention maps
	thumbSide      = 240 // gallery image longer side, pixels
)

// WriteReport renders the run's report, a self-contained HTML file (inline
// CSS, images as data: URIs, loss curves as inline SVG), to out.
func (s *Service) WriteReport(ctx context.Context, runID, out string) error {
	ctx, span := tracer.Start(ctx, "eval.WriteReport")
	defer span.End()
	span.SetAttributes(attribute.String("run_id", runID))
	page, err := s.renderReport(ctx, s.pool, runID)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.WriteFile(out, page, 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// ReportKey is the blob key of a run's report.
func ReportKey(runID string) string { return "reports/" + runID + "/report.html" }

// ReportPath is where Evaluate leaves a copy of a run's report under the
// data dir.
func (s *Service) ReportPath(runID string) string {
	return filepath.Join(s.cfg.DataDir, "reports", runID+".html")
}

// writeReport renders the report inside tx (so that it shows the
// evaluations about to commit), stores it in the blob store and under the
// data dir, and returns its blob key.
func (s *Service) writeReport(ctx context.Context, tx querier, runID string) (string, error) {
	page, err := s.renderReport(ctx, tx, runID)
	if err != nil {
		return "", err
	}
	key := ReportKey(runID)
	if _, _, err := s.cfg.Blob.Put(key, bytes.NewReader(page)); err != nil {
		return "", fmt.Errorf("store report: %w", err)
	}
	if err := os.WriteFile(s.ReportPath(runID), page, 0o644); err != nil {
		return "", fmt.Errorf("write report: %w", err)
	}
	return key, nil
}

type reportData struct {
	RunID, SynthSetID, DatasetID, Generated string
	SummaryCols                             []string
	Summary                                 []summaryRow
	Stages                                  []stageTable
	Losses                                  []lossChart
	GallerySource                           string
	Hits, Misses                            []galleryItem
	Attention                               []galleryItem
	Notes                                   []string
	// RECVersusBaseline says, per stage, whether REC Acc@0.5 is clearly
	// above the fixed box's (CompareRECToBaseline).
	RECVersusBaseline []string
}

type summaryRow struct {
	Bench, Metric, Split string
	Values               []string
	Best                 int // index of the best value, -1 none
}

type stageTable struct {
	Stage  string
	Splits []string
	Rows   []metricRow
}

type metricRow struct {
	Bench, Metric string
	Values        []string
}

type lossChart struct {
	Stage string
	SVG   template.HTML
}

type galleryItem struct {
	Src     template.URL
	Caption string
	Detail  string
	Hit     bool
}

// headline is the metric a benchmark is summarized by.
func headline(bench string) string {
	switch {
	case boxTask(bench):
		return "acc@0.5"
	case bench == BenchDense:
		return "f1"
	case strings.HasPrefix(bench, BenchPOPEPrefix):
		return "f1"
	}
	return "accuracy"
}

var metricOrder = []string{"acc@0.5", "acc@0.25", "acc@0.75", "miou", "center_acc", "accuracy", "precision",
	"recall", "f1", "yes_ratio", "parse_fail", "pairs", "bad_boxes", MetricImageGain, MetricAnswerNLL, "n"}

func sortMetrics(ms []string) {
	rank := func(m string) int {
		if i := slices.Index(metricOrder, m); i >= 0 {
			return i
		}
		return len(metricOrder)
	}
	slices.SortStableFunc(ms, func(a, b string) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return strings.Compare(a, b)
	})
}

// sortStages orders stages with the baseline last.
func sortStages(st []string) {
	slices.SortFunc(st, func(a, b string) int {
		if (a == StageBaseline) != (b == StageBaseline) {
			if a == StageBaseline {
				return 1
			}
			return -1
		}
		return strings.Compare(a, b)
	})
}

func sortSplits(sp []string) {
	rank := func(s string) int {
		if i := slices.Index(DefaultSplits, s); i >= 0 {
			return i
		}
		return len(DefaultSplits)
	}
	slices.SortFunc(sp, func(a, b string) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return strings.Compare(a, b)
	})
}

func fmtMetric(name string, v float64) string {
	if name == "n" || name == "pairs" || name == "bad_boxes" {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func (s *Service) renderReport(ctx context.Context, q querier, runID string) ([]byte, error) {
	ctx, span := tracer.Start(ctx, "eval.renderReport")
	defer span.End()
	evals, err := latestEvaluations(ctx, q, runID)
	if err != nil {
		return nil, fmt.Errorf("render report of run %s: %w", runID, err)
	}
	d := reportData{RunID: runID, Generated: s.cfg.Now().UTC().Format("2006-01-02 15:04:05 UTC")}
	if len(evals) == 0 {
		d.Notes = append(d.Notes, "This run has no evaluations yet.")
	} else {
		d.SynthSetID, d.DatasetID = evals[0].SynthSetID, evals[0].DatasetID
	}
	d.Stages, d.SummaryCols, d.Summary = metricTables(evals)
	for _, r := range CompareRECToBaseline(flatMetrics(evals, true)) {
		d.RECVersusBaseline = append(d.RECVersusBaseline, r.String())
	}

	// The run's facts are what its evaluation requests carried (eval reads
	// no other service's tables).
	facts, err := runFacts(ctx, q, runID)
	if err != nil {
		d.Notes = append(d.Notes, "Loss curves unavailable and images drawn as blank canvases: "+err.Error())
	}
	var lstages []string
	for st := range facts.Losses {
		lstages = append(lstages, st)
	}
	sortStages(lstages)
	for _, st := range lstages {
		d.Losses = append(d.Losses, lossChart{Stage: st, SVG: template.HTML(lossSVG(st, facts.Losses[st]))})
	}
	if len(d.Losses) == 0 && err == nil {
		d.Notes = append(d.Notes, "No training losses were logged for this run.")
	}
	root := facts.DatasetRoot
	if root == "" && err == nil {
		d.Notes = append(d.Notes, "Dataset root unknown, images drawn as blank canvases.")
	}
	if err := s.gallery(ctx, &d, evals, root); err != nil {
		d.Notes = append(d.Notes, "Gallery unavailable: "+err.Error())
	}
	var buf bytes.Buffer
	if err := reportTmpl.Execute(&buf, d); err != nil {
		return nil, fmt.Errorf("render report of run %s: %w", runID, err)
	}
	return buf.Bytes(), nil
}

// metricTables builds the per-stage tables and the headline summary
// (stages as columns, the baseline beside them).
func metricTables(evals []EvaluationRow) ([]stageTable, []string, []summaryRow) {
	byStage := map[string][]EvaluationRow{}
	for _, e := range evals {
		byStage[e.Stage] = append(byStage[e.Stage], e)
	}
	var stages []string
	for st := range byStage {
		stages = append(stages, st)
	}
	sortStages(stages)
	var tables []stageTable
	for _, st := range stages {
		es := byStage[st]
		var splits, benches []string
		val := map[[3]string]float64{}
		metricsOf := map[string]map[string]bool{}
		for _, e := range es {
			if !slices.Contains(splits, e.Split) {
				splits = append(splits, e.Split)
			}
			if metricsOf[e.Benchmark] == nil {
				metricsOf[e.Benchmark] = map[string]bool{}
				benches = append(benches, e.Benchmark)
			}
			for m, v := range e.Metrics {
				metricsOf[e.Benchmark][m] = true
				val[[3]string{e.Benchmark, m, e.Split}] = v
			}
		}
		sortSplits(splits)
		sortBenches(benches)
		t := stageTable{Stage: st, Splits: splits}
		for _, b := range benches {
			var ms []string
			for m := range metricsOf[b] {
				ms = append(ms, m)
			}
			sortMetrics(ms)
			for _, m := range ms {
				r := metricRow{Bench: b, Metric: m}
				for _, sp := range splits {
					if v, ok := val[[3]string{b, m, sp}]; ok {
						r.Values = append(r.Values, fmtMetric(m, v))
					} else {
						r.Values = append(r.Values, "–")
					}
				}
				t.Rows = append(t.Rows, r)
			}
		}
		tables = append(tables, t)
	}

	// Summary: one row per (benchmark, split), one column per stage; the
	// baseline's REC score sits in the REC rows' baseline column.
	type key struct{ bench, split string }
	cell := map[key]map[string]float64{}
	var keys []key
	for _, e := range evals {
		b := e.Benchmark
		if b == BenchRECBaseline {
			b = BenchREC
		}
		k := key{b, e.Split}
		v, ok := e.Metrics[headline(b)]
		if !ok {
			continue
		}
		if cell[k] == nil {
			cell[k] = map[string]float64{}
			keys = append(keys, k)
		}
		cell[k][e.Stage] = v
	}
	slices.SortFunc(keys, func(a, b key) int {
		if c := benchRank(a.bench) - benchRank(b.bench); c != 0 {
			return c
		}
		if c := strings.Compare(a.bench, b.bench); c != 0 {
			return c
		}
		sp := []string{a.split, b.split}
		sortSplits(sp)
		if a.split == b.split {
			return 0
		}
		if sp[0] == a.split {
			return -1
		}
		return 1
	})
	var rows []summaryRow
	for _, k := range keys {
		r := summaryRow{Bench: k.bench, Metric: headline(k.bench), Split: k.split, Best: -1}
		best := math.Inf(-1)
		for i, st := range stages {
			v, ok := cell[k][st]
			if !ok {
				r.Values = append(r.Values, "–")
				continue
			}
			r.Values = append(r.Values, fmtMetric(r.Metric, v))
			if v > best {
				best, r.Best = v, i
			}
		}
		rows = append(rows, r)
	}
	return tables, stages, rows
}

// lossSVG draws one stage's loss curve as an inline SVG line chart.
func lossSVG(stage string, pts []LossPoint) string {
	const w, h, ml, mr, mt, mb = 520.0, 220.0, 56.0, 16.0, 24.0, 34.0
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" class="loss" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" role="img" aria-label="loss %s">`,
		w, h, w, h, html.EscapeString(stage))
	fmt.Fprintf(&sb, `<rect x="0" y="0" width="%.0f" height="%.0f" fill="#fff"/>`, w, h)
	if len(pts) == 0 {
		sb.WriteString(`<text x="20" y="40">no losses logged</text></svg>`)
		return sb.String()
	}
	minS, maxS := pts[0].Step, pts[0].Step
	minL, maxL := math.Inf(1), math.Inf(-1)
	for _, p := range pts {
		minS, maxS = min(minS, p.Step), max(maxS, p.Step)
		if !math.IsNaN(p.Loss) && !math.IsInf(p.Loss, 0) {
			minL, maxL = math.Min(minL, p.Loss), math.Max(maxL, p.Loss)
		}
	}
	if math.IsInf(minL, 1) {
		minL, maxL = 0, 1
	}
	if maxL == minL {
		maxL = minL + 1
	}
	if maxS == minS {
		maxS = minS + 1
	}
	x := func(step int) float64 { return ml + (w-ml-mr)*float64(step-minS)/float64(maxS-minS) }
	y := func(l float64) float64 { return mt + (h-mt-mb)*(1-(l-minL)/(maxL-minL)) }
	fmt.Fprintf(&sb, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444"/>`, ml, h-mb, w-mr, h-mb)
	fmt.Fprintf(&sb, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444"/>`, ml, mt, ml, h-mb)
	for i := 0; i <= 4; i++ {
		l := minL + (maxL-minL)*float64(i)/4
		fmt.Fprintf(&sb, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`, ml, y(l), w-mr, y(l))
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" font-size="11" text-anchor="end">%.3g</text>`, ml-4, y(l)+4, l)
	}
	fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" font-size="11">%d</text>`, ml, h-mb+16, minS)
	fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" font-size="11" text-anchor="end">%d</text>`, w-mr, h-mb+16, maxS)
	fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" font-size="11" text-anchor="middle">step</text>`, (ml+w-mr)/2, h-6)
	fmt.Fprintf(&sb, `<text x="%.1f" y="16" font-size="13" font-weight="bold">%s loss</text>`, ml, html.EscapeString(stage))
	sb.WriteString(`<polyline fill="none" stroke="#1f5fbf" stroke-width="1.5" points="`)
	for i, p := range pts {
		if math.IsNaN(p.Loss) || math.IsInf(p.Loss, 0) {
			continue
		}
		if i > 0 {
			sb.WriteByte(' ')
		}
		fmt.Fprintf(&sb, "%.1f,%.1f", x(p.Step), y(p.Loss))
	}
	sb.WriteString(`"/></svg>`)
	return sb.String()
}

// gallery fills hits, misses and attention maps from the predictions of
// the most advanced stage's REC evaluation (test split preferred).
func (s *Service) gallery(ctx context.Context, d *reportData, evals []EvaluationRow, root string) error {
	_, span := tracer.Start(ctx, "eval.gallery")
	defer span.End()
	var cands []EvaluationRow
	for _, e := range evals {
		if (e.Benchmark == BenchREC || e.Benchmark == BenchCropLocate) && e.Stage != StageBaseline {
			cands = append(cands, e)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	splitRank := map[string]int{"test": 0, "val": 1, "heldout": 2}
	rank := func(e EvaluationRow) [3]int {
		r, ok := splitRank[e.Split]
		if !ok {
			r = 3
		}
		b := 0
		if e.Benchmark != BenchREC {
			b = 1
		}
		return [3]int{b, 0, r}
	}
	slices.SortStableFunc(cands, func(a, b EvaluationRow) int {
		if ra, rb := rank(a), rank(b); ra[0] != rb[0] {
			return ra[0] - rb[0]
		}
		if a.Stage != b.Stage {
			return -strings.Compare(a.Stage, b.Stage) // latest stage first
		}
		return rank(a)[2] - rank(b)[2]
	})
	// The best candidate fills the gallery first; later ones top up hits
	// or misses it lacks (a strong model has few misses on one split).
	for i, e := range cands {
		full := len(d.Hits) >= galleryPerKind && len(d.Misses) >= galleryPerKind && len(d.Attention) >= attentionMax
		if full {
			break
		}
		samples, err := s.readPredictions(e.PredictionsKey)
		if err != nil {
			return err
		}
		where := fmt.Sprintf(" · %s %s/%s", e.Stage, e.Benchmark, e.Split)
		if i == 0 {
			d.GallerySource = fmt.Sprintf("%s, %s, %s split (evaluation %s), topped up from other evaluations where it has too few", e.Stage, e.Benchmark, e.Split, e.ID)
		}
		for _, smp := range samples {
			switch {
			case smp.Correct && len(d.Hits) < galleryPerKind:
				it := s.galleryItem(smp, root, false)
				it.Detail += where
				d.Hits = append(d.Hits, it)
			case !smp.Correct && len(d.Misses) < galleryPerKind:
				it := s.galleryItem(smp, root, false)
				it.Detail += where
				d.Misses = append(d.Misses, it)
			}
			if len(smp.Attention) > 0 && len(d.Attention) < attentionMax {
				it := s.galleryItem(smp, root, true)
				it.Detail += where
				d.Attention = append(d.Attention, it)
			}
		}
	}
	return nil
}

func (s *Service) readPredictions(key string) ([]SampleResult, error) {
	f, err := s.cfg.Blob.Open(key)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return decodeJSONL(b)
}

// galleryItem draws one sample; an image that cannot be loaded is drawn as
// a grey canvas of its size so that the boxes still show.
func (s *Service) galleryItem(smp SampleResult, root string, attention bool) galleryItem {
	caption := strings.Join(strings.Fields(strings.ReplaceAll(smp.Prompt, "<image>", "")), " ")
	it := galleryItem{Hit: smp.Correct, Caption: caption}
	if smp.IoU != nil {
		it.Detail = fmt.Sprintf("IoU %.2f", *smp.IoU)
	}
	if smp.ParseError != "" {
		it.Detail = "no box: " + smp.ParseError
	}
	it.Detail += " · answer " + truncateText(smp.Output, 60)
	var img image.Image
	if len(smp.Images) > 0 {
		loaded, err := infer.LoadImage(root, s.cfg.Blob, smp.Images[0])
		if err == nil {
			img = loaded
		} else {
			it.Detail += " · image unavailable"
			w, h := max(smp.Images[0].Width, 1), max(smp.Images[0].Height, 1)
			canvas := image.NewRGBA(image.Rect(0, 0, w, h))
			draw.Draw(canvas, canvas.Bounds(), image.NewUniform(color.RGBA{200, 200, 200, 255}), image.Point{}, draw.Src)
			img = canvas
		}
	}
	if img == nil {
		return it
	}
	var truth []dataset.Box
	for _, t := range smp.TrueBoxes {
		truth = append(truth, arrBox(t))
	}
	var pred *dataset.Box
	if smp.PredBox != nil {
		b := arrBox(*smp.PredBox)
		pred = &b
	}
	var out image.Image = boxesImage(img, truth, pred, thumbSide)
	if attention {
		if a, ok := attentionImage(img, smp.Attention, truth, pred, thumbSide); ok {
			out = a
		} else {
			it.Detail += " · attention is not a square patch grid"
		}
	}
	if uri, err := dataURI(out); err == nil {
		it.Src = template.URL(uri)
	}
	return it
}

func truncateText(s string, n int) string {
	r := []rune(s)
	if len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}

var reportTmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>groundmesh evaluation report · run {{.RunID}}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d2330;background:#f7f8fa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}.meta{color:#5b6475;font-size:13px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin-bottom:12px}
th,td{border:1px solid #d5d9e0;padding:4px 10px;text-align:right}th{background:#eef1f5}
td.l,th.l{text-align:left}td.best{font-weight:bold;color:#0a6b2d}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;background:#fff;border:2px solid #d5d9e0;border-radius:6px;padding:6px;width:252px}
figure.hit{border-color:#2c9a4b}figure.miss{border-color:#c93030}
figure img{display:block;max-width:240px;max-height:240px;margin:auto}
figcaption{font-size:12px;margin-top:4px;word-wrap:break-word}.d{color:#5b6475}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.notes{color:#8a5a00;font-size:13px}svg.loss{background:#fff;border:1px solid #d5d9e0;margin:0 12px 12px 0}
</style></head><body>
<h1>Evaluation report</h1>
<div class="meta">run {{.RunID}}{{if .SynthSetID}} · synth set {{.SynthSetID}}{{end}}{{if .DatasetID}} · dataset {{.DatasetID}}{{end}} · generated {{.Generated}}</div>
{{if .Notes}}<ul class="notes">{{range .Notes}}<li>{{.}}</li>{{end}}</ul>{{end}}

<h2>Summary: model after each stage vs. fixed-box baseline</h2>
{{if .Summary}}<table id="summary"><thead><tr><th class="l">benchmark</th><th class="l">metric</th><th class="l">split</th>{{range .SummaryCols}}<th>{{.}}</th>{{end}}</tr></thead><tbody>
{{range .Summary}}{{$best := .Best}}<tr><td class="l">{{.Bench}}</td><td class="l">{{.Metric}}</td><td class="l">{{.Split}}</td>{{range $i, $v := .Values}}<td{{if eq $i $best}} class="best"{{end}}>{{$v}}</td>{{end}}</tr>
{{end}}</tbody></table>{{else}}<p>No metrics.</p>{{end}}
{{if .RECVersusBaseline}}<p>REC against the fixed-box baseline, pooled over splits, with Wilson 95% intervals:</p>
<ul id="rec-vs-baseline">{{range .RECVersusBaseline}}<li>{{.}}</li>{{end}}</ul>{{end}}

<h2>Gallery</h2>
<div class="meta">{{if .GallerySource}}From {{.GallerySource}}.{{end}} <span class="legend"><span style="background:#00c800"></span>true box<span style="background:#e60000"></span>predicted box</span></div>
<h3>Hits (IoU ≥ 0.5)</h3>
<div class="grid" id="hits">{{range .Hits}}<figure class="hit">{{if .Src}}<img src="{{.Src}}" alt="hit">{{end}}<figcaption>{{.Caption}}<br><span class="d">{{.Detail}}</span></figcaption></figure>{{else}}<p>None.</p>{{end}}</div>
<h3>Misses</h3>
<div class="grid" id="misses">{{range .Misses}}<figure class="miss">{{if .Src}}<img src="{{.Src}}" alt="miss">{{end}}<figcaption>{{.Caption}}<br><span class="d">{{.Detail}}</span></figcaption></figure>{{else}}<p>None.</p>{{end}}</div>

<h2>Attention of the answer's box tokens over image patches</h2>
{{if .Attention}}<div class="grid" id="attention">{{range .Attention}}<figure class="{{if .Hit}}hit{{else}}miss{{end}}">{{if .Src}}<img src="{{.Src}}" alt="attention">{{end}}<figcaption>{{.Caption}}<br><span class="d">{{.Detail}}</span></figcaption></figure>{{end}}</div>
{{else}}<p>The backend returned no attention maps for these predictions.</p>{{end}}
<h2>Training loss per stage</h2>
<div class="grid">{{range .Losses}}{{.SVG}}{{end}}</div>

<h2>Metrics per stage and split</h2>
<div class="grid">{{range .Stages}}<div><h3>{{.Stage}}</h3>
<table class="metrics" data-stage="{{.Stage}}"><thead><tr><th class="l">benchmark</th><th class="l">metric</th>{{range .Splits}}<th>{{.}}</th>{{end}}</tr></thead><tbody>
{{range .Rows}}<tr><td class="l">{{.Bench}}</td><td class="l">{{.Metric}}</td>{{range .Values}}<td>{{.}}</td>{{end}}</tr>
{{end}}</tbody></table></div>
{{end}}</div>

</body></html>
`))
