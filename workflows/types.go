// Package workflows holds groundmesh's Temporal workflows (Pipeline and its
// children Ingest, Synthesize, Train, Evaluate) and the bridge activity they
// call. Workflows never talk to services directly: the bridge activity
// publishes a command event and completes asynchronously when the service
// answers (see bridge.go).
package workflows

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/groundmesh/groundmesh/internal/events"
)

// TaskQueue is the task queue the groundmesh worker polls.
const TaskQueue = "groundmesh"

// Workflow type names, as they appear in the Temporal UI.
const (
	PipelineWorkflowName   = "Pipeline"
	IngestWorkflowName     = "Ingest"
	SynthesizeWorkflowName = "Synthesize"
	TrainWorkflowName      = "Train"
	EvaluateWorkflowName   = "Evaluate"
	ExportWorkflowName     = "Export"

	// CommandActivityName is the bridge activity.
	CommandActivityName = "Command"
	// StatusQuery is the query the Train workflow answers (stage, step, loss).
	StatusQuery = "status"
	// ProgressSignal carries throttled progress from the bridge into a workflow.
	ProgressSignal = "progress"
)

// Stage names of the pipeline.
const (
	StageIngest = "ingest"
	StageSynth  = "synth"
	StageTrain  = "train"
	StageEval   = "eval"
)

// KnownStages lists the stages the pipeline can run, in order.
var KnownStages = []string{StageIngest, StageSynth, StageTrain, StageEval}

// PipelineInput is the Pipeline workflow's input. Every field has a default,
// so that `{}` from the Temporal UI runs the whole pipeline on the built-in
// scene world.
type PipelineInput struct {
	// Stages to run, in pipeline order (default: all known stages).
	Stages []string `json:"stages,omitempty"`
	// Dataset to ingest (default: the built-in scene world).
	Dataset DatasetInput `json:"dataset"`
	// Synth configures alignment data synthesis.
	Synth SynthInput `json:"synth"`
	// Train configures three-stage training.
	Train TrainInput `json:"train"`
	// Eval configures evaluation.
	Eval EvalInput `json:"eval"`
	// DatasetID skips ingest and uses an ingested dataset version.
	DatasetID string `json:"dataset_id,omitempty"`
	// SynthSetID skips synthesis and uses an existing synth set.
	SynthSetID string `json:"synth_set_id,omitempty"`
	// RunID names (or resumes) the training run; default derived from the workflow id.
	RunID string `json:"run_id,omitempty"`
	// Promote, when it names an alias, points the alias at the run's final
	// checkpoint once the run is done (and its gates pass): what the
	// grounding API serves by default is alias "production".
	Promote PromoteInput `json:"promote"`
	// Queues routes a stage's command to a queue (a capability such as
	// "train-cuda", "train-cpu", "synth"), by stage name: the command goes
	// to "<svc>.requested.<queue>", which only the workers started with
	// that queue (`groundmesh worker --queue`) consume. A stage left out,
	// or "default", goes to the default queue ("<svc>.requested").
	Queues map[string]string `json:"queues,omitempty"`

	decodeErr error
}

// PromoteInput asks the Pipeline to promote the run's final checkpoint.
type PromoteInput struct {
	// Alias to point at the checkpoint ("production" is what the grounding
	// API serves by default); empty: no promotion.
	Alias string `json:"alias,omitempty"`
	// MinMetrics are gates: each named metric of the run's evaluation, as
	// the result's metrics name it (e.g. "stage3/rec/test/acc@0.5"), must
	// be at least its value, or the run completes without promoting and
	// says why. A gate needs the eval stage.
	MinMetrics map[string]float64 `json:"min_metrics,omitempty"`
}

// aliasPattern is what an alias may be (services/ground checks the same).
var aliasPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// DatasetInput selects what to ingest.
type DatasetInput struct {
	Format string `json:"format,omitempty"` // default "scenes"
	Path   string `json:"path,omitempty"`
	Name   string `json:"name,omitempty"`
	Seed   int64  `json:"seed,omitempty"`
	Images int    `json:"images,omitempty"` // scenes only
	Size   int    `json:"size,omitempty"`   // scenes only
	// MaxBadFraction of rejected records before the ingest fails (default 0.05).
	MaxBadFraction float64 `json:"max_bad_fraction,omitempty"`
}

// SynthInput configures synthesis.
type SynthInput struct {
	Seed       int64  `json:"seed,omitempty"`
	Samples    int    `json:"samples,omitempty"`
	RewriteURL string `json:"rewrite_url,omitempty"`
	// TaskWeights splits each stage's samples between its tasks; a task
	// left out keeps services/synth's default (the six stage-2 directions
	// 1 each), except "rec", which defaults to 3 here; services/synth
	// rejects an unknown task.
	TaskWeights map[string]float64 `json:"task_weights,omitempty"`
	// Mirror is the fraction of training-split REC and POPE records asked
	// about their image mirrored left to right, boxes mirrored and "left"
	// and "right" swapped in the text (default 0).
	Mirror float64 `json:"mirror,omitempty"`
}

// TrainInput configures training.
type TrainInput struct {
	Backend string `json:"backend,omitempty"` // default "gomlx"
	// Device is the backend's device: "cpu" (the default) or "cuda"
	// (libtorch on a GPU machine).
	Device string          `json:"device,omitempty"`
	Spec   json.RawMessage `json:"spec,omitempty"` // services/train run spec
}

// EvalInput configures evaluation.
type EvalInput struct {
	Splits     []string `json:"splits,omitempty"`
	MaxSamples int      `json:"max_samples,omitempty"`
	// MaxSamplesBy caps the records of the benchmarks it names per split
	// instead of MaxSamples (0: every record). The default scores REC
	// and the three POPE sets on DefaultHeadSamples records per split:
	// their answers come from the grounding head, about a millisecond
	// each, and at MaxSamples' 100 a split's figure moves by about
	// ±0.09 from which records were drawn.
	MaxSamplesBy SampleCaps `json:"max_samples_by,omitempty"`
	Report       *bool      `json:"report,omitempty"` // default true
	// ExportAs exports the run's final checkpoint in each form (format
	// "gguf" with dtype float32, float16, q8_0 or q4_0; "onnx" with
	// float32 or float16) and scores each export too, as stage
	// "stage3@<format>-<dtype>", on ExportBackend (default: ggml for
	// gguf, onnx for onnx).
	ExportAs      []events.ExportSpec `json:"export_as,omitempty"`
	ExportBackend string              `json:"export_backend,omitempty"`
	// ExportBenchmarks limits the exports' scoring to these benchmarks
	// ("rec", "pope_random", ...; default all).
	ExportBenchmarks []string `json:"export_benchmarks,omitempty"`
}

// SampleCaps are records per split by benchmark name. Decoding refuses an
// empty name or a negative count (PipelineInput's decoding keeps the error
// for Validate, which cannot range over a map: a workflow must name the
// same field on every replay).
type SampleCaps map[string]int

// UnmarshalJSON decodes the caps and checks them in name order.
func (c *SampleCaps) UnmarshalJSON(b []byte) error {
	var m map[string]int
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if k == "" || m[k] < 0 {
			return fmt.Errorf("eval.max_samples_by[%q] = %d: want a benchmark name and a count >= 0", k, m[k])
		}
	}
	*c = m
	return nil
}

// DefaultHeadSamples is EvalInput.MaxSamplesBy's default for REC and the
// POPE sets.
const DefaultHeadSamples = 400

// UnmarshalJSON decodes strictly: an unknown field is remembered (not
// returned, which would make Temporal retry the workflow task forever) and
// reported by Validate, naming the field.
func (in *PipelineInput) UnmarshalJSON(b []byte) error {
	type plain PipelineInput
	var p plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		// Fall back to a lenient decode so defaults still apply, and keep the
		// error for Validate.
		var q plain
		_ = json.Unmarshal(b, &q)
		*in = PipelineInput(q)
		in.decodeErr = fmt.Errorf("pipeline input: %s", strings.TrimPrefix(err.Error(), "json: "))
		return nil
	}
	*in = PipelineInput(p)
	return nil
}

// WithDefaults returns the input with every unset field defaulted.
func (in PipelineInput) WithDefaults() PipelineInput {
	if len(in.Stages) == 0 {
		in.Stages = append([]string(nil), KnownStages...)
	}
	if in.Dataset.Format == "" {
		in.Dataset.Format = "scenes"
	}
	if in.Dataset.Format == "scenes" {
		if in.Dataset.Name == "" {
			in.Dataset.Name = "scenes"
		}
		if in.Dataset.Seed == 0 {
			in.Dataset.Seed = 1
		}
		if in.Dataset.Images == 0 {
			// Enough distinct images that the model learns rather than
			// memorizes (docs/experiments.md); they take seconds to make.
			in.Dataset.Images = 6000
		}
		if in.Dataset.Size == 0 {
			in.Dataset.Size = 64
		}
	}
	if in.Dataset.MaxBadFraction == 0 {
		in.Dataset.MaxBadFraction = 0.05
	}
	if in.Synth.Seed == 0 {
		in.Synth.Seed = 1
	}
	if in.Synth.Samples == 0 {
		// Enough REC records and POPE probes for the default stage 1.
		in.Synth.Samples = 48000
	}
	if _, ok := in.Synth.TaskWeights["rec"]; !ok {
		// REC weighted 3 among the six stage-2 directions: the default
		// stage 1 trains on it (docs/experiments.md).
		tw := make(map[string]float64, len(in.Synth.TaskWeights)+1)
		maps.Copy(tw, in.Synth.TaskWeights)
		tw["rec"] = 3
		in.Synth.TaskWeights = tw
	}
	if in.Train.Backend == "" {
		in.Train.Backend = "gomlx"
	}
	if len(in.Eval.Splits) == 0 {
		in.Eval.Splits = []string{"val", "test", "heldout"}
	}
	if in.Eval.MaxSamples == 0 {
		in.Eval.MaxSamples = 100
	}
	if in.Eval.MaxSamplesBy == nil {
		in.Eval.MaxSamplesBy = SampleCaps{}
		for _, b := range []string{"rec", "pope_random", "pope_popular", "pope_adversarial"} {
			in.Eval.MaxSamplesBy[b] = DefaultHeadSamples
		}
	}
	if in.Eval.Report == nil {
		t := true
		in.Eval.Report = &t
	}
	return in
}

// Validate checks a defaulted input and names the first bad field.
func (in PipelineInput) Validate() error {
	if in.decodeErr != nil {
		return in.decodeErr
	}
	seen := map[string]bool{}
	for i, s := range in.Stages {
		known := false
		for _, k := range KnownStages {
			known = known || s == k
		}
		if !known {
			return fmt.Errorf("pipeline input: stages[%d] = %q: want one of %s", i, s, strings.Join(KnownStages, ", "))
		}
		if seen[s] {
			return fmt.Errorf("pipeline input: stages[%d] = %q: listed twice", i, s)
		}
		seen[s] = true
	}
	switch in.Dataset.Format {
	case "scenes", "coco", "refcoco", "vg", "flickr30k", "odvg", "pope", "llava":
	default:
		return fmt.Errorf("pipeline input: dataset.format = %q: want scenes, coco, refcoco, vg, flickr30k, odvg, pope or llava", in.Dataset.Format)
	}
	if in.Dataset.Format != "scenes" && in.Dataset.Path == "" && seen[StageIngest] {
		return fmt.Errorf("pipeline input: dataset.path is required for format %q", in.Dataset.Format)
	}
	if in.Dataset.Images < 0 || in.Dataset.Images > 1_000_000 {
		return fmt.Errorf("pipeline input: dataset.images = %d: want 1..1000000", in.Dataset.Images)
	}
	if in.Dataset.Size < 0 || (in.Dataset.Size != 0 && (in.Dataset.Size < 16 || in.Dataset.Size > 1024)) {
		return fmt.Errorf("pipeline input: dataset.size = %d: want 16..1024", in.Dataset.Size)
	}
	if in.Dataset.MaxBadFraction < 0 || in.Dataset.MaxBadFraction > 1 {
		return fmt.Errorf("pipeline input: dataset.max_bad_fraction = %v: want 0..1", in.Dataset.MaxBadFraction)
	}
	if !(in.Synth.Mirror >= 0 && in.Synth.Mirror <= 1) {
		return fmt.Errorf("pipeline input: synth.mirror = %v: want a fraction from 0 to 1", in.Synth.Mirror)
	}
	if in.Synth.Samples < 0 || in.Synth.Samples > 10_000_000 {
		return fmt.Errorf("pipeline input: synth.samples = %d: want 1..10000000", in.Synth.Samples)
	}
	switch in.Train.Backend {
	case "gomlx", "libtorch", "onnx", "ggml":
	default:
		return fmt.Errorf("pipeline input: train.backend = %q: want gomlx, libtorch, onnx or ggml", in.Train.Backend)
	}
	switch {
	case in.Train.Device == "" || in.Train.Device == "cpu":
	case in.Train.Device == "cuda" && in.Train.Backend == "libtorch":
	case in.Train.Device == "cuda":
		return fmt.Errorf("pipeline input: train.device = \"cuda\" needs train.backend \"libtorch\", not %q", in.Train.Backend)
	default:
		return fmt.Errorf("pipeline input: train.device = %q: want cpu or cuda", in.Train.Device)
	}
	if len(in.Train.Spec) > 0 && !json.Valid(in.Train.Spec) {
		return fmt.Errorf("pipeline input: train.spec is not valid JSON")
	}
	if in.Eval.MaxSamples < 0 {
		return fmt.Errorf("pipeline input: eval.max_samples = %d: want >= 0", in.Eval.MaxSamples)
	}
	for i, x := range in.Eval.ExportAs {
		dtypes, ok := events.ExportDtypes[x.Format]
		if !ok {
			return fmt.Errorf("pipeline input: eval.export_as[%d].format = %q: want gguf or onnx", i, x.Format)
		}
		if !slices.Contains(dtypes, x.Dtype) {
			return fmt.Errorf("pipeline input: eval.export_as[%d].dtype = %q: a %s export is one of %v", i, x.Dtype, x.Format, dtypes)
		}
	}
	switch in.Eval.ExportBackend {
	case "", "gomlx", "libtorch", "ggml", "onnx":
	default:
		return fmt.Errorf("pipeline input: eval.export_backend = %q: want gomlx, libtorch, ggml or onnx (empty: ggml for gguf, onnx for onnx)", in.Eval.ExportBackend)
	}
	if a := in.Promote.Alias; a != "" {
		if !aliasPattern.MatchString(a) {
			return fmt.Errorf("pipeline input: promote.alias = %q: want lower-case letters, digits, '.', '_' or '-', at most 63, starting with a letter or digit", a)
		}
		if !seen[StageTrain] {
			return fmt.Errorf("pipeline input: promote.alias needs the %q stage (it promotes the checkpoint the run trains)", StageTrain)
		}
	}
	if err := badQueues(in.Queues); err != nil {
		return err
	}
	if len(in.Promote.MinMetrics) > 0 {
		if in.Promote.Alias == "" {
			return fmt.Errorf("pipeline input: promote.min_metrics without promote.alias")
		}
		if !seen[StageEval] {
			return fmt.Errorf("pipeline input: promote.min_metrics needs the %q stage", StageEval)
		}
	}
	// Later stages need what earlier ones produce, unless given.
	if seen[StageSynth] && !seen[StageIngest] && in.DatasetID == "" {
		return fmt.Errorf("pipeline input: dataset_id is required when stages omit %q", StageIngest)
	}
	if seen[StageTrain] && !seen[StageSynth] && in.SynthSetID == "" {
		return fmt.Errorf("pipeline input: synth_set_id is required when stages omit %q", StageSynth)
	}
	if seen[StageEval] && !seen[StageTrain] && in.RunID == "" {
		return fmt.Errorf("pipeline input: run_id is required when stages omit %q", StageTrain)
	}
	return nil
}

// badQueues names the first (in stage name order) entry of a pipeline
// input's queues that is not a stage or not a queue name.
func badQueues(queues map[string]string) error {
	for _, stage := range slices.Sorted(maps.Keys(queues)) { // sorted: the same error on every replay
		if !slices.Contains(KnownStages, stage) {
			return fmt.Errorf("pipeline input: queues[%q]: want a stage (%s)", stage, strings.Join(KnownStages, ", "))
		}
		if err := events.ValidQueue(queues[stage]); err != nil {
			return fmt.Errorf("pipeline input: queues[%q]: %w", stage, err)
		}
	}
	return nil
}

// PipelineResult is what a Pipeline run produced.
type PipelineResult struct {
	DatasetID   string             `json:"dataset_id,omitempty"`
	SynthSetID  string             `json:"synth_set_id,omitempty"`
	RunID       string             `json:"run_id,omitempty"`
	Checkpoints map[string]string  `json:"checkpoints,omitempty"`
	Metrics     map[string]float64 `json:"metrics,omitempty"`
	ReportKey   string             `json:"report_key,omitempty"`
	StagesRan   []string           `json:"stages_ran"`
	// Promoted is the promotion the run made (PipelineInput.Promote).
	Promoted *events.ModelPromoted `json:"promoted,omitempty"`
	// PromotionSkipped says which gate kept the run from promoting.
	PromotionSkipped string `json:"promotion_skipped,omitempty"`
}

// PromoteRequest is the Promote activity's input.
type PromoteRequest struct {
	Alias        string `json:"alias"`
	CheckpointID string `json:"checkpoint_id"`
}

// CommandInput is the bridge activity's input: which command to publish.
type CommandInput struct {
	// Service is the short service name ("ingest", "synth", "train", "eval")
	// or a service's query command ("train.describe");
	// the command goes to "<service>.requested" and the answer comes on
	// "<service>.completed" / "<service>.failed".
	Service string `json:"service"`
	// Queue is the command queue: the command goes to
	// events.CommandTopic(Service, Queue). Empty: the default queue.
	Queue string `json:"queue,omitempty"`
	// Payload is the command payload (an events.*Requested) without its
	// correlation id, which the bridge sets.
	Payload json.RawMessage `json:"payload"`
}

// TrainStatus answers the Train workflow's status query.
type TrainStatus struct {
	RunID string  `json:"run_id"`
	Stage string  `json:"stage"`
	Step  int64   `json:"step"`
	Total int64   `json:"total"`
	Loss  float64 `json:"loss"`
	State string  `json:"state"` // running, completed, failed
}
