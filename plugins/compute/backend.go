// Package compute is the whole compute plugin contract: the Go interface
// every backend implements (pure-Go GoMLX, libtorch, ONNX Runtime, ggml),
// the go-plugin handshake and plugin set, the gRPC client and server
// (proto/computev1), Serve, the host-side supervisor, and the conformance
// suite every backend must pass.
//
// Backends do tensor compute only. Tokenization, prompt templates, image
// preprocessing, decoding and box parsing live once, on the host, in
// model. The contract therefore speaks in token ids, preprocessed
// image tensors and logits, which a C++ libtorch process, an ONNX Runtime
// session and a quantized ggml graph can all serve.
package compute

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// ProtocolVersion is the major version of the contract; it is also the
// version of the proto package (computev1).
const ProtocolVersion = 1

// Backend is the compute contract. Every method takes ctx first; a crashed
// plugin surfaces as an error wrapping ErrPluginCrashed.
type Backend interface {
	// Describe reports the backend, its version, devices and capabilities.
	Describe(ctx context.Context) (Description, error)
	// Train runs one training stage over tokenized shards, calling progress
	// for every logged step and every saved checkpoint. It returns when the
	// stage's steps are done, ctx is cancelled, or progress returns an error.
	Train(ctx context.Context, req TrainRequest, progress func(TrainProgress) error) (TrainResult, error)
	// Load loads a checkpoint for inference and returns a session id.
	Load(ctx context.Context, req LoadRequest) (LoadResult, error)
	// Prefill runs a batch of prompts (tokens plus images) through the model,
	// fills a KV cache and returns the logits of each sequence's last position.
	Prefill(ctx context.Context, req PrefillRequest) (ForwardResult, error)
	// Decode appends one token per sequence to an existing KV cache and
	// returns the next-token logits.
	Decode(ctx context.Context, req DecodeRequest) (ForwardResult, error)
	// Generate decodes an answer per sequence greedily under a grammar,
	// inside the backend: one call instead of a Prefill and a Decode per
	// token. A backend that does not declare FeatureGenerate returns an
	// error wrapping ErrUnimplemented, and hosts run the same loop over
	// Prefill and Decode themselves (model.DecodeLoop).
	Generate(ctx context.Context, req GenerateRequest) (GenerateResult, error)
	// ReleaseCache frees a KV cache.
	ReleaseCache(ctx context.Context, session, cacheID string) error
	// Unload frees a session.
	Unload(ctx context.Context, session string) error
}

// Description says what a backend is and can do.
type Description struct {
	Backend      string   // "gomlx", "libtorch", "onnx", "ggml"
	Version      string   // backend build version
	Devices      []string // e.g. "cpu", "cuda:0"
	CanTrain     bool
	CanAttention bool     // Prefill can return attention maps
	Dtypes       []string // e.g. "float32", "q8_0"
	// Features are the model architecture options the backend implements,
	// by their model config names (model.Config.Features), and the
	// training objectives besides ObjectiveAll it implements
	// (ObjectiveFeature); a host refuses a config or an objective that
	// needs another before any work starts.
	Features []string
}

// TrainRequest describes one training stage. Paths are local file paths
// that the host and the plugin both see (the blob store's local directory).
type TrainRequest struct {
	RunID       string
	Stage       string // "stage1", "stage2", "stage3"
	ModelConfig []byte // JSON of model.Config
	// InitCheckpoint is the checkpoint to start from (the previous stage's
	// last one); empty means initialize from Seed.
	InitCheckpoint string
	// ResumeCheckpoint, when set, is a checkpoint of this same stage to resume
	// from: weights, optimizer state and step count all continue.
	ResumeCheckpoint string
	Shards           []string // tokenized safetensors shards (see model)
	// Trainable selects parameters by canonical-name prefix; empty means all.
	Trainable []string
	// Frozen excludes parameters by prefix, applied after Trainable.
	Frozen          []string
	Steps           int // total steps of the stage (a resumed run continues to this count)
	BatchSize       int
	LearningRate    float64 // peak learning rate
	WarmupSteps     int
	WeightDecay     float64
	Seed            int64
	LogEvery        int    // report progress every N steps
	CheckpointEvery int    // save a checkpoint every N steps (and at the end)
	CheckpointDir   string // where the plugin writes checkpoint files
	// Objective is what the stage minimizes: ObjectiveAll ("") or
	// ObjectiveGrounder. A backend refuses one it does not implement.
	Objective string
}

// Training objectives (TrainRequest.Objective).
const (
	// ObjectiveAll is the answer's cross-entropy plus every auxiliary loss
	// the model config turns on.
	ObjectiveAll = ""
	// ObjectiveGrounder is model.Config.Grounder's loss alone: the language
	// model is not run, and only the parameters the grounding encoder and
	// head read (model.GrounderReads) are trained; the rest are carried
	// through unchanged. A stage of it trains the encoder several times
	// faster per sample than the whole model.
	ObjectiveGrounder = "grounder"
)

// ObjectiveFeature is the name under which a backend declares, among its
// Description.Features, that it implements a training objective other
// than ObjectiveAll: "objective:" and the objective.
func ObjectiveFeature(objective string) string { return "objective:" + objective }

// TrainProgress is one progress report. Checkpoint is set when a
// checkpoint was just written.
type TrainProgress struct {
	Step         int
	Loss         float64
	LearningRate float64
	TokensPerSec float64
	Checkpoint   *Checkpoint
}

// Checkpoint is a checkpoint file written by a backend.
type Checkpoint struct {
	Path   string
	Step   int
	Loss   float64
	SHA256 string // hex sha256 of the file
	Bytes  int64
}

// TrainResult summarizes a finished stage.
type TrainResult struct {
	Final     Checkpoint
	Steps     int
	FirstLoss float64
	LastLoss  float64
	FLOPsStep float64 // model FLOPs per training step (forward + backward)
}

// LoadRequest loads a checkpoint for inference.
type LoadRequest struct {
	ModelConfig []byte
	Checkpoint  string
	Device      string // "" = backend default
	// Dtype is what the weights are held and computed in, one of
	// Description.Dtypes ("float32", "float16", "q8_0", ...); "" means
	// DtypeFloat32. A backend refuses, with ErrInvalidArgument naming the
	// dtypes it declares, one it does not implement.
	Dtype string
}

// DtypeFloat32 is the dtype every backend implements and LoadRequest's
// default.
const DtypeFloat32 = "float32"

// LoadResult identifies a loaded model.
type LoadResult struct {
	Session string
}

// Image is a preprocessed image: float32, HWC, Size x Size x 3, already
// padded to square, resized and normalized by model.
type Image struct {
	Size   int
	Pixels []float32
}

// Sequence is one prompt: token ids in which image patch positions are
// marked by the model's patch token, and the images those positions read,
// in order.
type Sequence struct {
	Tokens []int32
	Images []Image
}

// PrefillRequest runs prompts and opens a KV cache.
type PrefillRequest struct {
	Session       string
	Batch         []Sequence
	WantAttention bool // return attention of the last position over image patches
	// HeadOnly asks for the grounding head's boxes alone: a backend whose
	// model has a head (model.Config.Grounder) may then skip the language
	// model and answer with HeadBoxes, no Logits and no cache (CacheID
	// ""). A backend without a head, or that does not implement it,
	// answers as without it; callers must handle both.
	HeadOnly bool
}

// DecodeRequest advances a KV cache by one token per sequence.
type DecodeRequest struct {
	Session string
	CacheID string
	Tokens  []int32 // one per sequence of the cache's batch
	// WantAttention returns the attention of this position over image patches.
	WantAttention bool
}

// ForwardResult holds next-token logits per sequence.
type ForwardResult struct {
	CacheID string
	Logits  [][]float32 // [batch][vocab]
	// Attention, when requested and supported: [batch][patches], averaged over
	// heads and layers, for the first image of each sequence.
	Attention [][]float32
	// HeadBoxes, from Prefill of a model with a grounding head
	// (model.Config.Grounder), is per sequence the box the head finds on
	// the sequence's first image for the text before it; nil otherwise.
	HeadBoxes []HeadBox
}

// FeatureGenerate is the name under which a backend declares, among its
// Description.Features, that it implements Generate.
const FeatureGenerate = "generate"

// Grammar kinds (Grammar.Kind).
const (
	GrammarNone   = ""       // free text: any token but template markers
	GrammarBox    = "box"    // exactly one box "[x1, y1, x2, y2]" with x1 < x2, y1 < y2
	GrammarYesNo  = "yesno"  // "yes" or "no", optionally capitalized
	GrammarDigits = "digits" // one digit in Lo..Hi
)

// Grammar restricts what Generate may answer (model.Constraint on the
// wire).
type Grammar struct {
	Kind   string
	Lo, Hi int // GrammarDigits only
}

// GenerateRequest decodes answers to prompts inside the backend.
type GenerateRequest struct {
	Session string
	Batch   []Sequence
	Grammar Grammar
	// MaxNew bounds the tokens generated per sequence, <eos> included; 0
	// means 128. A grammar always runs to its end.
	MaxNew int
	// BoxFromHead and YesNoFromHead answer box and yes/no grammars from
	// the grounding head (HeadBox.Box, HeadBox.Exists >= 0.5) where the
	// sequence has a head box (model.GenerateOptions).
	BoxFromHead, YesNoFromHead bool
	// NameFromHead answers free text (no grammar) with the name head's
	// words (HeadBox.Name) where the sequence has them
	// (model.GenerateOptions.NameFromHead).
	NameFromHead bool
	// WantAttention returns each generated token's attention over the
	// first image's patches.
	WantAttention bool
}

// GenerateResult holds one answer per sequence of the request.
type GenerateResult struct {
	Answers []GeneratedAnswer
}

// GeneratedAnswer is one sequence's answer.
type GeneratedAnswer struct {
	Tokens []int32 // without <eos>
	// Finish is "eos" (the model or the grammar ended the answer) or
	// "length" (MaxNew or MaxSeq ran out).
	Finish string
	// Attention[k], when requested, is the attention of the position that
	// predicted Tokens[k] over the first image's patches.
	Attention [][]float32
	// Head is the grounding head's answer for the sequence (its box,
	// score and existence probability), as Prefill returned it; OK is
	// false where the model has no head or the sequence no image.
	Head HeadBox
}

// HeadBox is a grounding head's answer for one sequence.
type HeadBox struct {
	// Box is x1, y1, x2, y2 normalized to the first image padded to a
	// square (model.NormBox's frame).
	Box [4]float32
	// Score is the head's probability for the cell it picked.
	Score float32
	// Exists is the head's probability that what the text names is in the
	// image at all (model.Config.Grounder's existence term: the sigmoid of
	// the pointer logits' log-sum-exp less log(cells)).
	Exists float32
	// Name is the name head's answer (model.Config.GrounderNameSlots):
	// the token ids of the words that name the first image's central
	// object, without <eos>; nil where the model has no name head.
	Name []int32
	// OK is false where the sequence has no image.
	OK bool
}

// CheckDtype returns nil when a LoadRequest's dtype is empty or among the
// dtypes a backend declares, and otherwise an ErrInvalidArgument naming
// the backend and what it declares.
func CheckDtype(backend, dtype string, declared []string) error {
	if dtype == "" || slices.Contains(declared, dtype) {
		return nil
	}
	return fmt.Errorf("%w: dtype %q is not one backend %q implements (it declares %s)",
		ErrInvalidArgument, dtype, backend, strings.Join(declared, ", "))
}

// FileSHA256 is the hex sha256 of a file's bytes, and their count: what
// Checkpoint.SHA256 and Checkpoint.Bytes record.
func FileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
