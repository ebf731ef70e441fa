package eval

import (
	"context"

	"github.com/groundmesh/groundmesh/internal/events"
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
	// SHA256 is the file's hex sha256 as the request carries it; a
	// predictor that reads the file checks it.
	SHA256 string
	// Backend, when set, serves this checkpoint instead of the run's
	// (an export's backend); Dtype is what it holds the weights in.
	Backend, Dtype string
	// Benchmarks, when set, are the only benchmarks it is scored on.
	Benchmarks []string
	// Objective is what the stage that wrote it minimized
	// (events.CheckpointRef.Objective).
	Objective string
}

// RunInfo is what the evaluator needs to know about a run and the data it
// was trained on: the request's events.RunFacts, never another service's
// tables.
type RunInfo struct {
	RunID      string
	SynthSetID string
	// ManifestKey is the blob key of the synth set's manifest.
	ManifestKey string
	DatasetID   string
	// DatasetRoot is the directory that "image" record paths are relative to.
	DatasetRoot string
	// Backend is the compute backend key the run trained on ("" for the
	// default).
	Backend string
	// ModelConfig is the run's model architecture (JSON of model.Config)
	// and TokenizerKey the blob key of its tokenizer.
	ModelConfig  []byte
	TokenizerKey string
}

// LossPoint is one logged training step.
type LossPoint = events.LossPoint

// RecordReader streams the records of a synth set, all splits, calling fn
// for each; it stops at fn's first error and returns it. It is the synth
// service's shard reader in production.
type RecordReader func(ctx context.Context, run RunInfo, fn func(model.Record) error) error
