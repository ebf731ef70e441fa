package workflows

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// TestReplayRecordedHistories replays histories recorded from a real run
// of every workflow (workflows/internal/recordhistory): a change that
// breaks determinism for running workflows fails here.
func TestReplayRecordedHistories(t *testing.T) {
	// Child workflow ids derive from the parent's id, so replay under the
	// recorded ids.
	b, err := os.ReadFile(filepath.Join("testdata", "ids.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ids map[string]string
	if err := json.Unmarshal(b, &ids); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pipeline", "ingest", "synthesize", "train", "evaluate"} {
		t.Run(name, func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflowWithOptions(Pipeline, workflowOpts(PipelineWorkflowName))
			r.RegisterWorkflowWithOptions(Ingest, workflowOpts(IngestWorkflowName))
			r.RegisterWorkflowWithOptions(Synthesize, workflowOpts(SynthesizeWorkflowName))
			r.RegisterWorkflowWithOptions(Train, workflowOpts(TrainWorkflowName))
			r.RegisterWorkflowWithOptions(Evaluate, workflowOpts(EvaluateWorkflowName))
			logger := tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
			f, err := os.Open(filepath.Join("testdata", name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			h, err := client.HistoryFromJSON(f, client.HistoryJSONOptions{})
			if err != nil {
				t.Fatal(err)
			}
			opts := worker.ReplayWorkflowHistoryOptions{OriginalExecution: workflow.Execution{ID: ids[name], RunID: "replay"}}
			if err := r.ReplayWorkflowHistoryWithOptions(logger, h, opts); err != nil {
				t.Fatalf("replay %s: %v", name, err)
			}
		})
	}
}
