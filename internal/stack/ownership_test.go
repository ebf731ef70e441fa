package stack

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/groundmesh/groundmesh/internal/testutil"
	"github.com/groundmesh/groundmesh/workflows"
)

// TestEvalStageAloneGetsTheRunFromTrain: a Pipeline that only evaluates
// an earlier run (stages ["eval"] and its run id) has nothing but the id;
// its Evaluate child asks services/train for the run's facts
// (train.describe) and services/eval scores the run's final checkpoints
// from them, and keeps them for the report.
func TestEvalStageAloneGetsTheRunFromTrain(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline; skipped with -short")
	}
	s, _, _ := testStack(t, func(c *Config) { c.PluginDir = pluginDir(t) })
	ctx, run := startPipeline(t, s, "trained", testutil.SmallPipeline(23))
	trained := pipelineDone(t, ctx, run, "to train the run")

	input := fmt.Sprintf(`{"stages": ["eval"], "run_id": %q, "eval": {"splits": ["val"], "max_samples": 3, "max_samples_by": {"rec": 6}, "report": true}}`, trained.RunID)
	ctx, again := startPipeline(t, s, "eval-alone", json.RawMessage(input))
	var res workflows.PipelineResult
	if err := again.Get(ctx, &res); err != nil {
		t.Fatalf("eval-only pipeline: %v", err)
	}
	if !slices.Equal(res.StagesRan, []string{workflows.StageEval}) || len(res.Metrics) == 0 || res.ReportKey == "" {
		t.Fatalf("eval-only pipeline result: stages %v, %d metrics, report %q", res.StagesRan, len(res.Metrics), res.ReportKey)
	}
	if n := count(t, s.Pool, `SELECT count(*) FROM activity_bridge WHERE workflow_id = $1 AND topic = 'train.describe.requested' AND completed_at IS NOT NULL`,
		again.GetID()+"/eval"); n != 1 {
		t.Errorf("%d train.describe commands answered for the Evaluate child, want 1", n)
	}
	// The first pipeline passed train's answer to eval: no describe there.
	if n := count(t, s.Pool, `SELECT count(*) FROM activity_bridge WHERE workflow_id = $1 AND topic = 'train.describe.requested'`,
		run.GetID()+"/eval"); n != 0 {
		t.Errorf("the full pipeline's Evaluate asked train.describe %d times, want 0", n)
	}
	finals := slices.Collect(maps.Values(trained.Checkpoints))
	if n := count(t, s.Pool, `SELECT count(*) FROM eval_runs r, jsonb_array_elements(r.facts->'checkpoints') c
		WHERE r.run_id = $1 AND c->>'id' = ANY($2) AND length(c->>'sha256') = 64`, trained.RunID, finals); n != 3 {
		t.Errorf("eval_runs holds %d of the run's 3 final checkpoints with their sha256", n)
	}
	if n := count(t, s.Pool, `SELECT count(DISTINCT checkpoint_id) FROM evaluations WHERE run_id = $1 AND checkpoint_id::text = ANY($2)`,
		trained.RunID, finals); n != 3 {
		t.Errorf("evaluations cover %d of the run's 3 final checkpoints", n)
	}
}
