package eval

import (
	"context"

	"github.com/groundmesh/groundmesh/model"
)

// Prediction is a model's answer to one record.
type Prediction struct {
	// Text is the decoded answer.
	Text string
	// Box is the box the decoder produced under the box grammar, normalized
	// to the padded square; nil when the answer has none (the scorer then
	// parses Text).
	Box *model.NormBox
	// Attention, when the backend returns it, holds for each token of the
	// answer's box the attention over the first image's patches (row-major,
	// (ImageSize/PatchSize)^2 values, averaged over heads and layers).
	Attention [][]float32
}

// Predictor answers evaluation records in batches. Implementations decide
// the prompt, the images and the decoding (box-constrained for box tasks)
// from each record's task; the result has one Prediction per record, in
// order. A Predictor that also implements io.Closer is closed after use.
type Predictor interface {
	Predict(ctx context.Context, recs []model.Record) ([]Prediction, error)
}

// PredictorFunc adapts a function to Predictor.
type PredictorFunc func(ctx context.Context, recs []model.Record) ([]Prediction, error)

// Predict calls f.
func (f PredictorFunc) Predict(ctx context.Context, recs []model.Record) ([]Prediction, error) {
	return f(ctx, recs)
}

// PredictorFactory opens a Predictor for one checkpoint of a run: in
// production a model.Generator over a compute backend (NewGeneratorFactory),
// in tests anything.
type PredictorFactory func(ctx context.Context, ck Checkpoint, run RunInfo) (Predictor, error)

// Checkpoint identifies a checkpoint to evaluate.
type Checkpoint struct {
	ID      string
	RunID   string
	Stage   string // stage1, stage2, stage3
	Step    int
	BlobKey string // checkpoint file in the blob store
}

// RunInfo is what the evaluator needs to know about a run and the data it
// was trained on.
type RunInfo struct {
	RunID      string
	SynthSetID string
	// ManifestKey is the blob key of the synth set's manifest.
	ManifestKey string
	DatasetID   string
	// DatasetRoot is the directory that "image" record paths are relative to.
	DatasetRoot string
	// ModelConfig is the run's model architecture (JSON of model.Config)
	// and TokenizerKey the blob key of its tokenizer, once training has
	// prepared its data.
	ModelConfig  []byte
	TokenizerKey string
}

// LossPoint is one logged training step.
type LossPoint struct {
	Step int
	Loss float64
}

// Catalog answers questions about data other services own: runs and
// checkpoints (services/train), synth sets (services/synth) and dataset
// versions (services/ingest). The default reads their Postgres tables
// (NewPGCatalog); tests and other deployments may supply their own.
type Catalog interface {
	// Run describes a run and the synth set and dataset it was trained on.
	Run(ctx context.Context, runID string) (RunInfo, error)
	// Checkpoints returns the named checkpoints of a run, or, when ids is
	// empty, the final checkpoint of each of its stages, in stage order.
	Checkpoints(ctx context.Context, runID string, ids []string) ([]Checkpoint, error)
	// Losses returns the logged training loss of each stage of a run.
	Losses(ctx context.Context, runID string) (map[string][]LossPoint, error)
}

// RecordReader streams the records of a synth set, all splits, calling fn
// for each; it stops at fn's first error and returns it. It is the synth
// service's shard reader in production.
type RecordReader func(ctx context.Context, run RunInfo, fn func(model.Record) error) error
