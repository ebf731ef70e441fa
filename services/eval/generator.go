package eval

import (
	"context"
	"errors"
	"fmt"
	"image"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// GeneratorConfig configures the production predictor: model.Generator
// over a compute backend.
type GeneratorConfig struct {
	// Backend runs the forward passes (a plugin client or an in-process
	// backend). Required.
	Backend compute.Backend
	// Blob holds checkpoints, the run's tokenizer and crops. Required.
	Blob blob.Store
	// Device is passed to Load; "" is the backend's default.
	Device string
	// Attention asks for attention maps of box answers when the backend
	// can return them.
	Attention bool
	// AttentionAnswers is how many REC answers per checkpoint get attention
	// maps (the report shows a few); the others are answered by the
	// grounding head alone where the model has one, without running the
	// language model, which gives the same boxes. Default 16; -1: all.
	AttentionAnswers int
	// MaxNewText bounds free-text answers (crop names); default 48.
	MaxNewText int
	// MaxNewDense bounds grounded descriptions; default 320.
	MaxNewDense int
	// BatchSize is the backend batch; 0 sends each Predict call as one batch.
	BatchSize int
	// ImageCache is how many decoded images a predictor keeps (records
	// share images); default 256.
	ImageCache int
}

// NewGeneratorFactory returns a PredictorFactory that loads each checkpoint
// into cfg.Backend and answers records with model.Generator: greedy
// decoding, constrained by the task's grammar where it has one (a box for
// REC and crop localisation, yes/no for POPE, a candidate digit for picks),
// free text for names and grounded descriptions.
func NewGeneratorFactory(cfg GeneratorConfig) (PredictorFactory, error) {
	if cfg.Backend == nil {
		return nil, errors.New("generator factory: Backend is required")
	}
	if cfg.Blob == nil {
		return nil, errors.New("generator factory: Blob is required")
	}
	cfg = cfg.withDefaults()
	if cfg.MaxNewText < 0 || cfg.MaxNewDense < 0 || cfg.BatchSize < 0 || cfg.ImageCache < 0 {
		return nil, errors.New("generator factory: negative limit")
	}
	return func(ctx context.Context, ck Checkpoint, run RunInfo) (Predictor, error) {
		ctx, span := tracer.Start(ctx, "eval.openGenerator")
		defer span.End()
		span.SetAttributes(attribute.String("checkpoint_id", ck.ID), attribute.String("stage", ck.Stage))
		if run.TokenizerKey == "" {
			return nil, fmt.Errorf("run %s: no tokenizer recorded", run.RunID)
		}
		cp, err := cfg.Blob.LocalPath(ck.BlobKey)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", ck.ID, err)
		}
		if ck.SHA256 != "" {
			// The request names the checkpoint's content: score that or nothing.
			sum, _, err := blob.FileSHA256(cp)
			if err != nil {
				return nil, fmt.Errorf("checkpoint %s: %w", ck.ID, err)
			}
			if sum != ck.SHA256 {
				return nil, fmt.Errorf("checkpoint %s: blob %s has sha256 %s, the request says %s: %w", ck.ID, ck.BlobKey, sum, ck.SHA256, ErrBadInput)
			}
		}
		tp, err := cfg.Blob.LocalPath(run.TokenizerKey)
		if err != nil {
			return nil, fmt.Errorf("run %s tokenizer: %w", run.RunID, err)
		}
		sess, err := infer.Open(ctx, cfg.Backend, infer.OpenRequest{ModelConfig: run.ModelConfig, TokenizerPath: tp, CheckpointPath: cp, Device: cfg.Device, Dtype: ck.Dtype})
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s of run %s: %w", ck.ID, run.RunID, err)
		}
		return &generatorPredictor{
			gen: sess.Generator, session: sess, cfg: cfg,
			attention: cfg.Attention && sess.CanAttention,
			images:    infer.NewImageCache(run.DatasetRoot, cfg.Blob, cfg.ImageCache),
		}, nil
	}, nil
}

// Generator is what generatorPredictor needs of model.Generator.
type Generator interface {
	Generate(ctx context.Context, prompts []model.Prompt, opts model.GenerateOptions) ([]model.Generation, error)
}

var _ Generator = (*model.Generator)(nil)

// NewGeneratorPredictor wraps a ready Generator (for instance one a test or
// a benchmark built over an in-process backend) as a Predictor. root and bs
// locate the records' images.
func NewGeneratorPredictor(gen Generator, root string, bs blob.Store, cfg GeneratorConfig) Predictor {
	cfg = cfg.withDefaults()
	return &generatorPredictor{gen: gen, cfg: cfg, attention: cfg.Attention, images: infer.NewImageCache(root, bs, cfg.ImageCache)}
}

// withDefaults fills the zero limits: 48 and 320 new tokens, 256 cached
// images, and attention maps for 16 REC answers (more than the report's
// gallery shows).
func (c GeneratorConfig) withDefaults() GeneratorConfig {
	if c.MaxNewText == 0 {
		c.MaxNewText = 48
	}
	if c.MaxNewDense == 0 {
		c.MaxNewDense = 320
	}
	if c.ImageCache == 0 {
		c.ImageCache = 256
	}
	if c.AttentionAnswers == 0 {
		c.AttentionAnswers = 16
	}
	return c
}

type generatorPredictor struct {
	gen       Generator
	session   *infer.Session // nil when not owned
	cfg       GeneratorConfig
	attention bool
	// attended counts the REC answers given attention maps so far.
	attended atomic.Int64
	images   *infer.ImageCache
}

// wantAttention reports whether the next REC answer gets an attention map.
func (p *generatorPredictor) wantAttention() bool {
	if !p.attention {
		return false
	}
	n := p.cfg.AttentionAnswers
	return n < 0 || p.attended.Add(1) <= int64(n)
}

// options picks the decoding of a record's task (infer.Decoding).
func (p *generatorPredictor) options(r model.Record) model.GenerateOptions {
	d := infer.Decoding{MaxNewText: p.cfg.MaxNewText, MaxNewDense: p.cfg.MaxNewDense, BatchSize: p.cfg.BatchSize}
	switch bench := BenchmarkOf(r); {
	case bench == BenchREC:
		// A model with a grounding head answers REC with the head's box.
		d.Attention = p.wantAttention()
		return d.Options(infer.Ground, 0)
	case bench == BenchCropLocate:
		// Crop localization asks about an image, not a phrase: its
		// numbers stay the language model's.
		return d.Options(infer.Locate, 0)
	case strings.HasPrefix(bench, BenchPOPEPrefix):
		return d.Options(infer.YesNo, 0)
	case bench == BenchCropPick || bench == BenchBoxPick:
		// Candidates are numbered from 1 in the prompt; C->I's first
		// image is the full image, not a candidate.
		k := len(r.Images)
		if bench == BenchBoxPick {
			k--
		}
		return d.Options(infer.Pick, k)
	case bench == BenchDense:
		return d.Options(infer.Dense, 0)
	case bench == BenchCropName:
		// A model with a name head names the crop with it.
		return d.Options(infer.Name, 0)
	}
	return d.Options(infer.Text, 0)
}

// Predict implements Predictor: records are grouped by decoding options
// and each group is one Generate call.
func (p *generatorPredictor) Predict(ctx context.Context, recs []model.Record) ([]Prediction, error) {
	type group struct {
		opts model.GenerateOptions
		idx  []int
	}
	groups := map[string]*group{}
	var order []string
	for i, r := range recs {
		o := p.options(r)
		k := infer.OptionsKey(o)
		g, ok := groups[k]
		if !ok {
			g = &group{opts: o}
			groups[k] = g
			order = append(order, k)
		}
		g.idx = append(g.idx, i)
	}
	out := make([]Prediction, len(recs))
	for _, k := range order {
		g := groups[k]
		prompts := make([]model.Prompt, len(g.idx))
		for j, i := range g.idx {
			text, _ := infer.PromptOf(recs[i])
			imgs, err := p.recordImages(recs[i])
			if err != nil {
				return nil, err
			}
			prompts[j] = model.Prompt{Text: text, Images: imgs}
		}
		gens, err := p.gen.Generate(ctx, prompts, g.opts)
		if err != nil {
			return nil, fmt.Errorf("generate (%s): %w", g.opts.Constraint, err)
		}
		if len(gens) != len(prompts) {
			return nil, fmt.Errorf("generate: %d answers for %d prompts", len(gens), len(prompts))
		}
		for j, i := range g.idx {
			out[i] = Prediction{Text: gens[j].Text, Box: gens[j].Box}
			if g.opts.WantAttention {
				// Under the box grammar every answer token is a box token.
				out[i].Attention = gens[j].Attention
			}
		}
	}
	return out, nil
}

// recordImages returns the decoded images a record reads, in order.
func (p *generatorPredictor) recordImages(r model.Record) ([]image.Image, error) {
	imgs := make([]image.Image, len(r.Images))
	for n, ref := range r.Images {
		img, err := p.images.Get(ref)
		if err != nil {
			return nil, fmt.Errorf("record %s: %w", r.ID, err)
		}
		imgs[n] = img
	}
	return imgs, nil
}

// Close unloads the checkpoint when the predictor loaded it.
func (p *generatorPredictor) Close() error {
	if p.session == nil {
		return nil
	}
	return p.session.Close(context.Background())
}

// answerScorer is the optional part of a Generator that scores answers
// teacher forced (model.Generator has it).
type answerScorer interface {
	Score(ctx context.Context, items []model.ScoreItem, batchSize int) ([]model.Score, error)
}

var _ answerScorer = (*model.Generator)(nil)

// Image reliance metrics (benchmarks in imageReliant).
const (
	// MetricAnswerNLL is the mean negative log-likelihood per answer token
	// of the reference answers under their own images, teacher forced.
	MetricAnswerNLL = "answer_nll"
	// MetricImageGain is how much worse (nats per answer token) the
	// reference answers score under another record's image: about 0 when
	// the model does not read the image at all, whatever its answers.
	MetricImageGain = "image_gain"
)

// imageReliant are the benchmarks whose answer depends on the image alone
// given the prompt, which image_gain is measured on.
var imageReliant = map[string]bool{BenchREC: true, BenchCropName: true, BenchCropLocate: true}

// imageReliance scores the records' reference answers under their own
// images and under the images of the next record of the list that reads
// other images (a record without one is left out), and returns
// MetricAnswerNLL and MetricImageGain; none when the generator cannot
// score.
func (p *generatorPredictor) imageReliance(ctx context.Context, recs []model.Record) (map[string]float64, error) {
	sc, ok := p.gen.(answerScorer)
	if !ok {
		return nil, nil
	}
	ctx, span := tracer.Start(ctx, "eval.imageReliance")
	defer span.End()
	keys := make([]string, len(recs)) // the images each record reads
	for i, r := range recs {
		var sb strings.Builder
		for _, ref := range r.Images {
			sb.WriteString(ref.Key())
			sb.WriteByte(0)
		}
		keys[i] = sb.String()
	}
	var own, other []model.ScoreItem
	for i, r := range recs {
		text, ref := infer.PromptOf(r)
		if ref == "" || len(r.Images) == 0 {
			continue
		}
		j := -1
		for k := 1; k < len(recs); k++ {
			if c := (i + k) % len(recs); len(recs[c].Images) == len(r.Images) && keys[c] != keys[i] {
				j = c
				break
			}
		}
		if j < 0 {
			continue
		}
		mine, err := p.recordImages(r)
		if err != nil {
			return nil, err
		}
		theirs, err := p.recordImages(recs[j])
		if err != nil {
			return nil, err
		}
		own = append(own, model.ScoreItem{Prompt: model.Prompt{Text: text, Images: mine}, Answer: ref})
		other = append(other, model.ScoreItem{Prompt: model.Prompt{Text: text, Images: theirs}, Answer: ref})
	}
	span.SetAttributes(attribute.Int("records", len(own)))
	if len(own) == 0 {
		return nil, nil
	}
	perToken := func(items []model.ScoreItem) (float64, error) {
		scores, err := sc.Score(ctx, items, p.cfg.BatchSize)
		if errors.Is(err, model.ErrTooLong) {
			// A prompt and answer that do not fit the model's context
			// (alone, or beside a batch's longest answer) are left out,
			// one by one, not the whole metric. They are left out under
			// both images alike: the token counts do not depend on them.
			scores = scores[:0]
			for _, it := range items {
				s, err := sc.Score(ctx, []model.ScoreItem{it}, 1)
				if errors.Is(err, model.ErrTooLong) {
					continue
				}
				if err != nil {
					return 0, err
				}
				scores = append(scores, s...)
			}
			err = nil
		}
		if err != nil {
			return 0, err
		}
		var nll float64
		var n int
		for _, s := range scores {
			nll += s.NLL
			n += s.Tokens
		}
		return nll / float64(max(n, 1)), nil
	}
	a, err := perToken(own)
	if err != nil {
		return nil, fmt.Errorf("score answers: %w", err)
	}
	b, err := perToken(other)
	if err != nil {
		return nil, fmt.Errorf("score answers under other images: %w", err)
	}
	return map[string]float64{MetricAnswerNLL: a, MetricImageGain: b - a}, nil
}
