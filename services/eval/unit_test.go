package eval

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

func TestBenchmarkOf(t *testing.T) {
	idx := 1
	cases := []struct {
		r    model.Record
		want string
	}{
		{model.Record{Task: "rec", Direction: "T->C"}, BenchREC},
		{model.Record{Task: "crop_name", Direction: "I->T"}, BenchCropName},
		{model.Record{Task: "crop_locate", Direction: "I->C"}, BenchCropLocate},
		{model.Record{Task: "crop_pick", Direction: "T->I", Answer: model.Answer{Index: &idx}}, BenchCropPick},
		{model.Record{Task: "box_pick", Direction: "C->I"}, BenchBoxPick},
		{model.Record{Task: "dense"}, BenchDense},
		{model.Record{Task: "pope", Answer: model.Answer{PopeSplit: "adversarial"}}, "pope_adversarial"},
		{model.Record{Task: "pope"}, "pope_random"},
		{model.Record{Task: "reg", Direction: "C->T"}, ""},
		{model.Record{Task: "caption"}, ""},
	}
	for _, c := range cases {
		if got := BenchmarkOf(c.r); got != c.want {
			t.Errorf("BenchmarkOf(%s %s) = %q, want %q", c.r.Task, c.r.Direction, got, c.want)
		}
	}
}

func TestMeanBoxAndFixedPredictor(t *testing.T) {
	var m MeanBox
	if m.Box() != CentreBox {
		t.Fatal("empty mean is not the centre box")
	}
	// 200x100: padded frame shifts y by 50, side 200.
	m.Add(dataset.Box{X1: 0, Y1: 0, X2: 100, Y2: 100}, 200, 100)  // (0, .25, .5, .75)
	m.Add(dataset.Box{X1: 100, Y1: 0, X2: 200, Y2: 50}, 200, 100) // (.5, .25, 1, .5)
	m.Add(dataset.Box{X1: 10, Y1: 10, X2: 20, Y2: 20}, 0, 100)    // ignored: no size
	want := model.NormBox{0.25, 0.25, 0.75, 0.625}
	got := m.Box()
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-12 {
			t.Fatalf("mean = %v, want %v", got, want)
		}
	}
	preds, err := FixedBoxPredictor{Box: want}.Predict(context.Background(), make([]model.Record, 3))
	if err != nil || len(preds) != 3 || preds[2].Text != "[0.250, 0.250, 0.750, 0.625]" || *preds[0].Box != want {
		t.Fatalf("preds = %+v, %v", preds, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (FixedBoxPredictor{}).Predict(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
}

func recRecord(id string, box dataset.Box, w, h int) model.Record {
	return model.Record{
		ID: id, Task: "rec", Direction: "T->C", Split: "test",
		Images:        []model.ImageRef{{Kind: "image", Path: id + ".png", Width: w, Height: h}},
		Conversations: []model.Turn{{From: "human", Value: "<image>\nGive the box of it."}, {From: "gpt", Value: model.FormatBox(model.Normalize(box, w, h))}},
		Answer:        model.Answer{Boxes: [][4]float64{boxArr(box)}},
	}
}

func TestRunBenchmarkScoresAndBatches(t *testing.T) {
	var recs []model.Record
	for i := range 7 {
		recs = append(recs, recRecord(string(rune('a'+i)), dataset.Box{X1: 10, Y1: 10, X2: 60, Y2: 40}, 200, 100))
	}
	var batches []int
	// Answers the reference for even records, garbage for odd ones.
	p := PredictorFunc(func(ctx context.Context, rs []model.Record) ([]Prediction, error) {
		batches = append(batches, len(rs))
		out := make([]Prediction, len(rs))
		for i, r := range rs {
			if (r.ID[0]-'a')%2 == 0 {
				_, ref := infer.PromptOf(r)
				out[i] = Prediction{Text: ref, Attention: [][]float32{{1, 0, 0, 0}, {0, 1, 0, 0}}}
			} else {
				out[i] = Prediction{Text: "somewhere"}
			}
		}
		return out, nil
	})
	steps := 0
	res, err := runBenchmark(context.Background(), p, BenchREC, "test", recs, 3, func(n int) { steps += n })
	if err != nil {
		t.Fatal(err)
	}
	if len(batches) != 3 || batches[0] != 3 || batches[2] != 1 || steps != 7 {
		t.Fatalf("batches %v, steps %d", batches, steps)
	}
	if res.Metrics["n"] != 7 || math.Abs(res.Metrics["acc@0.5"]-4.0/7) > 1e-12 || math.Abs(res.Metrics["parse_fail"]-3.0/7) > 1e-12 {
		t.Fatalf("metrics %v", res.Metrics)
	}
	s0, s1 := res.Samples[0], res.Samples[1]
	if !s0.Correct || s0.PredBox == nil || s0.IoU == nil || *s0.IoU < 0.99 || s0.Benchmark != BenchREC || len(s0.Attention) != 4 || s0.Attention[0] != 0.5 {
		t.Fatalf("sample 0 = %+v", s0)
	}
	if s1.Correct || s1.ParseError == "" || s1.PredBox != nil {
		t.Fatalf("sample 1 = %+v", s1)
	}
	body, err := encodeJSONL(res.Samples)
	if err != nil {
		t.Fatal(err)
	}
	back, err := decodeJSONL(body)
	if err != nil || len(back) != 7 || back[0].ID != "a" || *back[0].IoU != *s0.IoU {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	if bytes.Count(body, []byte("\n")) != 7 {
		t.Fatal("not one line per sample")
	}

	short := PredictorFunc(func(ctx context.Context, rs []model.Record) ([]Prediction, error) { return nil, nil })
	if _, err := runBenchmark(context.Background(), short, BenchREC, "test", recs, 3, nil); err == nil {
		t.Fatal("short prediction slice accepted")
	}
	boom := PredictorFunc(func(ctx context.Context, rs []model.Record) ([]Prediction, error) { return nil, errors.New("boom") })
	if _, err := runBenchmark(context.Background(), boom, BenchREC, "test", recs, 3, nil); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("predictor error: %v", err)
	}
}

func TestScorersOnOtherBenchmarks(t *testing.T) {
	two := 1
	recs := map[string][]model.Record{
		"pope_random": {
			{ID: "p1", Task: "pope", Answer: model.Answer{YesNo: "yes"}},
			{ID: "p2", Task: "pope", Answer: model.Answer{YesNo: "no"}},
		},
		BenchCropName: {
			{ID: "c1", Direction: "I->T", Answer: model.Answer{Text: "small red circle"}},
		},
		BenchCropPick: {
			{ID: "k1", Direction: "T->I", Answer: model.Answer{Index: &two}, Conversations: []model.Turn{{From: "human", Value: "which?"}, {From: "gpt", Value: "Candidate 2."}}},
			{ID: "k2", Direction: "T->I", Answer: model.Answer{Index: &two}},
		},
	}
	answers := map[string]string{"p1": "Yes, there is.", "p2": "Yes", "c1": "It is a small red circle.", "k1": "2", "k2": "Candidate 2"}
	p := PredictorFunc(func(ctx context.Context, rs []model.Record) ([]Prediction, error) {
		out := make([]Prediction, len(rs))
		for i, r := range rs {
			out[i] = Prediction{Text: answers[r.ID]}
		}
		return out, nil
	})
	res, err := runBenchmark(context.Background(), p, "pope_random", "val", recs["pope_random"], 8, nil)
	if err != nil || res.Metrics["accuracy"] != 0.5 || res.Metrics["yes_ratio"] != 1 || res.Metrics["precision"] != 0.5 {
		t.Fatalf("pope %v %v", res.Metrics, err)
	}
	res, err = runBenchmark(context.Background(), p, BenchCropName, "val", recs[BenchCropName], 8, nil)
	if err != nil || res.Metrics["accuracy"] != 1 {
		t.Fatalf("crop_name %v %v", res.Metrics, err)
	}
	// k2 has no reference text: its structured 0-based index 1 is candidate 2.
	res, err = runBenchmark(context.Background(), p, BenchCropPick, "val", recs[BenchCropPick], 8, nil)
	if err != nil || res.Metrics["accuracy"] != 1 {
		t.Fatalf("crop_pick %v %v", res.Metrics, err)
	}
	if _, err := newScorer("nonsense"); err == nil {
		t.Fatal("unknown benchmark scored")
	}
}

func TestValidFor(t *testing.T) {
	if why := validFor(model.Record{}, BenchREC); why == "" {
		t.Fatal("REC record without image accepted")
	}
	r := recRecord("x", dataset.Box{X1: 1, Y1: 1, X2: 5, Y2: 5}, 10, 10)
	if why := validFor(r, BenchREC); why != "" {
		t.Fatal(why)
	}
	if why := validFor(model.Record{Answer: model.Answer{YesNo: "maybe"}}, "pope_random"); why == "" {
		t.Fatal("bad pope label accepted")
	}
}

func TestLossSVG(t *testing.T) {
	svg := lossSVG("stage<1>", []LossPoint{{Step: 0, Loss: 5}, {Step: 10, Loss: 3}, {Step: 20, Loss: math.NaN()}, {Step: 30, Loss: 1}})
	if !strings.HasPrefix(svg, "<svg") || !strings.Contains(svg, "<polyline") || strings.Contains(svg, "stage<1>") || strings.Contains(svg, "NaN") {
		t.Fatalf("svg: %s", svg)
	}
	if strings.Count(strings.SplitN(strings.SplitN(svg, `points="`, 2)[1], `"`, 2)[0], ",") != 3 {
		t.Fatalf("want 3 points: %s", svg)
	}
	if !strings.Contains(lossSVG("s", nil), "no losses") {
		t.Fatal("empty chart")
	}
}

func TestCompareTableAndPrint(t *testing.T) {
	a := []EvaluationRow{
		{Stage: "stage3", Benchmark: BenchREC, Split: "test", Metrics: map[string]float64{"acc@0.5": 0.5, "n": 100}},
		{Stage: StageBaseline, Benchmark: BenchRECBaseline, Split: "test", Metrics: map[string]float64{"acc@0.5": 0.1}},
		{Stage: "stage1", Benchmark: BenchREC, Split: "val", Metrics: map[string]float64{"acc@0.5": 0.2}},
	}
	b := []EvaluationRow{
		{Stage: "stage3", Benchmark: BenchREC, Split: "test", Metrics: map[string]float64{"acc@0.5": 0.75, "n": 100}},
		{Stage: "stage3", Benchmark: "pope_random", Split: "test", Metrics: map[string]float64{"f1": 0.8}},
	}
	tab := compareTable("runA-0000-1111", "runB", a, b)
	var keys []string
	for _, r := range tab.Rows {
		keys = append(keys, r.Metric)
	}
	want := []string{"stage1/rec/val/acc@0.5", "stage3/rec/test/acc@0.5", "stage3/pope_random/test/f1", "baseline/rec_baseline/test/acc@0.5"}
	if strings.Join(keys, " ") != strings.Join(want, " ") {
		t.Fatalf("keys = %v", keys)
	}
	if d := tab.Rows[1].Delta(); math.Abs(d-0.25) > 1e-12 {
		t.Fatalf("delta %v", d)
	}
	if !math.IsNaN(tab.Rows[0].B) || !math.IsNaN(tab.Rows[2].A) {
		t.Fatal("missing values not NaN")
	}
	var buf bytes.Buffer
	if err := tab.Print(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, s := range []string{"metric", "delta", "runA-000", "stage3/rec/test/acc@0.5", "0.5000", "0.7500", "+0.2500", "–"} {
		if !strings.Contains(out, s) {
			t.Errorf("printed table lacks %q:\n%s", s, out)
		}
	}
}

func TestMetricTablesSummary(t *testing.T) {
	evals := []EvaluationRow{
		{Stage: "stage1", Benchmark: BenchREC, Split: "test", Metrics: map[string]float64{"acc@0.5": 0.2, "miou": 0.3, "n": 10}},
		{Stage: "stage2", Benchmark: BenchREC, Split: "test", Metrics: map[string]float64{"acc@0.5": 0.6, "miou": 0.5, "n": 10}},
		{Stage: StageBaseline, Benchmark: BenchRECBaseline, Split: "test", Metrics: map[string]float64{"acc@0.5": 0.1}},
		{Stage: "stage2", Benchmark: BenchREC, Split: "val", Metrics: map[string]float64{"acc@0.5": 0.7}},
	}
	tables, cols, rows := metricTables(evals)
	if strings.Join(cols, ",") != "stage1,stage2,baseline" || len(tables) != 3 {
		t.Fatalf("cols %v, %d tables", cols, len(tables))
	}
	if tables[1].Stage != "stage2" || strings.Join(tables[1].Splits, ",") != "val,test" || tables[1].Rows[0].Metric != "acc@0.5" {
		t.Fatalf("stage2 table %+v", tables[1])
	}
	// Rows: rec/val then rec/test; the test row has the baseline in its last column.
	if len(rows) != 2 || rows[0].Split != "val" || rows[1].Values[2] != "0.100" || rows[1].Best != 1 {
		t.Fatalf("summary %+v", rows)
	}
}

// TestSampleOrderSpreadsOverImages: MaxSamples' first records come from
// many images, not the first few images' records (as ordering by ID gave),
// and the order does not depend on the order records arrive in.
func TestSampleOrderSpreadsOverImages(t *testing.T) {
	var recs []model.Record
	for img := range 40 {
		for j := range 8 {
			recs = append(recs, model.Record{ID: fmt.Sprintf("%06d/rec/%d", img, j)})
		}
	}
	rev := slices.Clone(recs)
	slices.Reverse(rev)
	sampleOrder(recs)
	sampleOrder(rev)
	images := map[string]bool{}
	for i, r := range recs[:40] {
		if rev[i].ID != r.ID {
			t.Fatalf("order depends on input order: %s vs %s at %d", r.ID, rev[i].ID, i)
		}
		images[strings.SplitN(r.ID, "/", 2)[0]] = true
	}
	// By ID the first 40 records are 5 images' records; drawn at random,
	// 40 of 320 records cover about 26 of the 40 images.
	if len(images) < 18 {
		t.Fatalf("the first 40 records come from %d images", len(images))
	}
}

// TestGeneratorRefusesACheckpointThatIsNotTheRequests: the request names
// each checkpoint's sha256, and a file that hashes otherwise is never
// loaded.
func TestGeneratorRefusesACheckpointThatIsNotTheRequests(t *testing.T) {
	bs, err := blob.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sum, _, err := bs.Put("runs/r/stage1/step-2.safetensors", strings.NewReader("weights"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewGeneratorFactory(GeneratorConfig{Backend: computetest.NewToy(computetest.ToyOptions{}), Blob: bs})
	if err != nil {
		t.Fatal(err)
	}
	run := RunInfo{RunID: "r", TokenizerKey: "runs/r/tokenizer.json", ModelConfig: []byte(`{}`)}
	ck := Checkpoint{ID: "ck-1", Stage: "stage1", BlobKey: "runs/r/stage1/step-2.safetensors", SHA256: strings.Repeat("0", 64)}
	_, err = f(context.Background(), ck, run)
	if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "has sha256 "+sum) {
		t.Fatalf("checkpoint with another sha256: err = %v, want bad input naming the file's sha256", err)
	}
}

// TestExportCheckpoints: an export is scored in place of its checkpoint,
// under its own stage, on the export backend; one of a checkpoint not
// scored, without its blob or hash, or of another model config is bad
// input.
func TestExportCheckpoints(t *testing.T) {
	cks := []Checkpoint{{ID: "c1", Stage: "stage1", Step: 10, BlobKey: "k1", SHA256: "s1"}, {ID: "c3", Stage: "stage3", Step: 30, BlobKey: "k3", SHA256: "s3"}}
	run := RunInfo{RunID: "r"}
	good := events.ExportCompleted{CheckpointID: "c3", Format: "gguf", Dtype: "q8_0", BlobKey: "exports/c3/q8_0.gguf", SHA256: "x3", ModelConfigSHA256: "h"}
	req := events.EvalRequested{Run: &events.RunFacts{ModelConfigSHA256: "h"}, Exports: []events.ExportCompleted{good}}
	got, err := exportCheckpoints(req, run, cks)
	if err != nil {
		t.Fatal(err)
	}
	want := Checkpoint{ID: "c3", RunID: "r", Stage: "stage3@gguf-q8_0", Step: 30, BlobKey: "exports/c3/q8_0.gguf", SHA256: "x3", Backend: "ggml", Dtype: "q8_0"}
	if len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for _, c := range []struct {
		name string
		edit func(*events.ExportCompleted)
		msg  string
	}{
		{"not scored", func(x *events.ExportCompleted) { x.CheckpointID = "c9" }, "not among the checkpoints scored"},
		{"no hash", func(x *events.ExportCompleted) { x.SHA256 = "" }, "sha256"},
		{"onnx", func(x *events.ExportCompleted) { x.Format = "onnx" }, `format "onnx"`},
		{"another config", func(x *events.ExportCompleted) { x.ModelConfigSHA256 = "other" }, "is not the run's"},
	} {
		x := good
		c.edit(&x)
		r := req
		r.Exports = []events.ExportCompleted{x}
		if _, err := exportCheckpoints(r, run, cks); !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: err = %v, want bad input naming %q", c.name, err, c.msg)
		}
	}
	r := req
	r.ExportBenchmarks = []string{"rec", "pope_sideways"}
	if _, err := exportCheckpoints(r, run, cks); !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), `"pope_sideways"`) {
		t.Errorf("unknown benchmark: err = %v", err)
	}
	r.ExportBenchmarks = []string{"rec"}
	if got, err := exportCheckpoints(r, run, cks); err != nil || !slices.Equal(got[0].Benchmarks, []string{"rec"}) {
		t.Errorf("export benchmarks: %+v, %v", got, err)
	}
}

// A checkpoint of a stage trained under the grounder objective has an
// untrained language model: it is scored on the head's benchmarks only,
// the others on every benchmark; an unknown objective is bad input.
func TestRequestRunScoresAGrounderStageOnItsHead(t *testing.T) {
	req := events.EvalRequested{RunID: "r", Run: &events.RunFacts{ManifestKey: "m", Checkpoints: []events.CheckpointRef{
		{ID: "c1", Stage: "stage1", Step: 10, BlobKey: "k1", Objective: compute.ObjectiveGrounder},
		{ID: "c2", Stage: "stage2", Step: 20, BlobKey: "k2"},
	}}}
	_, cks, err := requestRun(req)
	if err != nil {
		t.Fatal(err)
	}
	if len(cks) != 2 || !slices.Equal(cks[0].Benchmarks, HeadBenchmarks()) || cks[1].Benchmarks != nil ||
		cks[0].Objective != compute.ObjectiveGrounder || cks[1].Objective != compute.ObjectiveAll {
		t.Fatalf("checkpoints %+v: want stage1 on %v, stage2 on every benchmark", cks, HeadBenchmarks())
	}
	for _, b := range HeadBenchmarks() {
		if !slices.Contains(benchOrder, b) || b == BenchRECBaseline {
			t.Errorf("head benchmark %q is not a scored benchmark", b)
		}
	}
	req.Run.Checkpoints[1].Objective = "everything"
	if _, _, err := requestRun(req); !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), `objective "everything"`) {
		t.Errorf("unknown objective: err = %v", err)
	}
}
