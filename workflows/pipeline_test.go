package workflows

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/groundmesh/groundmesh/internal/events"
)

func newEnv(t *testing.T) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	s.SetLogger(tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflowWithOptions(Pipeline, workflowOpts(PipelineWorkflowName))
	env.RegisterWorkflowWithOptions(Ingest, workflowOpts(IngestWorkflowName))
	env.RegisterWorkflowWithOptions(Synthesize, workflowOpts(SynthesizeWorkflowName))
	env.RegisterWorkflowWithOptions(Train, workflowOpts(TrainWorkflowName))
	env.RegisterWorkflowWithOptions(Evaluate, workflowOpts(EvaluateWorkflowName))
	env.RegisterActivity(&Activities{})
	return env
}

// fakeServices answers each command the way the real service would shape
// its answer, and records what it was asked.
func fakeServices(asked *[]CommandInput) func(context.Context, CommandInput) (json.RawMessage, error) {
	return func(_ context.Context, in CommandInput) (json.RawMessage, error) {
		*asked = append(*asked, in)
		var v any
		switch in.Service {
		case "ingest":
			v = events.DatasetIngested{DatasetID: "ds-1", Version: "abc"}
		case "synth", "synth.describe":
			v = events.SynthCompleted{SynthSetID: "ss-1", DatasetID: "ds-1", ManifestKey: "synth/ss-1/manifest.json", DatasetRoot: "/data/ds-1"}
		case "train", "train.describe":
			v = events.TrainCompleted{Checkpoints: map[string]string{"stage3": "ck-3"}, Run: &events.RunFacts{
				SynthSetID: "ss-1", ManifestKey: "synth/ss-1/manifest.json", Backend: "gomlx", TokenizerKey: "runs/r/tokenizer.json",
				Checkpoints: []events.CheckpointRef{{ID: "ck-3", Stage: "stage3", Step: 10, BlobKey: "runs/r/ck-3", SHA256: "aa"}},
			}}
		case "eval":
			v = events.EvaluationCompleted{Metrics: map[string]float64{"stage3/rec/test/acc@0.5": 0.42}, ReportKey: "reports/r.html"}
		}
		b, _ := json.Marshal(v)
		return b, nil
	}
}

func TestPipelineDefaultsRunAllStages(t *testing.T) {
	env := newEnv(t)
	var asked []CommandInput
	env.OnActivity((&Activities{}).Command, mock.Anything, mock.Anything).Return(fakeServices(&asked))
	var in PipelineInput
	if err := json.Unmarshal([]byte(`{}`), &in); err != nil {
		t.Fatal(err)
	}
	env.ExecuteWorkflow(Pipeline, in)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	var res PipelineResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.StagesRan, ","); got != "ingest,synth,train,eval" {
		t.Fatalf("stages ran %q", got)
	}
	if res.DatasetID != "ds-1" || res.SynthSetID != "ss-1" || res.Metrics["stage3/rec/test/acc@0.5"] != 0.42 {
		t.Fatalf("result %+v", res)
	}
	// Each command carries what the previous stage produced.
	var synth events.SynthRequested
	_ = json.Unmarshal(asked[1].Payload, &synth)
	if synth.DatasetID != "ds-1" || synth.Samples != 48000 {
		t.Fatalf("synth command %+v", synth)
	}
	var train events.TrainRequested
	_ = json.Unmarshal(asked[2].Payload, &train)
	if train.SynthSetID != "ss-1" || train.RunID == "" || train.Backend != "gomlx" {
		t.Fatalf("train command %+v", train)
	}
	// The train command carries synth's facts about the set: no
	// synth.describe round trip.
	if f := train.Synth; f == nil || *f != (events.SynthFacts{SynthSetID: "ss-1", DatasetID: "ds-1", ManifestKey: "synth/ss-1/manifest.json", DatasetRoot: "/data/ds-1"}) {
		t.Fatalf("train command's synth facts %+v", train.Synth)
	}
	// The eval command carries train's facts about the run: no
	// train.describe round trip.
	if len(asked) != 4 || asked[3].Service != "eval" {
		t.Fatalf("commands %+v", asked)
	}
	var eval events.EvalRequested
	_ = json.Unmarshal(asked[3].Payload, &eval)
	if eval.RunID != train.RunID || !eval.Report || eval.Run == nil || len(eval.Run.Checkpoints) != 1 ||
		eval.Run.Checkpoints[0].SHA256 != "aa" || eval.Run.ManifestKey != "synth/ss-1/manifest.json" {
		t.Fatalf("eval command %+v (run %s)", eval, train.RunID)
	}
}

// TestEvaluateWithOnlyARunIDAsksTrain: an evaluation of an earlier run
// (the Pipeline's eval stage alone) gets the run's facts from
// services/train before it asks services/eval.
func TestEvaluateWithOnlyARunIDAsksTrain(t *testing.T) {
	env := newEnv(t)
	var asked []CommandInput
	env.OnActivity((&Activities{}).Command, mock.Anything, mock.Anything).Return(fakeServices(&asked))
	env.ExecuteWorkflow(Pipeline, PipelineInput{Stages: []string{StageEval}, RunID: "11111111-2222-3333-4444-555555555555"})
	if err := env.GetWorkflowError(); err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	if len(asked) != 2 || asked[0].Service != "train.describe" || asked[1].Service != "eval" {
		t.Fatalf("commands %+v, want train.describe then eval", asked)
	}
	var describe events.TrainDescribeRequested
	_ = json.Unmarshal(asked[0].Payload, &describe)
	var eval events.EvalRequested
	_ = json.Unmarshal(asked[1].Payload, &eval)
	if describe.RunID != "11111111-2222-3333-4444-555555555555" || eval.RunID != describe.RunID ||
		eval.Run == nil || eval.Run.Checkpoints[0].ID != "ck-3" || eval.Run.TokenizerKey == "" {
		t.Fatalf("describe %+v, eval %+v", describe, eval)
	}
}

// TestTrainWithOnlyASynthSetIDAsksSynth: a pipeline that starts at train
// (a synth set built earlier) gets the set's facts from services/synth
// before it asks services/train.
func TestTrainWithOnlyASynthSetIDAsksSynth(t *testing.T) {
	env := newEnv(t)
	var asked []CommandInput
	env.OnActivity((&Activities{}).Command, mock.Anything, mock.Anything).Return(fakeServices(&asked))
	env.ExecuteWorkflow(Pipeline, PipelineInput{Stages: []string{StageTrain}, SynthSetID: "ss-1"})
	if err := env.GetWorkflowError(); err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	if len(asked) != 2 || asked[0].Service != "synth.describe" || asked[0].Queue != "" || asked[1].Service != "train" {
		t.Fatalf("commands %+v, want synth.describe (default queue) then train", asked)
	}
	var describe events.SynthDescribeRequested
	_ = json.Unmarshal(asked[0].Payload, &describe)
	var train events.TrainRequested
	_ = json.Unmarshal(asked[1].Payload, &train)
	if describe.SynthSetID != "ss-1" || train.SynthSetID != "ss-1" || train.Synth == nil ||
		train.Synth.ManifestKey != "synth/ss-1/manifest.json" || train.Synth.DatasetRoot != "/data/ds-1" {
		t.Fatalf("describe %+v, train %+v", describe, train)
	}
}

// TestEvaluateFailsWhenTrainCannotDescribe: a run train does not know (or
// that has not completed) fails the evaluation as bad input, saying so.
func TestEvaluateFailsWhenTrainCannotDescribe(t *testing.T) {
	env := newEnv(t)
	env.OnActivity((&Activities{}).Command, mock.Anything, mock.Anything).Return(func(_ context.Context, in CommandInput) (json.RawMessage, error) {
		if in.Service != "train.describe" {
			t.Errorf("asked %s before the run was described", in.Service)
		}
		return nil, temporal.NewNonRetryableApplicationError("describe run r: not found", ErrTypeBadInput, nil)
	})
	env.ExecuteWorkflow(Evaluate, events.EvalRequested{RunID: "r"})
	err := env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "describe run r") {
		t.Fatalf("err = %v, want the describe failure", err)
	}
}

func TestPipelineRejectsBadInputNamingField(t *testing.T) {
	cases := map[string]string{
		`{"datset": {}}`:                       `unknown field "datset"`,
		`{"stages": ["ingest", "fly"]}`:        `stages[1] = "fly"`,
		`{"dataset": {"format": "csv"}}`:       `dataset.format = "csv"`,
		`{"train": {"backend": "tpu"}}`:        `train.backend = "tpu"`,
		`{"stages": ["train"]}`:                `synth_set_id is required`,
		`{"dataset": {"format": "coco"}}`:      `dataset.path is required`,
		`{"dataset": {"max_bad_fraction": 2}}`: `dataset.max_bad_fraction`,
		`{"promote": {"alias": "Prod!"}}`:      `promote.alias = "Prod!"`,
		`{"stages": ["eval"], "run_id": "r", "promote": {"alias": "production"}}`: `promote.alias needs the "train" stage`,
		`{"promote": {"min_metrics": {"x": 1}}}`:                                  `promote.min_metrics without promote.alias`,
		`{"eval": {"max_samples_by": {"rec": 400, "pope_random": -1}}}`:           `eval.max_samples_by["pope_random"] = -1`,
	}
	for input, want := range cases {
		// Decode as the worker does with the UI's JSON; an unknown field
		// cannot survive the test environment's re-encoding, so check
		// Validate directly, then run the workflow for the rest.
		var in PipelineInput
		if err := json.Unmarshal([]byte(input), &in); err != nil {
			t.Fatal(err)
		}
		if err := in.WithDefaults().Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: Validate() = %v, want it to contain %q", input, err, want)
		}
		if strings.Contains(want, "unknown field") || strings.Contains(want, "max_samples_by") {
			continue
		}
		env := newEnv(t)
		env.ExecuteWorkflow(Pipeline, in)
		err := env.GetWorkflowError()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to contain %q", input, err, want)
		}
		var appErr *temporal.ApplicationError
		if err != nil && (!errors.As(err, &appErr) || appErr.Type() != ErrTypeBadInput || !appErr.NonRetryable()) {
			t.Errorf("%s: want non-retryable %s, got %v", input, ErrTypeBadInput, err)
		}
	}
}

func TestPipelineFailsClearlyWhenAServiceFails(t *testing.T) {
	env := newEnv(t)
	var asked []CommandInput
	ok := fakeServices(&asked)
	env.OnActivity((&Activities{}).Command, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in CommandInput) (json.RawMessage, error) {
			if in.Service == "synth" {
				return nil, temporal.NewNonRetryableApplicationError("synth: dataset ds-1 has no objects", ErrTypeBadInput, nil)
			}
			return ok(ctx, in)
		})
	var in PipelineInput
	_ = json.Unmarshal([]byte(`{}`), &in)
	env.ExecuteWorkflow(Pipeline, in)
	err := env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "dataset ds-1 has no objects") {
		t.Fatalf("want synth failure surfaced, got %v", err)
	}
	for _, a := range asked {
		if a.Service == "train" || a.Service == "eval" {
			t.Fatalf("stage %s ran after synth failed", a.Service)
		}
	}
}

func TestTrainStatusQueryFollowsProgressSignals(t *testing.T) {
	env := newEnv(t)
	env.OnActivity((&Activities{}).Command, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in CommandInput) (json.RawMessage, error) {
			return json.RawMessage(`{"run_id":"r1","checkpoints":{"stage1":"c1"}}`), nil
		}).After(time.Minute)
	env.RegisterDelayedCallback(func() {
		env.SignalWorkflow(ProgressSignal, events.Progress{Phase: "stage2", Done: 40, Total: 100, Details: json.RawMessage(`{"loss":1.25}`)})
	}, time.Second)
	queried := false
	env.RegisterDelayedCallback(func() {
		queried = true
		v, err := env.QueryWorkflow(StatusQuery)
		if err != nil {
			t.Errorf("query: %v", err)
			return
		}
		var st TrainStatus
		_ = v.Get(&st)
		if st.Stage != "stage2" || st.Step != 40 || st.Loss != 1.25 {
			t.Errorf("status %+v", st)
		}
	}, 2*time.Second)
	env.ExecuteWorkflow(Train, events.TrainRequested{RunID: "r1", SynthSetID: "ss"})
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if !queried {
		t.Fatal("status query never ran")
	}
}

func TestPipelinePassesSynthTaskWeights(t *testing.T) {
	env := newEnv(t)
	var asked []CommandInput
	env.OnActivity((&Activities{}).Command, mock.Anything, mock.Anything).Return(fakeServices(&asked))
	var in PipelineInput
	if err := json.Unmarshal([]byte(`{"stages": ["ingest", "synth"], "synth": {"task_weights": {"rec": 3, "box_pick": 0}}}`), &in); err != nil {
		t.Fatal(err)
	}
	env.ExecuteWorkflow(Pipeline, in)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	var synth events.SynthRequested
	_ = json.Unmarshal(asked[1].Payload, &synth)
	if len(synth.TaskWeights) != 2 || synth.TaskWeights["rec"] != 3 || synth.TaskWeights["box_pick"] != 0 {
		t.Fatalf("synth command task weights %v", synth.TaskWeights)
	}
}

// The Pipeline promotes the run's final checkpoint when asked and its
// gates pass, and says which gate failed otherwise.
func TestPipelinePromotesWhenGatesPass(t *testing.T) {
	for _, tc := range []struct {
		name, input, skipped string
		promoted             bool
	}{
		{"no gate", `{"promote": {"alias": "production"}}`, "", true},
		{"gate passes", `{"promote": {"alias": "production", "min_metrics": {"stage3/rec/test/acc@0.5": 0.4}}}`, "", true},
		{"gate fails", `{"promote": {"alias": "production", "min_metrics": {"stage3/rec/test/acc@0.5": 0.5}}}`, "gate stage3/rec/test/acc@0.5: 0.42 < 0.5", false},
		{"missing metric", `{"promote": {"alias": "production", "min_metrics": {"stage3/pope/test/f1": 0.5}}}`, "no such metric", false},
		{"not asked", `{}`, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t)
			var asked []CommandInput
			env.OnActivity((&Activities{}).Command, mock.Anything, mock.Anything).Return(fakeServices(&asked))
			var promoted []PromoteRequest
			env.OnActivity((&Activities{}).Promote, mock.Anything, mock.Anything).Return(func(_ context.Context, req PromoteRequest) (events.ModelPromoted, error) {
				promoted = append(promoted, req)
				return events.ModelPromoted{Alias: req.Alias, CheckpointID: req.CheckpointID, RunID: "run-1"}, nil
			}).Maybe()
			var in PipelineInput
			if err := json.Unmarshal([]byte(tc.input), &in); err != nil {
				t.Fatal(err)
			}
			env.ExecuteWorkflow(Pipeline, in)
			if err := env.GetWorkflowError(); err != nil {
				t.Fatalf("pipeline: %v", err)
			}
			var res PipelineResult
			if err := env.GetWorkflowResult(&res); err != nil {
				t.Fatal(err)
			}
			if tc.promoted != (len(promoted) == 1) || tc.promoted != (res.Promoted != nil) {
				t.Fatalf("promotions %v, result %+v; want promoted: %v", promoted, res.Promoted, tc.promoted)
			}
			if tc.promoted && (promoted[0] != PromoteRequest{Alias: "production", CheckpointID: "ck-3"} || res.Promoted.CheckpointID != "ck-3") {
				t.Fatalf("promoted %+v (result %+v), want ck-3 as production", promoted[0], res.Promoted)
			}
			if !strings.Contains(res.PromotionSkipped, tc.skipped) || (tc.skipped == "") != (res.PromotionSkipped == "") {
				t.Fatalf("promotion skipped %q, want %q", res.PromotionSkipped, tc.skipped)
			}
		})
	}
}

// The final checkpoint is the last stage's, whatever the map's order.
func TestFinalCheckpoint(t *testing.T) {
	if got := finalCheckpoint(map[string]string{"stage2": "b", "stage3": "c", "stage1": "a"}); got != "c" {
		t.Fatalf("final checkpoint %q, want c", got)
	}
	if got := finalCheckpoint(nil); got != "" {
		t.Fatalf("final checkpoint of nothing %q", got)
	}
}
