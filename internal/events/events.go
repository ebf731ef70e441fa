// Package events is groundmesh's event contract: topic names, the metadata
// every message carries, and the typed payloads of commands, progress, and
// facts. Services, the Temporal bridge and the HTTP gateway all speak these
// types; nothing else crosses a service boundary.
//
// Naming: "<svc>.requested" is a command; "<svc>.progress", "<svc>.completed"
// and "<svc>.failed" answer it and carry the command's correlation id;
// "dataset.ingested", "checkpoint.saved", "evaluation.completed",
// "model.promoted" and "model.exported" are facts, published through the transactional outbox in
// the same Postgres transaction as the state change.
package events

import (
	"encoding/json"
	"time"
)

// SchemaVersion is the payload schema version written into every message's
// metadata. A consumer rejects (poison queue) a major version it does not know.
const SchemaVersion = "1"

// Metadata keys.
const (
	MetaSchemaVersion = "schema_version"
	MetaCorrelationID = "correlation_id"
	MetaEventType     = "event_type"
	MetaTraceParent   = "traceparent"
	MetaTraceState    = "tracestate"
	// MetaPublishedAt is when the message was made (RFC 3339, UTC, ns):
	// a consumer's lag is the time from it to the handler's start.
	MetaPublishedAt = "published_at"
	// MetaWorker names the worker process (its --worker-id) that handled
	// a command, on every answer: progress, completed and failed.
	MetaWorker = "worker"
)

// Topics.
const (
	TopicIngestRequested = "ingest.requested"
	TopicIngestProgress  = "ingest.progress"
	TopicIngestCompleted = "ingest.completed"
	TopicIngestFailed    = "ingest.failed"
	TopicDatasetIngested = "dataset.ingested" // fact

	TopicSynthRequested = "synth.requested"
	TopicSynthProgress  = "synth.progress"
	TopicSynthCompleted = "synth.completed"
	TopicSynthFailed    = "synth.failed"

	// "synth.describe.*" asks services/synth for a ready synth set's facts
	// (a SynthCompleted) without building: how the Train workflow of a
	// pipeline that starts at train, with only a synth set id, fills
	// TrainRequested.Synth.
	TopicSynthDescribeRequested = "synth.describe.requested"
	TopicSynthDescribeCompleted = "synth.describe.completed"
	TopicSynthDescribeFailed    = "synth.describe.failed"

	TopicTrainRequested  = "train.requested"
	TopicTrainProgress   = "train.progress"
	TopicTrainCompleted  = "train.completed"
	TopicTrainFailed     = "train.failed"
	TopicCheckpointSaved = "checkpoint.saved" // fact

	// "train.describe.*" asks services/train for a finished run's facts
	// (RunFacts in a TrainCompleted) without training: how the Evaluate
	// workflow completes an evaluation requested with only a run id.
	TopicTrainDescribeRequested = "train.describe.requested"
	TopicTrainDescribeCompleted = "train.describe.completed"
	TopicTrainDescribeFailed    = "train.describe.failed"

	// "train.export.*" asks services/train to write a checkpoint in a
	// deployment format (ExportRequested, answered with ExportCompleted).
	TopicTrainExportRequested = "train.export.requested"
	TopicTrainExportCompleted = "train.export.completed"
	TopicTrainExportFailed    = "train.export.failed"

	TopicEvalRequested      = "eval.requested"
	TopicEvalProgress       = "eval.progress"
	TopicEvalCompleted      = "eval.completed"
	TopicEvalFailed         = "eval.failed"
	TopicEvaluationComplete = "evaluation.completed" // fact

	TopicGroundRequested = "ground.requested"
	TopicGroundCompleted = "ground.completed"
	TopicGroundFailed    = "ground.failed"

	TopicModelPromoted = "model.promoted" // fact

	// TopicModelExported is the fact of an export recorded by
	// services/train (ExportCompleted), however it was asked for: the
	// train.export command's answer or `groundmesh export`.
	TopicModelExported = "model.exported" // fact

	// TopicPoison receives messages a consumer could not process, with the
	// reason in metadata ("poison_reason") and the original topic.
	TopicPoison = "groundmesh.poison"
)

// Progress reports long work; the bridge turns it into an activity heartbeat.
type Progress struct {
	CorrelationID string          `json:"correlation_id"`
	Service       string          `json:"service"`
	Phase         string          `json:"phase,omitempty"` // e.g. "read", "stage2"
	Done          int64           `json:"done"`
	Total         int64           `json:"total"`
	Message       string          `json:"message,omitempty"`
	Details       json.RawMessage `json:"details,omitempty"` // service-specific (e.g. step, loss)
	At            time.Time       `json:"at"`
	// Worker is the worker process handling the command (its --worker-id):
	// on the bus it travels in the MetaWorker metadata key (a consumer
	// older than the field would reject it in the payload); the bridge
	// fills it in before it records the heartbeat.
	Worker string `json:"worker,omitempty"`
}

// Failed answers a command that could not be done.
type Failed struct {
	CorrelationID string `json:"correlation_id"`
	Service       string `json:"service"`
	Reason        string `json:"reason"`
	// Retryable is false for bad input: the workflow must not retry.
	Retryable bool `json:"retryable"`
	// Code classifies the failure for callers that act on it without
	// parsing Reason (services/ground's reason codes, e.g. "image_too_large").
	Code string `json:"code,omitempty"`
	// Worker is the worker process that handled the command: on the bus
	// it travels in the MetaWorker metadata key; the bridge fills it in.
	Worker string `json:"worker,omitempty"`
}

// IngestRequested asks services/ingest to ingest a dataset.
type IngestRequested struct {
	CorrelationID string `json:"correlation_id"`
	// Queue is the command queue (capability) the request was routed to;
	// empty: DefaultQueue. See CommandTopic.
	Queue string `json:"queue,omitempty"`
	// Format: coco, refcoco, vg, flickr30k, odvg, or scenes (built-in world).
	Format string `json:"format"`
	// Path is the dataset root (or annotation file) on a filesystem the
	// service can read. For format "scenes" with Path empty, the service
	// generates the built-in world under its data dir first.
	Path string `json:"path"`
	Name string `json:"name"`
	// Scenes configures the generated world (format "scenes" only).
	Scenes *ScenesSpec `json:"scenes,omitempty"`
	// MaxBadFraction fails the ingest when more than this fraction of records
	// are rejected (0 means the default, 0.05).
	MaxBadFraction float64 `json:"max_bad_fraction,omitempty"`
}

// ScenesSpec configures the built-in procedurally generated scene world.
type ScenesSpec struct {
	Seed   int64 `json:"seed"`
	Images int   `json:"images"` // total over all splits
	Size   int   `json:"size"`   // image side in pixels
}

// DatasetIngested is the fact (and the completion) of an ingest.
type DatasetIngested struct {
	CorrelationID string           `json:"correlation_id"`
	DatasetID     string           `json:"dataset_id"` // uuid of the dataset version row
	Name          string           `json:"name"`
	Version       string           `json:"version"` // sha256 of the manifest
	Format        string           `json:"format"`
	Root          string           `json:"root"`
	Reused        bool             `json:"reused"` // same files were already ingested
	Counts        map[string]int64 `json:"counts"` // images, objects, refs, relations, regions, rejected
	Splits        map[string]int64 `json:"splits"` // images per split
}

// SynthRequested asks services/synth to build alignment data from a dataset.
type SynthRequested struct {
	CorrelationID string `json:"correlation_id"`
	// Queue is the command queue (capability) the request was routed to;
	// empty: DefaultQueue. See CommandTopic.
	Queue      string   `json:"queue,omitempty"`
	DatasetID  string   `json:"dataset_id"`
	Seed       int64    `json:"seed"`
	Samples    int      `json:"samples"`          // target total samples
	Stages     []string `json:"stages,omitempty"` // default all: stage1, stage2, stage3
	RewriteURL string   `json:"rewrite_url,omitempty"`
	// TaskWeights splits a stage's samples between its tasks (synth
	// BuildOptions.TaskWeights; missing tasks keep their default).
	TaskWeights map[string]float64 `json:"task_weights,omitempty"`
	// Mirror is the fraction of training-split REC and POPE records asked
	// about their image mirrored left to right (synth BuildOptions.Mirror).
	Mirror float64 `json:"mirror,omitempty"`
}

// SynthCompleted answers SynthRequested.
type SynthCompleted struct {
	CorrelationID string           `json:"correlation_id"`
	SynthSetID    string           `json:"synth_set_id"`
	DatasetID     string           `json:"dataset_id"`
	ManifestKey   string           `json:"manifest_key"` // blob key of the manifest
	ContentHash   string           `json:"content_hash"`
	Counts        map[string]int64 `json:"counts"` // per task/direction/scale
	Reused        bool             `json:"reused"`
	// DatasetRoot is the directory the set's image paths are relative to
	// (the dataset version's root, as services/ingest recorded it);
	// absent from answers of services older than the field.
	DatasetRoot string `json:"dataset_root,omitempty"`
}

// Facts are the synth set's facts a training run needs.
func (c SynthCompleted) Facts() *SynthFacts {
	return &SynthFacts{SynthSetID: c.SynthSetID, ManifestKey: c.ManifestKey, DatasetID: c.DatasetID, DatasetRoot: c.DatasetRoot}
}

// SynthDescribeRequested asks services/synth for the facts of a ready
// synth set (answered with a SynthCompleted on
// "synth.describe.completed"); it builds nothing. A set that does not
// exist or is not ready is bad input.
type SynthDescribeRequested struct {
	CorrelationID string `json:"correlation_id"`
	SynthSetID    string `json:"synth_set_id"`
}

// SynthFacts is what services/train needs to know about the synth set it
// trains on, so that it need not read services/synth's and ingest's
// tables: where the set's manifest is and the directory its records'
// image paths are relative to.
type SynthFacts struct {
	SynthSetID string `json:"synth_set_id"`
	// ManifestKey is the blob key of the set's manifest.
	ManifestKey string `json:"manifest_key"`
	// DatasetID is the dataset version the set was built from and
	// DatasetRoot its root directory.
	DatasetID   string `json:"dataset_id,omitempty"`
	DatasetRoot string `json:"dataset_root,omitempty"`
}

// TrainRequested asks services/train to run the three stages.
type TrainRequested struct {
	CorrelationID string `json:"correlation_id"`
	// Queue is the command queue (capability) the request was routed to;
	// empty: DefaultQueue. See CommandTopic.
	Queue      string `json:"queue,omitempty"`
	RunID      string `json:"run_id"` // uuid; the same id resumes a run
	SynthSetID string `json:"synth_set_id"`
	Backend    string `json:"backend"` // gomlx (default), libtorch, onnx, ggml
	// Device is the backend's device: cpu (the default) or cuda (libtorch).
	Device string          `json:"device,omitempty"`
	Spec   json.RawMessage `json:"spec,omitempty"` // services/train run spec; defaults when empty
	// Synth is the synth set's facts (its SynthSetID, when set, must be
	// SynthSetID): what synth answered when it ran in the same pipeline,
	// else synth.describe's answer. services/train records them with the
	// run; a request without them is bad input unless it resumes a run
	// that recorded them.
	Synth *SynthFacts `json:"synth,omitempty"`
}

// TrainCompleted answers TrainRequested (and TrainDescribeRequested).
type TrainCompleted struct {
	CorrelationID string             `json:"correlation_id"`
	RunID         string             `json:"run_id"`
	Checkpoints   map[string]string  `json:"checkpoints"` // stage -> final checkpoint id
	FinalLoss     map[string]float64 `json:"final_loss"`  // stage -> last loss
	// Run is what the run's consumers (services/eval) need to know about
	// it; absent from answers of services older than the field.
	Run *RunFacts `json:"run,omitempty"`
}

// TrainDescribeRequested asks services/train for the facts of a completed
// run (answered with a TrainCompleted on "train.describe.completed"); it
// trains nothing. A run that does not exist or has not completed is bad
// input.
type TrainDescribeRequested struct {
	CorrelationID string `json:"correlation_id"`
	RunID         string `json:"run_id"`
}

// ExportRequested asks services/train to write a checkpoint in a
// deployment format: Format "gguf" or "onnx", Dtype "float32" (default)
// or another of ExportDtypes[Format]. Exporting the same checkpoint,
// format and dtype again answers the recorded export.
type ExportRequested struct {
	CorrelationID string `json:"correlation_id"`
	CheckpointID  string `json:"checkpoint_id"`
	Format        string `json:"format"`
	Dtype         string `json:"dtype,omitempty"`
}

// ExportCompleted is an export: the file's blob key, sha256 and size, the
// checkpoint (and its sha256) and run it came from, and the model config
// hash both share.
type ExportCompleted struct {
	CorrelationID     string    `json:"correlation_id"`
	ExportID          string    `json:"export_id"`
	CheckpointID      string    `json:"checkpoint_id"`
	CheckpointSHA256  string    `json:"checkpoint_sha256"`
	RunID             string    `json:"run_id"`
	Format            string    `json:"format"`
	Dtype             string    `json:"dtype"`
	BlobKey           string    `json:"blob_key"`
	SHA256            string    `json:"sha256"`
	Bytes             int64     `json:"bytes"`
	ModelConfigSHA256 string    `json:"model_config_sha256"`
	CreatedAt         time.Time `json:"created_at"`
	Reused            bool      `json:"reused"`
}

// RunFacts describes a training run for the services that use its
// checkpoints, so that they need not read services/train's tables (nor
// the synth and dataset tables the run was trained from): services/train
// answers them in TrainCompleted, and an EvalRequested carries them.
type RunFacts struct {
	SynthSetID string `json:"synth_set_id"`
	// ManifestKey is the blob key of the synth set's manifest.
	ManifestKey string `json:"manifest_key"`
	// DatasetID is the dataset version the synth set was built from, and
	// DatasetRoot the directory its records' image paths are relative to.
	DatasetID   string `json:"dataset_id,omitempty"`
	DatasetRoot string `json:"dataset_root,omitempty"`
	// Backend is the compute backend key the run trained on ("gomlx",
	// "libtorch:cuda"); a consumer loads its checkpoints there.
	Backend string `json:"backend"`
	// ModelConfig is the run's model architecture (JSON of model.Config),
	// ModelConfigSHA256 its model.ConfigSHA256 (the config_sha256 its
	// shards and checkpoints carry), and TokenizerKey the blob key of the
	// run's tokenizer.
	ModelConfig       json.RawMessage `json:"model_config"`
	ModelConfigSHA256 string          `json:"model_config_sha256"`
	TokenizerKey      string          `json:"tokenizer_key"`
	// Checkpoints are the checkpoints to use (services/train answers the
	// final one of each stage), in stage order.
	Checkpoints []CheckpointRef `json:"checkpoints"`
	// Losses is the logged training loss of each stage, thinned to at most
	// MaxLossPoints points a stage (the first and last always kept).
	Losses map[string][]LossPoint `json:"losses,omitempty"`
}

// MaxLossPoints bounds RunFacts.Losses per stage.
const MaxLossPoints = 512

// CheckpointRef names a checkpoint and its content.
type CheckpointRef struct {
	ID      string `json:"id"`
	Stage   string `json:"stage"`
	Step    int    `json:"step"`
	BlobKey string `json:"blob_key"`
	// SHA256 is the hex sha256 of the checkpoint file.
	SHA256 string `json:"sha256"`
	// Objective is what the stage that wrote it minimized: "" (every
	// loss) or "grounder" (the grounding head's loss alone, the language
	// model left untrained; compute.ObjectiveGrounder). Empty for a run
	// recorded before the field, which consumers read as "".
	Objective string `json:"objective,omitempty"`
}

// LossPoint is one logged training step.
type LossPoint struct {
	Step int     `json:"step"`
	Loss float64 `json:"loss"`
}

// CheckpointSaved is the fact of a checkpoint written and recorded.
type CheckpointSaved struct {
	CheckpointID string  `json:"checkpoint_id"`
	RunID        string  `json:"run_id"`
	Stage        string  `json:"stage"`
	Step         int     `json:"step"`
	Loss         float64 `json:"loss"`
	BlobKey      string  `json:"blob_key"`
	SHA256       string  `json:"sha256"`
	// ModelConfigSHA256 is the model.ConfigSHA256 of the architecture the
	// checkpoint's weights belong to (the checkpoint file's own
	// config_sha256).
	ModelConfigSHA256 string `json:"model_config_sha256,omitempty"`
}

// EvalRequested asks services/eval to score a run's checkpoints.
// services/eval reads nothing about the run but Run: a request without it
// is bad input (the Evaluate workflow fills it from services/train).
type EvalRequested struct {
	CorrelationID string `json:"correlation_id"`
	// Queue is the command queue (capability) the request was routed to;
	// empty: DefaultQueue. See CommandTopic.
	Queue string `json:"queue,omitempty"`
	RunID string `json:"run_id"`
	// Run is the run's facts: its checkpoints (with their sha256), model
	// config, tokenizer, synth set and dataset, and loss curve.
	Run *RunFacts `json:"run,omitempty"`
	// CheckpointIDs picks among Run.Checkpoints; default all of them.
	CheckpointIDs []string `json:"checkpoint_ids,omitempty"`
	Splits        []string `json:"splits,omitempty"`      // default: val, test, heldout
	MaxSamples    int      `json:"max_samples,omitempty"` // per benchmark and split
	// MaxSamplesBy overrides MaxSamples for the benchmarks it names
	// ("rec", "pope_random", ...); 0 there means every record.
	MaxSamplesBy map[string]int `json:"max_samples_by,omitempty"`
	Report       bool           `json:"report"`
	// ExportAs asks the Evaluate workflow to export the run's final
	// checkpoint in each of these forms (services/train, train.export)
	// and to score each export too, as stage "<stage>@<format>-<dtype>"
	// (e.g. "stage3@gguf-q8_0").
	ExportAs []ExportSpec `json:"export_as,omitempty"`
	// Exports are the exports to score (what train.export answered):
	// each is scored in place of its checkpoint, which must be among
	// Run.Checkpoints, on ExportBackend.
	Exports []ExportCompleted `json:"exports,omitempty"`
	// ExportBackend is the compute backend that serves the exports
	// (default: each format's, ExportBackend).
	ExportBackend string `json:"export_backend,omitempty"`
	// ExportBenchmarks are the benchmarks the exports are scored on
	// ("rec", "pope_random", ...); default every one their checkpoint is.
	ExportBenchmarks []string `json:"export_benchmarks,omitempty"`
}

// ExportDtypes are the deployment formats and the dtypes each holds its
// weights in: GGUF (for the ggml backend) and ONNX (a bundle of ONNX
// models, for ONNX Runtime).
var ExportDtypes = map[string][]string{
	"gguf": {"float32", "float16", "q8_0", "q4_0"},
	"onnx": {"float32", "float16"},
}

// ExportBackend is the compute backend that serves a format's exports
// unless a request names another: ggml for GGUF, onnx for ONNX.
func ExportBackend(format string) string {
	if format == "onnx" {
		return "onnx"
	}
	return "ggml"
}

// ExportSpec is a deployment form: a Format and Dtype of ExportDtypes.
type ExportSpec struct {
	Format string `json:"format"`
	Dtype  string `json:"dtype"`
}

// ExportStage is the stage name an export of a checkpoint of stage is
// scored under: "<stage>@<format>-<dtype>".
func ExportStage(stage, format, dtype string) string { return stage + "@" + format + "-" + dtype }

// ModelVersion names what serves grounding requests: a checkpoint id, or
// its export "<checkpoint>@<format>-<dtype>" (the form ExportStage gives a
// stage) when format is set.
func ModelVersion(checkpointID, format, dtype string) string {
	if format == "" {
		return checkpointID
	}
	return ExportStage(checkpointID, format, dtype)
}

// EvaluationCompleted is the fact (and completion) of an evaluation.
type EvaluationCompleted struct {
	CorrelationID string             `json:"correlation_id"`
	RunID         string             `json:"run_id"`
	EvaluationIDs []string           `json:"evaluation_ids"`
	Metrics       map[string]float64 `json:"metrics"` // "<stage>/<bench>/<split>/<metric>"
	ReportKey     string             `json:"report_key,omitempty"`
}

// GroundRequested asks services/ground where something is in an image.
// Exactly one of Image and ImageKey names the image, and one of
// Expression and Prompt the question.
type GroundRequested struct {
	CorrelationID string `json:"correlation_id"`
	// CheckpointID picks the model; default: the newest checkpoint of the
	// most recently completed training run.
	CheckpointID string `json:"checkpoint_id,omitempty"`
	// ImageKey is the image's blob key.
	ImageKey string `json:"image_key,omitempty"`
	// Prompt is a whole human turn with one "<image>" placeholder (one is
	// put first when it has none), for callers that phrase the question
	// themselves.
	Prompt string `json:"prompt,omitempty"`
	// Image is the encoded image (PNG or JPEG) inline.
	Image []byte `json:"image,omitempty"`
	// Expression is the referring expression ("the red square left of the
	// circle"); ground asks for its box in the trained phrasing.
	Expression string `json:"expression,omitempty"`
	// ReplyTopic is the prefix of the answer topics: the answer goes to
	// "<ReplyTopic>.completed" or "<ReplyTopic>.failed"; default "ground".
	ReplyTopic string `json:"reply_topic,omitempty"`
	// Deadline is when the caller stops waiting: work not done by then is
	// dropped and answered with the code "deadline_exceeded".
	Deadline time.Time `json:"deadline,omitzero"`
	// Attention asks for the model's attention over the image patches.
	Attention bool `json:"attention,omitempty"`
	// Export serves the checkpoint's export in this format and dtype (what
	// services/train recorded for it) instead of the checkpoint file. The
	// same can be said in CheckpointID as "<checkpoint>@<format>-<dtype>"
	// (the stage naming of an export's scores, ExportStage).
	Export *ExportSpec `json:"export,omitempty"`
	// Backend is the compute backend that serves the request; default:
	// the run's for a checkpoint, the format's configured export backend
	// (else the run's) for an export.
	Backend string `json:"backend,omitempty"`
}

// GroundCompleted answers GroundRequested.
type GroundCompleted struct {
	CorrelationID string `json:"correlation_id"`
	// Text is the answer as the model wrote it ("[0.123, 0.456, 0.789, 0.900]").
	Text string `json:"text"`
	// Box is the first box in pixel xyxy of the original image.
	Box []float64 `json:"box,omitempty"`
	// Boxes are every box of the answer in both frames.
	Boxes []GroundBox `json:"boxes"`
	// ModelVersion is what answered: the checkpoint id, or for an export
	// "<checkpoint>@<format>-<dtype>" (ModelVersion). CheckpointID, RunID,
	// Stage and Step are where it came from; Format and Dtype the export's
	// (empty for the checkpoint itself); Backend the compute backend that
	// ran it.
	ModelVersion string `json:"model_version"`
	CheckpointID string `json:"checkpoint_id,omitempty"`
	Format       string `json:"format,omitempty"`
	Dtype        string `json:"dtype,omitempty"`
	Backend      string `json:"backend,omitempty"`
	RunID        string `json:"run_id"`
	Stage        string `json:"stage"`
	Step         int    `json:"step"`
	// Width and Height are the image's size in pixels.
	Width  int `json:"width"`
	Height int `json:"height"`
	// LatencyMS is the time ground spent on the request, from receiving it.
	LatencyMS float64 `json:"latency_ms"`
	// Attention, when asked for and the backend returns it, is the mean
	// attention of the answer's box tokens over the image's patches
	// (row-major square grid over the image padded to a square).
	Attention []float32 `json:"attention,omitempty"`
}

// GroundBox is one box of a grounding answer.
type GroundBox struct {
	// Pixel is x1, y1, x2, y2 in the original image's pixels.
	Pixel [4]float64 `json:"pixel"`
	// Norm is the box normalized to the image padded to a square, as the
	// model writes it.
	Norm [4]float64 `json:"norm"`
	// Phrase is the expression the box grounds.
	Phrase string `json:"phrase"`
	// Score is the model's confidence, when the backend reports one.
	Score *float64 `json:"score,omitempty"`
}

// ModelPromoted is the fact of a checkpoint promoted to an alias
// ("production"): requests that name no checkpoint are served by it from
// then on.
type ModelPromoted struct {
	Alias        string `json:"alias"`
	CheckpointID string `json:"checkpoint_id"`
	// ModelVersion is what the alias serves: the checkpoint id, or
	// "<checkpoint>@<format>-<dtype>" for an export (ModelVersion).
	ModelVersion string `json:"model_version,omitempty"`
	// Format and Dtype name the export served (empty: the checkpoint
	// itself), ExportBlobKey and ExportSHA256 its file as services/train
	// recorded it, and Backend the backend promoted with it (empty: the
	// default).
	Format        string    `json:"format,omitempty"`
	Dtype         string    `json:"dtype,omitempty"`
	ExportBlobKey string    `json:"export_blob_key,omitempty"`
	ExportSHA256  string    `json:"export_sha256,omitempty"`
	Backend       string    `json:"backend,omitempty"`
	RunID         string    `json:"run_id"`
	Stage         string    `json:"stage"`
	Step          int       `json:"step"`
	PromotedAt    time.Time `json:"promoted_at"`
}
