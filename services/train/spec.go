package train

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
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
	// Recipe names a recipe file (recipes/<name>.json, see Recipes) laid
	// over the defaults before the rest of the spec; "" and "demo" are the
	// defaults themselves.
	Recipe string `json:"recipe,omitempty"`
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
	// Objective is what the stage minimizes (compute.TrainRequest's):
	// "" (the answer loss plus the model's auxiliary losses) or
	// "grounder" (the grounding encoder and head alone, model.grounder;
	// the language model is neither run nor changed).
	Objective string `json:"objective,omitempty"`
	// Pack overrides the run's Pack for this stage's shards. A "grounder"
	// stage wants false: a packed sequence labels only its first turn's
	// referent.
	Pack *bool `json:"pack,omitempty"`
}

// Packs reports whether a stage's shards pack records (StageSpec.Pack,
// else RunSpec.Pack, default true).
func (s RunSpec) Packs(stage string) bool {
	if st := s.Stage(stage); st != nil && st.Pack != nil {
		return *st.Pack
	}
	return s.Pack == nil || *s.Pack
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

// DefaultSpec is the spec of a request without one: the demo's three
// stages, sized for the pure-Go backend on a 2-core CPU. The measurements
// behind each default are in docs/experiments.md; recipes/text-boxes.json
// is the model before the grounding head (box numbers written by the
// language model alone), kept so that the two can be compared.
//
// The model reads 64-pixel images (the scene world's size) through the
// grounding encoder (model.Config.Grounder): a CoordConv tower conditioned
// on the question, whose head gives a box answer its numbers and a yes/no
// question its answer, and a name head that names a crop's object. Stage
// 1 trains that encoder and its heads alone (objective "grounder") on REC
// expressions, POPE probes and crop names, one record per sequence. The language model then starts from random weights over
// it: stage 2 trains it on the six directions, stage 3 on every task of
// stages 2 and 3 (the dense descriptions, conversations and POPE probes
// too). Stages 2 and 3 hold the encoder, its head and the token embeddings
// it reads as stage 1 left them.
func DefaultSpec() RunSpec {
	m := model.DefaultConfig(0)
	// Narrow and shallow, no vision transformer block: three stages fit
	// the demo's CPU budget.
	m.Width, m.Depth, m.Heads, m.VisionDepth = 64, 2, 2, 0
	// 64 pixels in 8-pixel cells: an 8 x 8 grid; four images fit MaxSeq.
	m.ImageSize, m.MaxSeq = 64, 320
	// A 32-channel grounding tower: as accurate per step as 64 channels
	// on the scene probe and about 1.6x faster per step.
	m.VisionWidth = 32
	// The instruction first, then the image: the sentence vector reads it.
	m.ImagesAfterText = true
	// A patch's position is its index in the image, not in the sequence.
	m.PatchPositions = true
	m.Grounder, m.GrounderQueries, m.GrounderLossWeight = true, 4, 1
	// The sentence vector from a bidirectional GRU: REC Acc@0.5 pooled
	// 0.710 against 0.635 for the transformer block in one demo run each,
	// POPE F1 0.84-0.91 against 0.59-0.70 (docs/experiments.md).
	m.GrounderTextGRU = true
	// Instance norm before every FiLM of the tower.
	m.GrounderNorm = true
	// The pointer's target: a Gaussian of 0.3 cells around the centre
	// cell, not 0.75 (scene probe, docs/experiments.md).
	m.GrounderSigma = 0.3
	// A name head for crop naming (up to five words and <eos>: "small
	// red striped occluded circle"), trained in stage 1 on the
	// crop-naming records.
	m.GrounderNameSlots = 6
	unpacked := false
	// A fresh slice per stage: decoding a spec's "frozen" reuses the
	// slice it decodes into.
	perception := func() []string { return []string{"grounder.", "embed.tokens"} }
	return RunSpec{
		Model:           m,
		MaxWords:        1024,
		Seed:            1,
		SamplesPerShard: 1024,
		LogEvery:        5,
		CrashRetries:    3,
		Stage1: StageSpec{
			Steps: 2400, BatchSize: 64, LearningRate: 2e-3, WarmupSteps: 50, WeightDecay: 0, CheckpointEvery: 300,
			Objective: compute.ObjectiveGrounder, Pack: &unpacked,
			Data: DataFilter{Stages: []string{"stage2", "stage3"}, Tasks: []string{"rec", "pope", "crop_name"}, Splits: []string{"train"}},
		},
		Stage2: StageSpec{
			Steps: 200, BatchSize: 16, LearningRate: 1e-3, WarmupSteps: 20, WeightDecay: 0.01, CheckpointEvery: 100,
			Frozen: perception(),
			Data:   DataFilter{Stages: []string{"stage2"}, Splits: []string{"train"}},
		},
		Stage3: StageSpec{
			Steps: 100, BatchSize: 16, LearningRate: 1e-3, WarmupSteps: 10, WeightDecay: 0.01, CheckpointEvery: 50,
			Frozen: perception(),
			Data:   DataFilter{Stages: []string{"stage3", "stage2"}, Splits: []string{"train"}},
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
		// The recipe first, then the request's own fields over it. A
		// malformed spec is left to the strict decode below to report.
		var head struct {
			Recipe string `json:"recipe"`
		}
		_ = json.Unmarshal(b, &head)
		if err := applyRecipe(&spec, head.Recipe); err != nil {
			return RunSpec{}, err
		}
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
	case m.GroundReadout && (s.Packs("stage1") || s.Packs("stage2") || s.Packs("stage3")):
		return bad("pack", "true with model.ground_readout: a packed image's patches ground the first turn's question only, and later turns would read its referent; set \"pack\": false (and no stage's pack true)")
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
		case st.Objective != compute.ObjectiveAll && st.Objective != compute.ObjectiveGrounder:
			return bad(f("objective"), "%q is not one of \"\" (every loss) and %q", st.Objective, compute.ObjectiveGrounder)
		case st.Objective == compute.ObjectiveGrounder && !m.Grounder:
			return bad(f("objective"), "%q needs model.grounder", st.Objective)
		}
		for i, p := range append(append([]string(nil), st.Trainable...), st.Frozen...) {
			if p == "" || strings.TrimSpace(p) != p {
				return bad(f("trainable/frozen"), "prefix %d %q is empty or padded", i, p)
			}
		}
	}
	return nil
}
