package train

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/groundmesh/groundmesh/internal/model"
)

// ErrInvalidRequest marks a request that can never succeed (a bad run
// spec, a missing synth set id): the caller must not retry it.
var ErrInvalidRequest = errors.New("train: invalid request")

// Stages are the three training stages, in order.
var Stages = []string{"stage1", "stage2", "stage3"}

// RunSpec is the JSON run specification of events.TrainRequested.Spec.
// Every field has a default (DefaultSpec); a spec in a request overrides
// only the fields it names, and an unknown field is rejected by name.
type RunSpec struct {
	// Model is the architecture. Its vocab_size is set from the tokenizer
	// built over the synth set (leave it 0); the rest defaults to
	// model.DefaultConfig.
	Model model.Config `json:"model"`
	// MaxWords is the number of word tokens of the vocabulary built from
	// the synth set's training records (on top of the 382 reserved tokens).
	MaxWords int `json:"max_words"`
	// Seed seeds initialization, data order and shard order.
	Seed int64 `json:"seed"`
	// SamplesPerShard is the size of one tokenized training shard.
	SamplesPerShard int `json:"samples_per_shard"`
	// Pack packs the records that read the same single image into
	// multi-turn sequences (model.ShardConfig.Pack). Default true, which
	// model.ground_readout refuses: a packed record's image comes once,
	// after the first turn's question, so its patches' grounding answers
	// that question, and later turns would read the first turn's referent.
	Pack *bool `json:"pack,omitempty"`
	// LogEvery reports (and records) the loss every N steps.
	LogEvery int `json:"log_every"`
	// CrashRetries is how many times a stage resumes from its last
	// checkpoint after the plugin crashed, within one Train call.
	CrashRetries int `json:"crash_retries"`
	// Stage1..Stage3 configure the stages.
	Stage1 StageSpec `json:"stage1"`
	Stage2 StageSpec `json:"stage2"`
	Stage3 StageSpec `json:"stage3"`
}

// StageSpec configures one stage.
type StageSpec struct {
	Steps           int     `json:"steps"`
	BatchSize       int     `json:"batch_size"`
	LearningRate    float64 `json:"lr"` // peak
	WarmupSteps     int     `json:"warmup"`
	WeightDecay     float64 `json:"weight_decay"`
	CheckpointEvery int     `json:"checkpoint_every"`
	// Trainable selects parameters by canonical-name prefix (empty: all);
	// Frozen then removes some (see compute.TrainRequest).
	Trainable []string `json:"trainable"`
	Frozen    []string `json:"frozen"`
	// Data selects the synth records the stage trains on.
	Data DataFilter `json:"data"`
}

// DataFilter selects synth records. A "data" object in a spec replaces the
// stage's whole default filter (fields it leaves out do not keep the
// default's values: {"stages": ["stage1"]} means every task of the stage-1
// records, not the default's tasks of them); splits defaults to ["train"].
type DataFilter struct {
	Stages []string `json:"stages"` // synth record stages
	Tasks  []string `json:"tasks"`  // empty: every task
	Splits []string `json:"splits"` // default ["train"]
}

// UnmarshalJSON decodes a filter whole, rejecting unknown fields.
func (f *DataFilter) UnmarshalJSON(b []byte) error {
	type plain DataFilter
	var p plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return err
	}
	if p.Splits == nil {
		p.Splits = []string{"train"}
	}
	*f = DataFilter(p)
	return nil
}

// DefaultSpec is the spec of a request without one: the three stages of
// the demo, sized for the pure-Go backend on a 2-core CPU.
//
// Stage 1 is object perception, both ways: the model names the object in
// a crop and finds the object an expression names in the full image (the
// synth set's crop_name and REC records; REC is 3 of the 8 stage-2 task
// weights in the pipeline's default synth mix), 3,000 steps with every
// parameter training. Finding objects is what takes the budget: with the
// patch positions below and REC alone for 1,000 steps, REC's answers did
// not yet depend on the image (image_gain 0.001 to 0.004, /tmp/demoY,
// 2026-11-30); for 3,000 they did (0.13 to 0.16) and the freely decoded
// boxes reached Acc@0.5 0.077 [0.052, 0.112] (23 of 300 on val, test and
// heldout) against the fixed box's 0 of 300 (/tmp/demoZ). Naming crops
// is the task a model from random weights learns to read the image on
// fastest: its answers are the crop's colour, shape and texture and
// nothing else. Run with the stage-1 records (inventories, relations,
// captions) or with every task mixed, the demo's model learned the
// answers' wording and never read the image: an answer scored the same
// under another image (eval's image_gain about 0), after 600 stage-2 steps
// as after 200 stage-1 ones. After 300 steps of crop naming it reads the
// image (image_gain 0.74 nats per answer token on crop names), and keeps
// doing so through stage 2. A spec that wants the paper's stage-1 data
// says "stage1": {"data": {"stages": ["stage1"]}}.
//
// GroundingGPT's stage 1 trains only the adapters (projector, embeddings)
// around a frozen pretrained language model. Here the language model and
// the vision encoder start from random weights: with only the adapters
// training ("trainable": ["projector.", "fusion.", "embed.", "lm_head."]),
// 300 steps of crop naming reached an image_gain of 0.016, against 0.74
// with everything training. Stage 3 trains everything too.
//
// Stage 2 freezes the vision encoder ("frozen": ["vision."]), as
// GroundingGPT keeps its vision encoder frozen throughout: trained at
// stage 2's learning rate, the encoder unlearned what stage 1 taught it.
// Crop naming's image_gain (eval: how much worse the answers score under
// another record's image) fell from 0.52 nats per answer token after
// stage 1 to 0.003 after stage 2, the model reading no image at all
// (demo /tmp/demoL, 2026-11-30); with the encoder frozen it keeps 0.28 to
// 0.33 after stage 2 and 0.23 to 0.27 after stage 3, and REC's figures
// stay where they were (stage-3 mIoU 0.062 / 0.077 / 0.063 on val / test
// / heldout against 0.060 / 0.078 / 0.058; /tmp/demoM). A lower stage-2
// learning rate (1e-3) kept the crops read as well, but left REC's boxes
// at mIoU 0.004 to 0.016 after stage 2. A spec that wants stage 2 to train
// the encoder says "stage2": {"frozen": []}.
//
// The step budget goes where the model learns to ground: stage 2 gets
// most steps (a probe of this model on "where is the red square" with a
// green distractor needed several hundred steps before the box loss moved
// at all); stage 3 replays stage-2 records beside its own (Data.Stages),
// since a stage that sees only descriptions and yes/no probes forgets how
// to answer with a box. Records of one image are packed into multi-turn
// sequences (Pack).
func DefaultSpec() RunSpec {
	// Width 64 and depth 2 (not model.DefaultConfig's 96 x 3): about 0.5 to
	// 0.7 CPU-s a step at batch 16 on this class of machine, against 1.5,
	// which is what lets three stages train within the demo's budget.
	//
	// Two heads (of 32) instead of four, no vision transformer block (patch
	// embedding, 2D sine-cosine positions and the projector only) and the
	// image after the instruction: on the red-square probe (see
	// plugins/gomlx) this reached a loss in 1000 steps that the four-head,
	// one-block, image-first model needed 1500 for.
	//
	// Text fusion (FiLM of the patch features by the instruction; see
	// model.Config.TextFusion): the two-square colour-binding probe reached
	// in 400 steps a box error it otherwise needs about 1,000 for. Stage 1
	// trains it with the other adapters.
	m := model.DefaultConfig(0)
	m.Width, m.Depth, m.Heads, m.VisionDepth = 64, 2, 2, 0
	m.ImagesAfterText = true
	m.TextFusion = true
	// Attention-pooled fusion text (model.Config.FusionAttention): the
	// instruction's few telling words are not averaged away among its
	// template words. On the scene probe's colour words after eight filler
	// words (BenchmarkSceneProbe, colour-ground against colour-ground-attn)
	// it reached Acc@0.5 0.137 in 1,000 steps against 0.050 for the plain
	// mean, and 0.194 against 0.141 in 1,500.
	m.FusionAttention = true
	// The grounding loss (model.Config.GroundLossWeight): the patches of a
	// box answer's image learn, one layer before the last, which of them
	// the answer's box covers. On the scene probe (plugins/gomlx,
	// BenchmarkSceneProbe; 6,000 images, 1,500 steps) it is the difference
	// between no colour binding at all (Acc@0.5 0.002, at the mean box) and
	// Acc@0.5 0.14; it costs a layer norm and a dot product per patch.
	m.GroundLossWeight = 1
	// Not the convolutional stem (model.Config.ConvStem), the default
	// from the second session of 2026-11-30 until the fifth. On the scene probe's
	// crops it named the shape 77.5% of the time after 1,000 steps against
	// the linear patch embedding's 24.7%, but it all but stops the model
	// from finding an object by its colour: colour word alone, 1,000
	// steps, freely decoded box centre in the object 12.5% of the time
	// (Acc@0.5 0.022) with the stem against 68.5% (0.198) without
	// (BenchmarkSceneProbe, colour-stem-box against colour-ground-attn-box;
	// in synth's REC wording, colour-stem-box-templated against
	// colour-box-templated, 14.6% against 34.3%). In the pipeline the
	// linear embedding also names crops better: crop naming's answer NLL
	// 0.63 / 0.62 / 0.62 against 0.72 / 0.70 / 0.72 after stage 1 (val /
	// test / heldout: /tmp/demoU against /tmp/demoR, 2026-11-30), its
	// image_gain 0.54 to 0.66 against 0.31 to 0.35; and a step runs about
	// a tenth faster (BenchmarkTrainStep: 11.96 against 10.70 steps/s).
	m.ConvStem = false
	// Patch positions (model.Config.PatchPositions): a patch's position
	// embedding is its index in the image, not its place in the sequence,
	// which moves with the instruction's length. On the scene probe in
	// synth's REC wording (colour-box-templated-patchpos against
	// colour-box-templated, 1,000 steps), the freely decoded box's centre
	// lands in the object 67.8% of the time against 34.3%, Acc@0.5 0.295
	// against 0.078.
	m.PatchPositions = true
	// The box loss (model.Config.BoxLossWeight): the referent's patches
	// also regress its box, so that the last block can read the numbers
	// off them. On the scene probe's colour words (colour-ground-attn-box
	// against colour-ground-attn, 1,000 steps) it lifted Acc@0.5 from 0.137
	// to 0.203 and the box centre's hits from 45% to 70%.
	m.BoxLossWeight = 1
	// Not the grounding readout (model.Config.GroundReadout): on the scene
	// probe's shortest descriptions (ground-stem-box-readout against
	// ground-stem-box, 1,000 steps) the freely decoded box centre lands
	// in the object 15.3% of the time against 13.1% (Acc@0.5 0.024
	// against 0.020), and in a demo with REC weighted 4 and 1,500 stage-2
	// steps REC centre accuracy went from 0.06 / 0.10 / 0.13 to 0.11 /
	// 0.16 / 0.14 (val / test / heldout); but it needs records unpacked,
	// and unpacked at this budget the demo did worse (REC mIoU 0.038 /
	// 0.043 / 0.038 against 0.067 / 0.068 / 0.057 packed without it).
	return RunSpec{
		Model:           m,
		MaxWords:        1024,
		Seed:            1,
		SamplesPerShard: 1024,
		LogEvery:        5,
		CrashRetries:    3,
		Stage1: StageSpec{
			Steps: 3000, BatchSize: 16, LearningRate: 3e-3, WarmupSteps: 20, WeightDecay: 0, CheckpointEvery: 500,
			Data: DataFilter{Stages: []string{"stage2"}, Tasks: []string{"crop_name", "rec"}, Splits: []string{"train"}},
		},
		Stage2: StageSpec{
			Steps: 600, BatchSize: 16, LearningRate: 3e-3, WarmupSteps: 30, WeightDecay: 0.01, CheckpointEvery: 100,
			Frozen: []string{"vision."},
			Data:   DataFilter{Stages: []string{"stage2"}, Splits: []string{"train"}},
		},
		Stage3: StageSpec{
			Steps: 100, BatchSize: 16, LearningRate: 1e-3, WarmupSteps: 10, WeightDecay: 0.01, CheckpointEvery: 50,
			Data: DataFilter{Stages: []string{"stage3", "stage2"}, Splits: []string{"train"}},
		},
	}
}

// Stage returns the spec of a stage by name.
func (s *RunSpec) Stage(name string) *StageSpec {
	switch name {
	case "stage1":
		return &s.Stage1
	case "stage2":
		return &s.Stage2
	case "stage3":
		return &s.Stage3
	}
	return nil
}

// ParseSpec decodes a run spec over DefaultSpec and validates it. Empty
// input gives the defaults. Errors wrap ErrInvalidRequest and name the
// offending field.
func ParseSpec(b []byte) (RunSpec, error) {
	spec := DefaultSpec()
	if len(bytes.TrimSpace(b)) > 0 && !bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&spec); err != nil {
			return RunSpec{}, fmt.Errorf("run spec: %v: %w", err, ErrInvalidRequest)
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return RunSpec{}, fmt.Errorf("run spec: trailing data after the object: %w", ErrInvalidRequest)
		}
	}
	if err := spec.Validate(); err != nil {
		return RunSpec{}, err
	}
	return spec, nil
}

// Validate checks every field, naming the first bad one by its JSON path.
func (s RunSpec) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("run spec: %s: %s: %w", field, fmt.Sprintf(format, args...), ErrInvalidRequest)
	}
	m := s.Model
	if m.VocabSize != 0 {
		return bad("model.vocab_size", "%d: leave it 0, the tokenizer sets it", m.VocabSize)
	}
	m.VocabSize = 1 << 16 // any vocabulary that fits the special tokens
	if err := m.Validate(); err != nil {
		return bad("model", "%v", err)
	}
	switch {
	case m.GroundReadout && (s.Pack == nil || *s.Pack):
		return bad("pack", "true with model.ground_readout: a packed image's patches ground the first turn's question only, and later turns would read its referent; set \"pack\": false")
	case s.MaxWords < 1:
		return bad("max_words", "%d must be positive", s.MaxWords)
	case s.SamplesPerShard < 1:
		return bad("samples_per_shard", "%d must be positive", s.SamplesPerShard)
	case s.LogEvery < 1:
		return bad("log_every", "%d must be positive", s.LogEvery)
	case s.CrashRetries < 0:
		return bad("crash_retries", "%d must not be negative", s.CrashRetries)
	}
	for _, name := range Stages {
		st := s.Stage(name)
		f := func(field string) string { return name + "." + field }
		switch {
		case st.Steps < 1:
			return bad(f("steps"), "%d must be positive", st.Steps)
		case st.BatchSize < 1:
			return bad(f("batch_size"), "%d must be positive", st.BatchSize)
		case !(st.LearningRate > 0 && st.LearningRate < 1):
			return bad(f("lr"), "%v must be in (0, 1)", st.LearningRate)
		case st.WarmupSteps < 0 || st.WarmupSteps > st.Steps:
			return bad(f("warmup"), "%d must be in [0, steps]", st.WarmupSteps)
		case !(st.WeightDecay >= 0 && st.WeightDecay < 1):
			return bad(f("weight_decay"), "%v must be in [0, 1)", st.WeightDecay)
		case st.CheckpointEvery < 1:
			return bad(f("checkpoint_every"), "%d must be positive", st.CheckpointEvery)
		case len(st.Data.Stages) == 0:
			return bad(f("data.stages"), "empty: name the synth stages to train on")
		case len(st.Data.Splits) == 0:
			return bad(f("data.splits"), "empty: name the splits to train on")
		}
		for i, p := range append(append([]string(nil), st.Trainable...), st.Frozen...) {
			if p == "" || strings.TrimSpace(p) != p {
				return bad(f("trainable/frozen"), "prefix %d %q is empty or padded", i, p)
			}
		}
	}
	return nil
}
