package workflows

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
)

// TestReplayRecordedHistories replays histories recorded from a real run
// of every workflow (workflows/internal/recordhistory): a change that
// breaks determinism for running workflows fails here.
func TestReplayRecordedHistories(t *testing.T) {
	for _, name := range []string{"pipeline", "ingest", "synthesize", "train", "evaluate"} {
		t.Run(name, func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflowWithOptions(Pipeline, workflowOpts(PipelineWorkflowName))
			r.RegisterWorkflowWithOptions(Ingest, workflowOpts(IngestWorkflowName))
			r.RegisterWorkflowWithOptions(Synthesize, workflowOpts(SynthesizeWorkflowName))
			r.RegisterWorkflowWithOptions(Train, workflowOpts(TrainWorkflowName))
			r.RegisterWorkflowWithOptions(Evaluate, workflowOpts(EvaluateWorkflowName))
			logger := tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err := r.ReplayWorkflowHistoryFromJSONFile(logger, filepath.Join("testdata", name+".json")); err != nil {
				t.Fatalf("replay %s: %v", name, err)
			}
		})
	}
}
