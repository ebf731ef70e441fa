package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

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
	// The bridge completes the activity, then marks its row done: the
	// pipeline may finish in between.
	waitUntil(t, 10*time.Second, "one train.describe command marked answered for the Evaluate child", func() bool {
		return count(t, s.Pool, `SELECT count(*) FROM activity_bridge WHERE workflow_id = $1 AND topic = 'train.describe.requested' AND completed_at IS NOT NULL`,
			again.GetID()+"/eval") == 1
	})
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

// TestEvaluateExports: an evaluation asked to export the run's final
// checkpoint scores each export beside it, as stage
// "stage3@<format>-<dtype>": a float32 GGUF on the GoMLX backend gives the
// checkpoint's own figures, every one; with the onnx plugin built, a
// float32 ONNX export on it gives the checkpoint's REC figure; with the
// ggml plugin built, a q8_0 GGUF on ggml is scored too. The exports are recorded by services/train.
func TestEvaluateExports(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline; skipped with -short")
	}
	dir := pluginDir(t)
	s, _, _ := testStack(t, func(c *Config) { c.PluginDir = dir })
	ctx, run := startPipeline(t, s, "to-export", testutil.SmallPipeline(29))
	trained := pipelineDone(t, ctx, run, "to train the run")

	input := fmt.Sprintf(`{"stages": ["eval"], "run_id": %q, "eval": {"splits": ["val"], "max_samples": 3, "max_samples_by": {"rec": 8}, "report": false,
		"export_as": [{"format": "gguf", "dtype": "float32"}], "export_backend": "gomlx"}}`, trained.RunID)
	ctx, again := startPipeline(t, s, "eval-export", json.RawMessage(input))
	var res workflows.PipelineResult
	if err := again.Get(ctx, &res); err != nil {
		t.Fatalf("eval with export: %v", err)
	}
	compared := 0
	for k, v := range res.Metrics {
		rest, ok := strings.CutPrefix(k, "stage3/")
		if !ok {
			continue
		}
		x, ok := res.Metrics["stage3@gguf-float32/"+rest]
		if !ok {
			t.Errorf("no %s for the export", "stage3@gguf-float32/"+rest)
			continue
		}
		if x != v {
			t.Errorf("%s: checkpoint %v, its float32 GGUF %v", rest, v, x)
		}
		compared++
	}
	if compared == 0 || res.Metrics["stage3@gguf-float32/rec/val/n"] == 0 {
		t.Fatalf("nothing compared: %v", res.Metrics)
	}
	if n := count(t, s.Pool, `SELECT count(*) FROM model_exports WHERE checkpoint_id::text = $1 AND format = 'gguf' AND dtype = 'float32'`,
		trained.Checkpoints["stage3"]); n != 1 {
		t.Errorf("%d model_exports rows for the final checkpoint", n)
	}
	if BackendAvailable(dir, "onnx") {
		// The same checkpoint as an ONNX bundle, run by ONNX Runtime in
		// the onnx plugin: its REC figure within one sample of the
		// checkpoint's (float32 sums in another order may move a box
		// across the IoU threshold, never more).
		input = fmt.Sprintf(`{"stages": ["eval"], "run_id": %q, "eval": {"splits": ["val"], "max_samples": 3, "max_samples_by": {"rec": 8}, "report": false,
			"export_as": [{"format": "onnx", "dtype": "float32"}], "export_benchmarks": ["rec"]}}`, trained.RunID)
		ctx, ox := startPipeline(t, s, "eval-export-onnx", json.RawMessage(input))
		var ores workflows.PipelineResult
		if err := ox.Get(ctx, &ores); err != nil {
			t.Fatalf("eval with an onnx export on the onnx plugin: %v", err)
		}
		n := ores.Metrics["stage3@onnx-float32/rec/val/n"]
		got, want := ores.Metrics["stage3@onnx-float32/rec/val/acc@0.5"], ores.Metrics["stage3/rec/val/acc@0.5"]
		if n == 0 || math.Abs(got-want) > 1/n+1e-9 {
			t.Errorf("REC Acc@0.5 val: checkpoint %v, its ONNX export on onnx %v over %v samples", want, got, n)
		}
		if c := count(t, s.Pool, `SELECT count(*) FROM model_exports WHERE checkpoint_id::text = $1 AND format = 'onnx'`, trained.Checkpoints["stage3"]); c != 1 {
			t.Errorf("%d onnx model_exports rows", c)
		}
	} else {
		t.Logf("the onnx plugin is not built in %s: the onnx export not tried (make onnx)", dir)
	}
	if !BackendAvailable(dir, "ggml") {
		t.Logf("the ggml plugin is not built in %s: q8_0 on ggml not tried (make ggml)", dir)
		return
	}
	input = fmt.Sprintf(`{"stages": ["eval"], "run_id": %q, "eval": {"splits": ["val"], "max_samples": 3, "max_samples_by": {"rec": 8}, "report": false,
		"export_as": [{"format": "gguf", "dtype": "q8_0"}], "export_benchmarks": ["rec"]}}`, trained.RunID)
	ctx, q8 := startPipeline(t, s, "eval-export-q8", json.RawMessage(input))
	if err := q8.Get(ctx, &res); err != nil {
		t.Fatalf("eval with a q8_0 export on ggml: %v", err)
	}
	if res.Metrics["stage3@gguf-q8_0/rec/val/n"] == 0 {
		t.Fatalf("no q8_0 REC figures: %v", res.Metrics)
	}
	for k := range res.Metrics {
		if strings.HasPrefix(k, "stage3@gguf-q8_0/") && !strings.HasPrefix(k, "stage3@gguf-q8_0/rec/") {
			t.Errorf("%s: the export was to be scored on rec only", k)
		}
	}
	t.Logf("REC Acc@0.5 val: checkpoint %.3f, q8_0 GGUF on ggml %.3f", res.Metrics["stage3/rec/val/acc@0.5"], res.Metrics["stage3@gguf-q8_0/rec/val/acc@0.5"])
}

// TestTrainStageAloneGetsTheSetFromSynth: services/train reads no table of
// services/synth or ingest. A pipeline that synthesizes and trains passes
// synth's answer (manifest, dataset root) in the train request, and its
// promotion of the checkpoint it just trained waits for the grounding
// service to learn of it from train's facts on the bus; a pipeline that
// starts at train with only the synth set's id gets the set's facts from
// services/synth (synth.describe) first. Each run records the facts it was
// trained from, and the grounding service learns of the second run from
// the bus alone.
func TestTrainStageAloneGetsTheSetFromSynth(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two pipelines; skipped with -short")
	}
	s, _, _ := testStack(t, func(c *Config) { c.PluginDir = pluginDir(t) })
	var in map[string]json.RawMessage
	if err := json.Unmarshal(testutil.SmallPipeline(31), &in); err != nil {
		t.Fatal(err)
	}
	in["stages"] = json.RawMessage(`["ingest", "synth", "train"]`)
	in["promote"] = json.RawMessage(`{"alias": "production"}`)
	first, _ := json.Marshal(in)
	ctx, run := startPipeline(t, s, "synth-train", first)
	trained := pipelineDone(t, ctx, run, "to synthesize and train")
	final := trained.Checkpoints["stage3"]
	if p := trained.Promoted; p == nil || p.CheckpointID != final || p.RunID != trained.RunID {
		t.Fatalf("promotion %+v, want the run's final checkpoint %s", trained.Promoted, final)
	}

	delete(in, "promote")
	in["stages"] = json.RawMessage(`["train"]`)
	in["synth_set_id"], _ = json.Marshal(trained.SynthSetID)
	second, _ := json.Marshal(in)
	ctx, again := startPipeline(t, s, "train-alone", second)
	alone := pipelineDone(t, ctx, again, "to train from the synth set alone")
	if alone.RunID == trained.RunID || alone.SynthSetID != trained.SynthSetID {
		t.Fatalf("train-only pipeline: run %s on set %s (first: run %s on %s)", alone.RunID, alone.SynthSetID, trained.RunID, trained.SynthSetID)
	}
	// The bridge completes the activity, then marks its row done: the
	// pipeline may finish in between.
	waitUntil(t, 10*time.Second, "one synth.describe command marked answered for the Train child", func() bool {
		return count(t, s.Pool, `SELECT count(*) FROM activity_bridge WHERE workflow_id = $1 AND topic = 'synth.describe.requested' AND completed_at IS NOT NULL`,
			again.GetID()+"/train") == 1
	})
	if n := count(t, s.Pool, `SELECT count(*) FROM activity_bridge WHERE workflow_id = $1 AND topic = 'synth.describe.requested'`,
		run.GetID()+"/train"); n != 0 {
		t.Errorf("the first pipeline's Train asked synth.describe %d times, want 0", n)
	}
	// Both runs recorded the set's facts as synth answered them.
	if n := count(t, s.Pool, `SELECT count(*) FROM runs r, synth_sets s WHERE r.id::text = ANY($1) AND s.id = r.synth_set_id
		AND r.synth->>'manifest_key' = s.manifest_key AND r.synth->>'dataset_root' <> ''`, []string{trained.RunID, alone.RunID}); n != 2 {
		t.Errorf("%d of the 2 runs recorded their synth set's facts", n)
	}
	waitUntil(t, 30*time.Second, "the grounding service to learn of the second run", func() bool {
		_, err := s.Services.Ground.Checkpoint(context.Background(), alone.Checkpoints["stage3"])
		return err == nil
	})
}
