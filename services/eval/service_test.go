package eval

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/services/eval/metrics"
)

type fixture struct {
	svc  *Service
	pool *pgxpool.Pool
	// facts are what an eval request carries about each run.
	facts   map[string]*events.RunFacts
	dataDir string
	blob    *blob.Local
	runA    RunInfo
	runB    RunInfo
	records []model.Record
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	url := store.NewTestDB(t)
	pool, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	dataDir := t.TempDir()
	bs, err := blob.NewLocal(filepath.Join(dataDir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dataDir, "dataset")
	recs := buildWorld(t, root, 1)
	f := &fixture{pool: pool, dataDir: dataDir, blob: bs, records: recs}
	mk := func() RunInfo {
		return RunInfo{RunID: uuid.NewString(), SynthSetID: uuid.NewString(), DatasetID: uuid.NewString(), DatasetRoot: root, ManifestKey: "synth/x/manifest.json"}
	}
	f.runA, f.runB = mk(), mk()
	f.facts = map[string]*events.RunFacts{}
	for _, r := range []RunInfo{f.runA, f.runB} {
		facts := &events.RunFacts{SynthSetID: r.SynthSetID, ManifestKey: r.ManifestKey, DatasetID: r.DatasetID,
			DatasetRoot: r.DatasetRoot, Losses: map[string][]LossPoint{}}
		for si, st := range []string{"stage1", "stage2", "stage3"} {
			facts.Checkpoints = append(facts.Checkpoints, events.CheckpointRef{ID: uuid.NewString(), Stage: st, Step: 100, BlobKey: "ck/" + st})
			for step := 0; step <= 100; step += 5 {
				facts.Losses[st] = append(facts.Losses[st], LossPoint{Step: step, Loss: (4-float64(si))*math.Exp(-float64(step)/40) + 0.5})
			}
		}
		f.facts[r.RunID] = facts
	}
	reader := func(ctx context.Context, run RunInfo, fn func(model.Record) error) error {
		for _, r := range f.records {
			if err := fn(r); err != nil {
				return err
			}
		}
		return nil
	}
	quality := map[string]float64{"stage1": 0.3, "stage2": 0.6, "stage3": 0.85}
	f.svc, err = New(Config{
		DataDir: dataDir, Blob: bs, Predictors: noisyOracle(quality), Records: reader, BatchSize: 5,
		Now: func() time.Time { return time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC) },
	}, pool)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestNewValidates(t *testing.T) {
	pool := &pgxpool.Pool{}
	bs := &blob.Local{Root: t.TempDir()}
	ok := Config{DataDir: t.TempDir(), Blob: bs, Predictors: noisyOracle(nil), Records: func(context.Context, RunInfo, func(model.Record) error) error { return nil }}
	for name, mut := range map[string]func(*Config){
		"no data dir":   func(c *Config) { c.DataDir = "" },
		"no blob":       func(c *Config) { c.Blob = nil },
		"no predictors": func(c *Config) { c.Predictors = nil },
		"no records":    func(c *Config) { c.Records = nil },
		"bad batch":     func(c *Config) { c.BatchSize = -1 },
	} {
		c := ok
		mut(&c)
		if _, err := New(c, pool); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New(ok, nil); err == nil {
		t.Error("nil pool accepted")
	}
	s, err := New(ok, pool)
	if err != nil || s.cfg.BatchSize != DefaultBatchSize {
		t.Fatalf("defaults: %v %+v", err, s)
	}
}

func TestEvaluateRecordsReportsAndCompares(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()

	var calls int
	var last, lastTotal int64
	progress := func(done, total int64, msg string) {
		if done < last {
			t.Errorf("progress went back: %d after %d", done, last)
		}
		calls++
		last, lastTotal = done, total
	}
	req := events.EvalRequested{CorrelationID: "corr-1", RunID: f.runA.RunID, Run: f.facts[f.runA.RunID], Report: true}
	done, err := f.svc.Evaluate(ctx, req, progress)
	if err != nil {
		t.Fatal(err)
	}
	if last != lastTotal || calls < 10 {
		t.Fatalf("progress: %d calls, last %d/%d", calls, last, lastTotal)
	}

	// 3 checkpoints x (3 splits x 8 benchmarks: rec, crop_locate, crop_name,
	// crop_pick, dense, 3 pope) + the baseline on 3 splits.
	wantEvals := 3*3*8 + 3
	if len(done.EvaluationIDs) != wantEvals {
		t.Fatalf("%d evaluations, want %d", len(done.EvaluationIDs), wantEvals)
	}
	var nEval, nMetric int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM evaluations WHERE run_id = $1`, f.runA.RunID).Scan(&nEval); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM eval_metrics m JOIN evaluations e ON e.id = m.evaluation_id WHERE e.run_id = $1`, f.runA.RunID).Scan(&nMetric); err != nil {
		t.Fatal(err)
	}
	if nEval != wantEvals || nMetric < wantEvals*3 {
		t.Fatalf("stored %d evaluations, %d metrics", nEval, nMetric)
	}

	// Every stored row links to its run, checkpoint, stage, synth set and
	// dataset, and every number can be recomputed from its predictions.
	evals, err := latestEvaluations(ctx, f.pool, f.runA.RunID)
	if err != nil {
		t.Fatal(err)
	}
	stageOf := map[string]string{}
	for _, ck := range f.facts[f.runA.RunID].Checkpoints {
		stageOf[ck.ID] = ck.Stage
	}
	acc := map[string]float64{}
	for _, e := range evals {
		if e.SynthSetID != f.runA.SynthSetID || e.DatasetID != f.runA.DatasetID {
			t.Fatalf("evaluation %s lineage columns: %+v", e.ID, e)
		}
		if e.Stage == StageBaseline {
			if e.CheckpointID != "" || e.Benchmark != BenchRECBaseline {
				t.Fatalf("baseline row %+v", e)
			}
		} else if stageOf[e.CheckpointID] != e.Stage {
			t.Fatalf("evaluation %s: checkpoint %s is not of stage %s", e.ID, e.CheckpointID, e.Stage)
		}
		if e.PredictionsKey != "evals/"+e.ID+"/predictions.jsonl" {
			t.Fatalf("predictions key %q", e.PredictionsKey)
		}
		samples, err := f.svc.readPredictions(e.PredictionsKey)
		if err != nil {
			t.Fatal(err)
		}
		if len(samples) != e.Samples || float64(len(samples)) != e.Metrics["n"] {
			t.Fatalf("%s/%s/%s: %d samples, row says %d, n=%v", e.Stage, e.Benchmark, e.Split, len(samples), e.Samples, e.Metrics["n"])
		}
		audit(t, e, samples)
		if v, ok := done.Metrics[e.Stage+"/"+e.Benchmark+"/"+e.Split+"/"+headline(e.Benchmark)]; !ok || v != e.Metrics[headline(e.Benchmark)] {
			t.Fatalf("event metric for %s/%s/%s = %v, row %v", e.Stage, e.Benchmark, e.Split, v, e.Metrics)
		}
		if e.Benchmark == BenchREC || e.Benchmark == BenchRECBaseline {
			acc[e.Stage+"/"+e.Split] = e.Metrics["acc@0.5"]
		}
	}
	if !(acc["stage3/test"] > acc["stage1/test"]) || !(acc["stage3/test"] > acc["baseline/test"]) {
		t.Fatalf("REC acc@0.5 does not rise with quality: %v", acc)
	}

	// Lineage edges and the outbox fact committed with the rows.
	var edges int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM lineage_edges WHERE dst_kind = 'evaluation' AND dst_id = ANY($1)`, done.EvaluationIDs).Scan(&edges); err != nil {
		t.Fatal(err)
	}
	// run, synth set, dataset for every evaluation, plus a checkpoint for all but the 3 baselines.
	if edges != 4*wantEvals-3 {
		t.Fatalf("%d lineage edges into evaluations, want %d", edges, 4*wantEvals-3)
	}
	var payload, meta []byte
	if err := f.pool.QueryRow(ctx, `SELECT payload, metadata FROM outbox WHERE topic = $1`, events.TopicEvaluationComplete).Scan(&payload, &meta); err != nil {
		t.Fatal(err)
	}
	var fact events.EvaluationCompleted
	if err := json.Unmarshal(payload, &fact); err != nil {
		t.Fatal(err)
	}
	if fact.RunID != f.runA.RunID || len(fact.EvaluationIDs) != wantEvals || fact.ReportKey != ReportKey(f.runA.RunID) || !strings.Contains(string(meta), "corr-1") {
		t.Fatalf("fact %+v meta %s", fact, meta)
	}

	// The report Evaluate wrote, and one written again on request, render.
	if _, err := os.Stat(f.svc.ReportPath(f.runA.RunID)); err != nil {
		t.Fatal(err)
	}
	rb, err := f.blob.Open(done.ReportKey)
	if err != nil {
		t.Fatal(err)
	}
	rb.Close()
	out := filepath.Join(f.dataDir, "reports", "again.html")
	if err := f.svc.WriteReport(ctx, f.runA.RunID, out); err != nil {
		t.Fatal(err)
	}
	checkReportRenders(t, out)

	// A second run, better at stage 3 only, compared side by side.
	f.svc.cfg.Predictors = noisyOracle(map[string]float64{"stage1": 0.3, "stage2": 0.6, "stage3": 0.95})
	if _, err := f.svc.Evaluate(ctx, events.EvalRequested{CorrelationID: "corr-2", RunID: f.runB.RunID, Run: f.facts[f.runB.RunID], Splits: []string{"test"}}, nil); err != nil {
		t.Fatal(err)
	}
	tab, err := f.svc.Compare(ctx, f.runA.RunID, f.runB.RunID)
	if err != nil {
		t.Fatal(err)
	}
	var found, onlyA bool
	for _, r := range tab.Rows {
		if r.Metric == "stage3/rec/test/acc@0.5" {
			found = true
			if r.A != acc["stage3/test"] || math.IsNaN(r.B) || math.Abs(r.Delta()-(r.B-r.A)) > 1e-12 {
				t.Fatalf("row %+v", r)
			}
		}
		if strings.Contains(r.Metric, "/val/") && !math.IsNaN(r.A) && math.IsNaN(r.B) {
			onlyA = true
		}
		if strings.HasSuffix(r.Metric, "/n") {
			t.Fatalf("sample count compared: %s", r.Metric)
		}
	}
	if !found || !onlyA {
		t.Fatalf("comparison lacks rows (found %v, val only in A %v)", found, onlyA)
	}
	var buf bytes.Buffer
	if err := tab.Print(&buf); err != nil {
		t.Fatal(err)
	}
	t.Logf("compare:\n%s", firstLines(buf.String(), 12))
	if _, err := f.svc.Compare(ctx, f.runA.RunID, uuid.NewString()); err == nil {
		t.Fatal("comparison with an unevaluated run succeeded")
	}
}

func firstLines(s string, n int) string {
	l := strings.SplitN(s, "\n", n+1)
	return strings.Join(l[:min(n, len(l))], "\n")
}

// audit recomputes an evaluation's headline metric from its stored
// predictions with the metrics package, independently of the runner.
func audit(t *testing.T, e EvaluationRow, samples []SampleResult) {
	t.Helper()
	var want float64
	switch {
	case boxTask(e.Benchmark):
		var hits int
		for _, s := range samples {
			if s.IoU != nil && *s.IoU >= 0.5 {
				hits++
			}
			if s.IoU == nil || (s.PredBox == nil) != (s.ParseError != "") {
				t.Fatalf("%s: inconsistent sample %+v", e.ID, s)
			}
			if s.PredBox != nil {
				if iou := metrics.IoU(arrBox(*s.PredBox), arrBox(s.TrueBoxes[0])); math.Abs(iou-*s.IoU) > 1e-12 {
					t.Fatalf("%s: stored IoU %v, recomputed %v", s.ID, *s.IoU, iou)
				}
			}
		}
		want = float64(hits) / float64(len(samples))
	case strings.HasPrefix(e.Benchmark, BenchPOPEPrefix):
		var answers, labels []string
		for _, s := range samples {
			answers, labels = append(answers, s.Output), append(labels, s.Truth)
		}
		r, err := metrics.POPE(answers, labels)
		if err != nil {
			t.Fatal(err)
		}
		want = r.F1
	case e.Benchmark == BenchDense:
		var a metrics.DenseAccumulator
		for _, s := range samples {
			var truth []metrics.Grounded
			for i, b := range s.TrueBoxes {
				truth = append(truth, metrics.Grounded{Phrase: []string{"red square", "green square", "blue square"}[i], Box: arrBox(b)})
			}
			a.Add(s.Output, truth, s.Images[0].Width, s.Images[0].Height)
		}
		want = a.Result().F1
	default:
		var c int
		for _, s := range samples {
			if s.Correct {
				c++
			}
		}
		want = float64(c) / float64(len(samples))
	}
	if got := e.Metrics[headline(e.Benchmark)]; math.Abs(got-want) > 1e-12 {
		t.Fatalf("%s/%s/%s: stored %s %v, recomputed %v", e.Stage, e.Benchmark, e.Split, headline(e.Benchmark), got, want)
	}
}

// checkReportRenders opens the report in headless Chromium, saves a
// screenshot beside it, and checks what the DOM shows. It fails when
// Chromium is missing.
func checkReportRenders(t *testing.T, htmlPath string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	shot := strings.TrimSuffix(htmlPath, ".html") + ".png"
	dom, err := Screenshot(ctx, htmlPath, shot)
	if err != nil {
		t.Fatalf("render report in chromium: %v", err)
	}
	for _, want := range []string{`id="summary"`, `class="metrics"`, `data-stage="stage1"`, `data-stage="stage3"`, `data-stage="baseline"`,
		`id="hits"`, `id="misses"`, `id="attention"`, "rec_baseline", "pope_adversarial", `id="rec-vs-baseline"`} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered DOM lacks %s", want)
		}
	}
	if n := strings.Count(dom, "<img"); n < 2*galleryPerKind+1 {
		t.Errorf("rendered DOM has %d <img>, want at least %d", n, 2*galleryPerKind+1)
	}
	if n := strings.Count(dom, `src="data:image/png;base64,`); n < 2*galleryPerKind+1 {
		t.Errorf("%d images are inline data: URIs", n)
	}
	if n := strings.Count(dom, "<svg"); n < 3 {
		t.Errorf("rendered DOM has %d <svg> loss charts, want 3", n)
	}
	if n := strings.Count(dom, "<polyline"); n < 3 {
		t.Errorf("rendered DOM has %d loss curves, want 3", n)
	}
	if strings.Contains(dom, "ZgotmplZ") {
		t.Error("template refused a URL")
	}
	fp, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer fp.Close()
	img, err := png.Decode(fp)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 1000 || b.Dy() < 1500 {
		t.Fatalf("screenshot is %v", b)
	}
	// The page is not blank: count pixels of the gallery's red and green box
	// colours and of anything that is not background.
	var red, green int
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			r, g, bl = r>>8, g>>8, bl>>8
			if r > 200 && g < 40 && bl < 40 {
				red++
			}
			if g > 180 && r < 40 && bl < 40 {
				green++
			}
		}
	}
	if red < 50 || green < 50 {
		t.Errorf("screenshot shows %d red and %d green box pixels", red, green)
	}
	t.Logf("report %s, screenshot %s", htmlPath, shot)
	if dir := os.Getenv("EVAL_REPORT_ARTIFACTS"); dir != "" {
		copyFile(t, htmlPath, filepath.Join(dir, "report.html"))
		copyFile(t, shot, filepath.Join(dir, "report.png"))
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
}

func TestEvaluateIsOneTransaction(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	orig := addOutbox
	addOutbox = func(context.Context, pgx.Tx, string, any, map[string]string) error { return errors.New("bus down") }
	defer func() { addOutbox = orig }()
	_, err := f.svc.Evaluate(ctx, events.EvalRequested{RunID: f.runA.RunID, Run: f.facts[f.runA.RunID], Splits: []string{"val"}, MaxSamples: 2}, nil)
	if err == nil || !strings.Contains(err.Error(), "bus down") {
		t.Fatalf("err = %v", err)
	}
	var n, edges int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM evaluations`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM lineage_edges`).Scan(&edges); err != nil {
		t.Fatal(err)
	}
	if n != 0 || edges != 0 {
		t.Fatalf("failed evaluation left %d rows, %d edges", n, edges)
	}
}

func TestEvaluateOptions(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	stage2 := f.facts[f.runA.RunID].Checkpoints[1]
	factsA := f.facts[f.runA.RunID]
	done, err := f.svc.Evaluate(ctx, events.EvalRequested{RunID: f.runA.RunID, Run: factsA, CheckpointIDs: []string{stage2.ID}, Splits: []string{"test"}, MaxSamples: 4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	evals, err := latestEvaluations(ctx, f.pool, f.runA.RunID)
	if err != nil {
		t.Fatal(err)
	}
	if len(evals) != 9 || len(done.EvaluationIDs) != 9 {
		t.Fatalf("%d evaluations", len(evals))
	}
	for _, e := range evals {
		if e.Split != "test" || (e.Stage != "stage2" && e.Stage != StageBaseline) || e.Samples > 4 {
			t.Fatalf("evaluation %+v", e)
		}
	}
	if done.ReportKey != "" {
		t.Fatal("report written without being asked")
	}
	// A benchmark named in MaxSamplesBy takes its own cap; the others keep
	// MaxSamples.
	if _, err := f.svc.Evaluate(ctx, events.EvalRequested{RunID: f.runA.RunID, Run: factsA, CheckpointIDs: []string{stage2.ID}, Splits: []string{"test"},
		MaxSamples: 4, MaxSamplesBy: map[string]int{BenchREC: 1}}, nil); err != nil {
		t.Fatal(err)
	}
	if evals, err = latestEvaluations(ctx, f.pool, f.runA.RunID); err != nil {
		t.Fatal(err)
	}
	var others int
	for _, e := range evals {
		switch {
		case e.Benchmark == BenchREC && e.Samples != 1:
			t.Errorf("rec with max_samples_by 1: %d samples", e.Samples)
		case e.Benchmark != BenchREC && e.Samples > 1:
			others++
		}
	}
	if others == 0 {
		t.Error("max_samples_by capped benchmarks it does not name")
	}
	// A valid config whose hash the request states wrongly.
	validConfig, err := json.Marshal(model.DefaultConfig(1000))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := model.ConfigSHA256(validConfig); err != nil {
		t.Fatal(err)
	}
	for name, req := range map[string]events.EvalRequested{
		"no run":            {Run: factsA},
		"no facts":          {RunID: uuid.NewString()},
		"bad checkpoint":    {RunID: f.runA.RunID, Run: factsA, CheckpointIDs: []string{uuid.NewString()}},
		"no checkpoints":    {RunID: f.runA.RunID, Run: &events.RunFacts{ManifestKey: factsA.ManifestKey}},
		"no manifest":       {RunID: f.runA.RunID, Run: &events.RunFacts{Checkpoints: factsA.Checkpoints}},
		"config hash":       {RunID: f.runA.RunID, Run: &events.RunFacts{ManifestKey: factsA.ManifestKey, Checkpoints: factsA.Checkpoints, ModelConfig: validConfig, ModelConfigSHA256: "abc"}},
		"checkpoint no key": {RunID: f.runA.RunID, Run: &events.RunFacts{ManifestKey: factsA.ManifestKey, Checkpoints: []events.CheckpointRef{{ID: "x", Stage: "stage1"}}}},
		"negative max":      {RunID: f.runA.RunID, Run: factsA, MaxSamples: -1},
		"negative max_by":   {RunID: f.runA.RunID, Run: factsA, MaxSamplesBy: map[string]int{"rec": -1}},
	} {
		if _, err := f.svc.Evaluate(ctx, req, nil); !errors.Is(err, ErrBadInput) {
			t.Errorf("%s: err = %v, want bad input", name, err)
		}
	}
	if _, err := f.svc.Evaluate(ctx, events.EvalRequested{RunID: f.runA.RunID, Run: factsA, Splits: []string{"nowhere"}}, nil); err == nil {
		t.Error("split without items: accepted")
	}
	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.svc.Evaluate(ctx2, events.EvalRequested{RunID: f.runA.RunID, Run: factsA}, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

// TestEvaluateFromEventAlone proves that eval needs nothing but the
// request: with the tables of services/train, synth and ingest gone from
// its database, a complete EvalRequested is scored, recorded and reported
// (loss curves and images included), and a report rendered later from
// eval's own tables still has them.
func TestEvaluateFromEventAlone(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, `DROP TABLE model_exports, train_metrics, checkpoints, run_stages, runs, synth_sets,
		dataset_rejects, dataset_files, dataset_versions, datasets`); err != nil {
		t.Fatal(err)
	}
	run := f.runA.RunID
	if _, err := f.svc.Evaluate(ctx, events.EvalRequested{CorrelationID: "c-bare", RunID: run, Splits: []string{"test"}}, nil); !errors.Is(err, ErrBadInput) ||
		!strings.Contains(err.Error(), "carries no run facts") {
		t.Fatalf("request without facts: err = %v, want bad input naming the missing facts", err)
	}
	// The request as it travels: through JSON.
	b, err := json.Marshal(events.EvalRequested{CorrelationID: "c-1", RunID: run, Run: f.facts[run], Splits: []string{"test"}, MaxSamples: 6, Report: true})
	if err != nil {
		t.Fatal(err)
	}
	var req events.EvalRequested
	if err := json.Unmarshal(b, &req); err != nil {
		t.Fatal(err)
	}
	done, err := f.svc.Evaluate(ctx, req, nil)
	if err != nil {
		t.Fatalf("evaluate from the event alone: %v", err)
	}
	// Three checkpoints and the baseline, each linked to the request's
	// synth set and dataset.
	evals, err := latestEvaluations(ctx, f.pool, run)
	if err != nil {
		t.Fatal(err)
	}
	if len(evals) == 0 || len(evals) != len(done.EvaluationIDs) {
		t.Fatalf("%d evaluations recorded, %d answered", len(evals), len(done.EvaluationIDs))
	}
	stages := map[string]bool{}
	for _, e := range evals {
		stages[e.Stage] = true
		if e.SynthSetID != f.runA.SynthSetID || e.DatasetID != f.runA.DatasetID {
			t.Fatalf("evaluation %s: synth set %q dataset %q, want the request's", e.ID, e.SynthSetID, e.DatasetID)
		}
	}
	if len(stages) != 4 {
		t.Fatalf("stages evaluated: %v", stages)
	}
	later := filepath.Join(t.TempDir(), "later.html")
	if err := f.svc.WriteReport(ctx, run, later); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{f.svc.ReportPath(run), later} {
		page, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`aria-label="loss stage1"`, `aria-label="loss stage3"`, f.runA.SynthSetID} {
			if !strings.Contains(string(page), want) {
				t.Errorf("%s: no %q", filepath.Base(path), want)
			}
		}
		for _, bad := range []string{"Loss curves unavailable", "Dataset root unknown"} {
			if strings.Contains(string(page), bad) {
				t.Errorf("%s: says %q", filepath.Base(path), bad)
			}
		}
	}
}

// relianceCounter is a predictor that also scores image reliance,
// counting the records each pass reads by benchmark.
type relianceCounter struct {
	Predictor
	mu   sync.Mutex
	read map[string][]int
}

func (p *relianceCounter) imageReliance(_ context.Context, recs []model.Record) (map[string]float64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(recs) > 0 {
		b := BenchmarkOf(recs[0])
		p.read[b] = append(p.read[b], len(recs))
	}
	return map[string]float64{MetricAnswerNLL: 1, MetricImageGain: 0.5}, nil
}

// TestRelianceReadsMaxSamples: the image reliance pass (the language
// model's, two teacher-forced passes a record) reads at most max_samples
// records of a benchmark and split, also where max_samples_by lets the
// head answer more, and none for a grounder-objective checkpoint.
func TestRelianceReadsMaxSamples(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	rc := &relianceCounter{read: map[string][]int{}}
	inner := f.svc.cfg.Predictors
	f.svc.cfg.Predictors = func(ctx context.Context, ck Checkpoint, run RunInfo) (Predictor, error) {
		p, err := inner(ctx, ck, run)
		rc.Predictor = p
		return rc, err
	}
	facts := *f.facts[f.runA.RunID]
	facts.Checkpoints = slices.Clone(facts.Checkpoints)
	facts.Checkpoints[0].Objective = compute.ObjectiveGrounder
	req := events.EvalRequested{RunID: f.runA.RunID, Run: &facts, CheckpointIDs: []string{facts.Checkpoints[0].ID}, Splits: []string{"test"},
		MaxSamples: 2, MaxSamplesBy: map[string]int{BenchREC: 6}}
	if _, err := f.svc.Evaluate(ctx, req, nil); err != nil {
		t.Fatal(err)
	}
	if len(rc.read) != 0 {
		t.Fatalf("a grounder-objective checkpoint's reliance read %v", rc.read)
	}
	req.CheckpointIDs = []string{facts.Checkpoints[1].ID}
	if _, err := f.svc.Evaluate(ctx, req, nil); err != nil {
		t.Fatal(err)
	}
	evals, err := latestEvaluations(ctx, f.pool, f.runA.RunID)
	if err != nil {
		t.Fatal(err)
	}
	recScored := 0
	for _, e := range evals {
		if e.Benchmark == BenchREC && e.Stage == "stage2" {
			recScored = e.Samples
			if e.Metrics[MetricImageGain] != 0.5 {
				t.Errorf("rec metrics %v: no image_gain", e.Metrics)
			}
		}
	}
	if recScored <= 2 {
		t.Fatalf("rec scored on %d records: the fixture needs more than max_samples", recScored)
	}
	if got := rc.read[BenchREC]; !slices.Equal(got, []int{2}) {
		t.Fatalf("rec's reliance read %v records, want [2] (max_samples, not max_samples_by's %d)", got, recScored)
	}
	for b, ns := range rc.read {
		for _, n := range ns {
			if n > 2 {
				t.Errorf("%s's reliance read %d records", b, n)
			}
		}
	}
}
