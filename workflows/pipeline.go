package workflows

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/groundmesh/groundmesh/internal/events"
)

// ErrTypeBadInput is the application error type of invalid workflow input
// and of commands a service rejected as bad input; it is never retried.
const ErrTypeBadInput = "BadInput"

// ErrTypeServiceFailed is the application error type of a command a service
// could not do.
const ErrTypeServiceFailed = "ServiceFailed"

func badInput(err error) error {
	return temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeBadInput, nil)
}

// Pipeline runs ingest -> synth -> train -> eval as child workflows, each
// only when listed in the input's stages. A stage that is listed but whose
// service is not deployed fails the run with the service's error (the
// command times out on its schedule-to-start deadline), never silently.
func Pipeline(ctx workflow.Context, in PipelineInput) (PipelineResult, error) {
	in = in.WithDefaults()
	if err := in.Validate(); err != nil {
		return PipelineResult{}, badInput(err)
	}
	logger := workflow.GetLogger(ctx)
	info := workflow.GetInfo(ctx)
	search := searchUpdater(ctx)
	res := PipelineResult{DatasetID: in.DatasetID, SynthSetID: in.SynthSetID, RunID: in.RunID}
	search(SearchBackend.ValueSet(in.Train.Backend))
	if res.DatasetID != "" {
		search(SearchDataset.ValueSet(res.DatasetID))
	}
	if res.RunID == "" {
		// Deterministic: derived from the workflow's own id, so a retried
		// pipeline resumes the same training run.
		res.RunID = uuidFromString(info.WorkflowExecution.ID)
	}
	want := map[string]bool{}
	for _, s := range in.Stages {
		want[s] = true
	}
	child := func(name, id string) workflow.Context {
		return workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
			WorkflowID: info.WorkflowExecution.ID + "/" + id,
			TaskQueue:  info.TaskQueueName,
		})
	}

	if want[StageIngest] {
		search(SearchStage.ValueSet(StageIngest))
		var out events.DatasetIngested
		req := events.IngestRequested{
			Queue:  in.Queues[StageIngest],
			Format: in.Dataset.Format, Path: in.Dataset.Path, Name: in.Dataset.Name,
			MaxBadFraction: in.Dataset.MaxBadFraction,
		}
		if in.Dataset.Format == "scenes" {
			req.Scenes = &events.ScenesSpec{Seed: in.Dataset.Seed, Images: in.Dataset.Images, Size: in.Dataset.Size}
		}
		if err := workflow.ExecuteChildWorkflow(child(IngestWorkflowName, "ingest"), Ingest, req).Get(ctx, &out); err != nil {
			return res, fmt.Errorf("ingest: %w", err)
		}
		res.DatasetID = out.DatasetID
		search(SearchDataset.ValueSet(out.DatasetID))
		res.StagesRan = append(res.StagesRan, StageIngest)
		logger.Info("ingest done", "dataset_id", out.DatasetID, "reused", out.Reused)
	}
	var synthFacts *events.SynthFacts // what synth answered about the set, when it ran here
	if want[StageSynth] {
		search(SearchStage.ValueSet(StageSynth))
		var out events.SynthCompleted
		req := events.SynthRequested{Queue: in.Queues[StageSynth], DatasetID: res.DatasetID, Seed: in.Synth.Seed, Samples: in.Synth.Samples, RewriteURL: in.Synth.RewriteURL, TaskWeights: in.Synth.TaskWeights, Mirror: in.Synth.Mirror}
		if err := workflow.ExecuteChildWorkflow(child(SynthesizeWorkflowName, "synth"), Synthesize, req).Get(ctx, &out); err != nil {
			return res, fmt.Errorf("synth: %w", err)
		}
		res.SynthSetID = out.SynthSetID
		synthFacts = out.Facts()
		res.StagesRan = append(res.StagesRan, StageSynth)
	}
	var trained *events.RunFacts // what train answered about the run, when it ran here
	if want[StageTrain] {
		search(SearchStage.ValueSet(StageTrain))
		var out events.TrainCompleted
		req := events.TrainRequested{Queue: in.Queues[StageTrain], RunID: res.RunID, SynthSetID: res.SynthSetID, Backend: in.Train.Backend, Device: in.Train.Device, Spec: in.Train.Spec}
		if workflow.GetVersion(ctx, trainSynthFactsVersion, workflow.DefaultVersion, 1) == 1 {
			// The train request carries what synth answered; without it
			// (synth did not run here) the Train workflow asks
			// services/synth.
			req.Synth = synthFacts
		}
		if err := workflow.ExecuteChildWorkflow(child(TrainWorkflowName, "train"), Train, req).Get(ctx, &out); err != nil {
			return res, fmt.Errorf("train: %w", err)
		}
		res.Checkpoints = out.Checkpoints
		trained = out.Run
		res.StagesRan = append(res.StagesRan, StageTrain)
	}
	if want[StageEval] {
		search(SearchStage.ValueSet(StageEval))
		var out events.EvaluationCompleted
		req := events.EvalRequested{Queue: in.Queues[StageEval], RunID: res.RunID, Splits: in.Eval.Splits, MaxSamples: in.Eval.MaxSamples, MaxSamplesBy: map[string]int(in.Eval.MaxSamplesBy), Report: *in.Eval.Report,
			ExportAs: in.Eval.ExportAs, ExportBackend: in.Eval.ExportBackend, ExportBenchmarks: in.Eval.ExportBenchmarks}
		if workflow.GetVersion(ctx, evalRunFactsVersion, workflow.DefaultVersion, 1) == 1 {
			// The eval request carries what train answered; without it
			// (train did not run here, or answered no facts) the Evaluate
			// workflow asks services/train.
			req.Run = trained
		}
		if err := workflow.ExecuteChildWorkflow(child(EvaluateWorkflowName, "eval"), Evaluate, req).Get(ctx, &out); err != nil {
			return res, fmt.Errorf("eval: %w", err)
		}
		res.Metrics = maps.Clone(out.Metrics)
		res.ReportKey = out.ReportKey
		res.StagesRan = append(res.StagesRan, StageEval)
	}
	if in.Promote.Alias != "" {
		search(SearchStage.ValueSet("promote"))
		if err := promote(ctx, in.Promote, &res); err != nil {
			return res, fmt.Errorf("promote: %w", err)
		}
	}
	search(SearchStage.ValueSet("done"))
	return res, nil
}

// promote points the alias at the run's final checkpoint unless a gate
// fails, which it records in res.PromotionSkipped.
func promote(ctx workflow.Context, in PromoteInput, res *PipelineResult) error {
	final := finalCheckpoint(res.Checkpoints)
	if final == "" {
		return badInput(fmt.Errorf("the run recorded no checkpoint to promote"))
	}
	if why := failedGate(in.MinMetrics, res.Metrics); why != "" {
		res.PromotionSkipped = why
		workflow.GetLogger(ctx).Info("promotion skipped", "alias", in.Alias, "checkpoint_id", final, "reason", why)
		return nil
	}
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: 30 * time.Second, MaximumAttempts: 5,
			NonRetryableErrorTypes: []string{ErrTypeBadInput},
		},
	})
	var a *Activities
	var p events.ModelPromoted
	if err := workflow.ExecuteActivity(actx, a.Promote, PromoteRequest{Alias: in.Alias, CheckpointID: final}).Get(ctx, &p); err != nil {
		return err
	}
	res.Promoted = &p
	return nil
}

// finalCheckpoint is the checkpoint of the last training stage ("stage3"
// after "stage2" after "stage1": the stage names sort in order).
func finalCheckpoint(byStage map[string]string) string {
	stages := slices.Sorted(maps.Keys(byStage)) // the map's order does not matter once sorted
	if len(stages) == 0 {
		return ""
	}
	return byStage[stages[len(stages)-1]]
}

// failedGate names the first gate (in name order) that metrics fail, or "".
func failedGate(gates, metrics map[string]float64) string {
	for _, name := range slices.Sorted(maps.Keys(gates)) {
		v, ok := metrics[name]
		switch {
		case !ok:
			return fmt.Sprintf("gate %s: the evaluation has no such metric", name)
		case v < gates[name]:
			return fmt.Sprintf("gate %s: %.4g < %.4g", name, v, gates[name])
		}
	}
	return ""
}

// commandOptions are the bridge activity's options per service. The
// heartbeat timeout bounds how long a service may stay silent: services
// publish progress more often than that.
func commandOptions(service string) workflow.ActivityOptions {
	o := workflow.ActivityOptions{
		ScheduleToStartTimeout: time.Minute,
		StartToCloseTimeout:    time.Hour,
		HeartbeatTimeout:       3 * time.Minute,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:        2 * time.Second,
			BackoffCoefficient:     2,
			MaximumInterval:        time.Minute,
			MaximumAttempts:        4,
			NonRetryableErrorTypes: []string{ErrTypeBadInput},
		},
	}
	switch service {
	case "train":
		o.StartToCloseTimeout = 4 * time.Hour
	case "train.describe", "synth.describe":
		// A few reads: no progress to wait for.
		o.StartToCloseTimeout = 5 * time.Minute
	case "train.export":
		// Reads a checkpoint, writes one file.
		o.StartToCloseTimeout = 15 * time.Minute
	}
	return o
}

// runCommand runs one service command on a queue ("" is the default
// queue) through the Command activity.
func runCommand(ctx workflow.Context, service, queue string, payload any, out any) error {
	raw, err := json.Marshal(payload)
	if err != nil {
		return badInput(fmt.Errorf("encode %s command: %w", service, err))
	}
	actx := workflow.WithActivityOptions(ctx, commandOptions(service))
	var a *Activities
	var result json.RawMessage
	if err := workflow.ExecuteActivity(actx, a.Command, CommandInput{Service: service, Queue: queue, Payload: raw}).Get(ctx, &result); err != nil {
		return err
	}
	if err := json.Unmarshal(result, out); err != nil {
		return fmt.Errorf("decode %s result: %w", service, err)
	}
	return nil
}

// Ingest ingests one dataset through services/ingest.
func Ingest(ctx workflow.Context, req events.IngestRequested) (events.DatasetIngested, error) {
	var out events.DatasetIngested
	err := runCommand(ctx, "ingest", req.Queue, req, &out)
	return out, err
}

// Export writes a checkpoint in a deployment format (a GGUF file in the
// blob store, recorded beside its checkpoint) through services/train.
func Export(ctx workflow.Context, req events.ExportRequested) (events.ExportCompleted, error) {
	var out events.ExportCompleted
	if req.CheckpointID == "" {
		return out, badInput(fmt.Errorf("export input: checkpoint_id is required"))
	}
	// Served by every train worker on the default queue.
	err := runCommand(ctx, "train.export", "", req, &out)
	return out, err
}

// Synthesize builds a synth set through services/synth.
func Synthesize(ctx workflow.Context, req events.SynthRequested) (events.SynthCompleted, error) {
	var out events.SynthCompleted
	if req.DatasetID == "" {
		return out, badInput(fmt.Errorf("synthesize input: dataset_id is required"))
	}
	err := runCommand(ctx, "synth", req.Queue, req, &out)
	return out, err
}

// Train runs the three training stages through services/train. Its status
// query answers the current stage, step and loss, fed by the bridge's
// throttled progress signals. A request without the synth set's facts
// (a pipeline that starts at train) first gets them from services/synth
// ("synth.describe"): services/train reads no table of synth's.
func Train(ctx workflow.Context, req events.TrainRequested) (events.TrainCompleted, error) {
	var out events.TrainCompleted
	if req.SynthSetID == "" {
		return out, badInput(fmt.Errorf("train input: synth_set_id is required"))
	}
	if req.RunID == "" {
		req.RunID = uuidFromString(workflow.GetInfo(ctx).WorkflowExecution.ID)
	}
	if req.Backend == "" {
		req.Backend = "gomlx"
	}
	status := TrainStatus{RunID: req.RunID, State: "running"}
	if err := workflow.SetQueryHandler(ctx, StatusQuery, func() (TrainStatus, error) { return status, nil }); err != nil {
		return out, err
	}
	sigs := workflow.GetSignalChannel(ctx, ProgressSignal)
	workflow.Go(ctx, func(gctx workflow.Context) {
		for {
			var p events.Progress
			if !sigs.Receive(gctx, &p) {
				return
			}
			status.Stage, status.Step, status.Total = p.Phase, p.Done, p.Total
			var d struct {
				Loss float64 `json:"loss"`
			}
			if len(p.Details) > 0 && json.Unmarshal(p.Details, &d) == nil {
				status.Loss = d.Loss
			}
		}
	})
	if req.Synth == nil && workflow.GetVersion(ctx, trainSynthFactsVersion, workflow.DefaultVersion, 1) == 1 {
		var set events.SynthCompleted
		// A query of synth's tables, answered by any synth worker: it
		// always goes to the default queue.
		if err := runCommand(ctx, "synth.describe", "", events.SynthDescribeRequested{SynthSetID: req.SynthSetID}, &set); err != nil {
			status.State = "failed"
			return out, fmt.Errorf("describe synth set %s: %w", req.SynthSetID, err)
		}
		req.Synth = set.Facts()
	}
	err := runCommand(ctx, "train", req.Queue, req, &out)
	if err != nil {
		status.State = "failed"
		return out, err
	}
	status.State = "completed"
	return out, nil
}

// Change ids of workflow.GetVersion markers: histories recorded before a
// change replay the old way.
const (
	// evalRunFactsVersion: the Pipeline passes train's facts in the eval
	// request, and Evaluate asks services/train for them when the request
	// has none.
	evalRunFactsVersion = "eval-run-facts"
	// trainSynthFactsVersion: the Pipeline passes synth's facts in the
	// train request, and Train asks services/synth for them
	// ("synth.describe") when the request has none. A history from before
	// sends none; services/train then uses the facts its run recorded, or
	// answers bad input naming the missing field.
	trainSynthFactsVersion = "train-synth-facts"
)

// Evaluate scores a run's checkpoints through services/eval. services/eval
// reads nothing about the run but the request's Run facts: a request
// without them (one that names only a run id) first gets them from
// services/train ("train.describe"), which answers for completed runs.
func Evaluate(ctx workflow.Context, req events.EvalRequested) (events.EvaluationCompleted, error) {
	var out events.EvaluationCompleted
	if req.RunID == "" {
		return out, badInput(fmt.Errorf("evaluate input: run_id is required"))
	}
	if req.Run == nil && workflow.GetVersion(ctx, evalRunFactsVersion, workflow.DefaultVersion, 1) == 1 {
		var run events.TrainCompleted
		// A query of train's tables, answered by any train worker: it
		// always goes to the default queue.
		if err := runCommand(ctx, "train.describe", "", events.TrainDescribeRequested{RunID: req.RunID}, &run); err != nil {
			return out, fmt.Errorf("describe run %s: %w", req.RunID, err)
		}
		if run.Run == nil {
			return out, badInput(fmt.Errorf("describe run %s: services/train answered without the run's facts", req.RunID))
		}
		req.Run = run.Run
	}
	// Exports asked for: the final checkpoint in each form, through
	// services/train, scored beside it. (A request without ExportAs runs
	// the commands it always did.)
	if len(req.ExportAs) > 0 {
		if req.Run == nil || len(req.Run.Checkpoints) == 0 {
			return out, badInput(fmt.Errorf("evaluate run %s: export_as needs the run's checkpoints", req.RunID))
		}
		final := req.Run.Checkpoints[len(req.Run.Checkpoints)-1]
		for _, x := range req.ExportAs {
			var done events.ExportCompleted
			// train.export is answered on the default queue by every train worker.
			if err := runCommand(ctx, "train.export", "", events.ExportRequested{CheckpointID: final.ID, Format: x.Format, Dtype: x.Dtype}, &done); err != nil {
				return out, fmt.Errorf("export checkpoint %s as %s %s: %w", final.ID, x.Format, x.Dtype, err)
			}
			req.Exports = append(req.Exports, done)
		}
	}
	err := runCommand(ctx, "eval", req.Queue, req, &out)
	return out, err
}
