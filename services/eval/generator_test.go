package eval

import (
	"context"
	"fmt"
	"image"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/model"
)

type genCall struct {
	opts    model.GenerateOptions
	prompts []model.Prompt
}

type fakeGenerator struct{ calls []genCall }

func (g *fakeGenerator) Generate(ctx context.Context, prompts []model.Prompt, opts model.GenerateOptions) ([]model.Generation, error) {
	g.calls = append(g.calls, genCall{opts, prompts})
	out := make([]model.Generation, len(prompts))
	for i := range out {
		switch opts.Constraint {
		case model.ConstraintBox:
			b := model.NormBox{0.1, 0.2, 0.3, 0.4}
			out[i] = model.Generation{Text: model.FormatBox(b), Box: &b, Attention: [][]float32{{1, 2}, {3, 4}}}
		case model.ConstraintYesNo:
			out[i].Text = "no"
		case model.ConstraintNone:
			out[i].Text = "a red square"
		default:
			out[i].Text = "2"
		}
	}
	return out, nil
}

func TestGeneratorPredictorPicksDecodingPerTask(t *testing.T) {
	dir := t.TempDir()
	recs := buildWorld(t, filepath.Join(dir, "dataset"), 3)
	bs, err := blob.NewLocal(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	// The crops the records name, as synth would have written them.
	for _, r := range recs {
		for _, im := range r.Images {
			if im.Kind == "crop" {
				src, err := infer.LoadImage(filepath.Join(dir, "dataset"), nil, model.ImageRef{Kind: "image", Path: r.Lineage.ImageID})
				if err != nil {
					t.Fatal(err)
				}
				body, err := encodePNG(src)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := bs.Put(im.Path, strings.NewReader(string(body))); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	var batch []model.Record
	seen := map[string]bool{}
	for _, r := range recs {
		b := BenchmarkOf(r)
		if b != "" && r.Split == "test" && !seen[b] {
			seen[b] = true
			batch = append(batch, r)
		}
	}
	if len(batch) != 8 {
		t.Fatalf("%d benchmarks in the world", len(batch))
	}
	g := &fakeGenerator{}
	p := NewGeneratorPredictor(g, filepath.Join(dir, "dataset"), bs, GeneratorConfig{Attention: true})
	preds, err := p.Predict(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(preds) != len(batch) {
		t.Fatalf("%d predictions", len(preds))
	}
	// One Generate call per distinct decoding: box with attention (rec),
	// box without (crop_locate), yes/no (3 POPE splits in one call), digits
	// 1..3 (pick), free text (name), free text with the dense budget.
	if len(g.calls) != 6 {
		for _, c := range g.calls {
			t.Logf("%s %d %v %d", c.opts.Constraint, c.opts.MaxNew, c.opts.WantAttention, len(c.prompts))
		}
		t.Fatalf("%d Generate calls", len(g.calls))
	}
	for i, r := range batch {
		bench := BenchmarkOf(r)
		var call *genCall
		for k := range g.calls {
			for _, pr := range g.calls[k].prompts {
				if want, _ := infer.PromptOf(r); pr.Text == want && len(pr.Images) == len(r.Images) {
					call = &g.calls[k]
				}
			}
		}
		if call == nil {
			t.Fatalf("%s: prompt not sent with its images", bench)
		}
		for _, im := range call.prompts[0].Images {
			if im == nil || im.Bounds().Dx() == 0 {
				t.Fatalf("%s: empty image", bench)
			}
		}
		c := call.opts
		switch bench {
		case BenchREC:
			if c.Constraint != model.ConstraintBox || !c.WantAttention || preds[i].Box == nil || len(preds[i].Attention) != 2 {
				t.Fatalf("rec: %+v %+v", c, preds[i])
			}
		case BenchCropLocate:
			if c.Constraint != model.ConstraintBox || c.WantAttention || preds[i].Attention != nil {
				t.Fatalf("crop_locate: %+v", c)
			}
		case BenchCropPick:
			if c.Constraint != model.ConstraintDigits(1, 3) || preds[i].Text != "2" {
				t.Fatalf("crop_pick: %v", c.Constraint)
			}
		case BenchDense:
			if c.Constraint != model.ConstraintNone || c.MaxNew != 320 {
				t.Fatalf("dense: %+v", c)
			}
		case BenchCropName:
			if c.Constraint != model.ConstraintNone || c.MaxNew != 48 {
				t.Fatalf("crop_name: %+v", c)
			}
		default:
			if c.Constraint != model.ConstraintYesNo || preds[i].Text != "no" {
				t.Fatalf("%s: %+v", bench, c)
			}
		}
	}
	// A missing image is an error naming the record.
	bad := batch[0]
	bad.Images = []model.ImageRef{{Kind: "image", Path: "missing.png", Width: 1, Height: 1}}
	if _, err := p.Predict(context.Background(), []model.Record{bad}); err == nil || !strings.Contains(err.Error(), bad.ID) {
		t.Fatalf("missing image: %v", err)
	}
	if _, err := NewGeneratorFactory(GeneratorConfig{}); err == nil {
		t.Fatal("factory without backend accepted")
	}
}

// scoringGenerator is a fakeGenerator that can also score: per answer
// token, nll[0] for a prompt and answer under the first image it saw them
// with, nll[1] under any other.
type scoringGenerator struct {
	fakeGenerator
	nll     [2]float64
	items   [][]model.ScoreItem
	first   map[string]image.Image
	tooLong string // a prompt it reports as too long
}

func (g *scoringGenerator) Score(ctx context.Context, items []model.ScoreItem, batchSize int) ([]model.Score, error) {
	for _, it := range items {
		if g.tooLong != "" && it.Prompt.Text == g.tooLong {
			return nil, fmt.Errorf("score: item 0: %w", model.ErrTooLong)
		}
	}
	if g.first == nil {
		g.first = map[string]image.Image{}
	}
	g.items = append(g.items, items)
	out := make([]model.Score, len(items))
	for i, it := range items {
		k := it.Prompt.Text + "\x00" + it.Answer
		if _, ok := g.first[k]; !ok {
			g.first[k] = it.Prompt.Images[0]
		}
		v := g.nll[0]
		if g.first[k] != it.Prompt.Images[0] {
			v = g.nll[1]
		}
		n := len(it.Answer)
		out[i] = model.Score{NLL: v * float64(n), Tokens: n}
	}
	return out, nil
}

// TestImageReliance: the answers are scored under their own images, then
// under another record's, with the same prompts and answers; the metrics
// are the per-token NLL and the difference.
func TestImageReliance(t *testing.T) {
	dir := t.TempDir()
	recs := buildWorld(t, filepath.Join(dir, "dataset"), 3)
	var rec []model.Record
	for _, r := range recs {
		if BenchmarkOf(r) == BenchREC {
			rec = append(rec, r)
		}
	}
	if len(rec) < 3 {
		t.Fatalf("%d REC records", len(rec))
	}
	g := &scoringGenerator{nll: [2]float64{0.5, 2}}
	p := NewGeneratorPredictor(g, filepath.Join(dir, "dataset"), nil, GeneratorConfig{}).(*generatorPredictor)
	m, err := p.imageReliance(context.Background(), rec)
	if err != nil {
		t.Fatal(err)
	}
	if m[MetricAnswerNLL] != 0.5 || m[MetricImageGain] != 1.5 {
		t.Fatalf("metrics %v, want answer_nll 0.5 and image_gain 1.5", m)
	}
	if len(g.items) != 2 || len(g.items[0]) != len(rec) || len(g.items[1]) != len(rec) {
		t.Fatalf("score calls %d", len(g.items))
	}
	for i, r := range rec {
		own, other := g.items[0][i], g.items[1][i]
		text, ref := infer.PromptOf(r)
		if own.Prompt.Text != text || other.Prompt.Text != text || own.Answer != ref || other.Answer != ref {
			t.Fatalf("record %s: prompts or answers differ between the two scorings", r.ID)
		}
		if own.Prompt.Images[0] == other.Prompt.Images[0] {
			t.Fatalf("record %s: scored under its own image twice", r.ID)
		}
	}
	// A record too long to score is left out, not the metric.
	long := &scoringGenerator{nll: [2]float64{0.5, 2}}
	long.tooLong, _ = infer.PromptOf(rec[0])
	pl := NewGeneratorPredictor(long, filepath.Join(dir, "dataset"), nil, GeneratorConfig{}).(*generatorPredictor)
	m, err = pl.imageReliance(context.Background(), rec)
	if err != nil || m[MetricImageGain] != 1.5 {
		t.Fatalf("with a record too long: %v, %v", m, err)
	}
	// A generator that cannot score yields no metrics.
	plain := NewGeneratorPredictor(&fakeGenerator{}, filepath.Join(dir, "dataset"), nil, GeneratorConfig{}).(*generatorPredictor)
	if m, err := plain.imageReliance(context.Background(), rec); m != nil || err != nil {
		t.Fatalf("plain generator: metrics %v err %v", m, err)
	}
}

// Only the first AttentionAnswers REC answers ask for attention maps; the
// rest go without, in a call of their own (head-only where the model has
// a head), with the same boxes.
func TestGeneratorPredictorBoundsAttentionAnswers(t *testing.T) {
	dir := t.TempDir()
	recs := buildWorld(t, filepath.Join(dir, "dataset"), 6)
	var rec []model.Record
	for _, r := range recs {
		if BenchmarkOf(r) == BenchREC {
			rec = append(rec, r)
		}
	}
	if len(rec) < 5 {
		t.Fatalf("%d REC records in the world", len(rec))
	}
	rec = rec[:5]
	g := &fakeGenerator{}
	p := NewGeneratorPredictor(g, filepath.Join(dir, "dataset"), nil, GeneratorConfig{Attention: true, AttentionAnswers: 2})
	preds, err := p.Predict(context.Background(), rec[:3])
	if err != nil {
		t.Fatal(err)
	}
	more, err := p.Predict(context.Background(), rec[3:])
	if err != nil {
		t.Fatal(err)
	}
	preds = append(preds, more...)
	for i, pr := range preds {
		if want := i < 2; (len(pr.Attention) > 0) != want || pr.Box == nil {
			t.Fatalf("answer %d: attention %v, box %v; want attention: %v", i, pr.Attention, pr.Box, want)
		}
	}
	var with, without int
	for _, c := range g.calls {
		if c.opts.WantAttention {
			with += len(c.prompts)
		} else {
			without += len(c.prompts)
		}
	}
	if with != 2 || without != 3 {
		t.Fatalf("%d prompts asked for attention, %d not; want 2 and 3", with, without)
	}
}
