package train_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/testutil"
	gmmodel "github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
	"github.com/groundmesh/groundmesh/services/train"
)

func TestParseSpec(t *testing.T) {
	def, err := train.ParseSpec(nil)
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if def.Stage1.Steps == 0 || len(def.Stage1.Trainable) != 0 || def.Stage2.Data.Stages[0] != "stage2" ||
		!slices.Equal(def.Stage1.Data.Tasks, []string{"rec", "pope", "crop_name"}) || def.Stage1.Objective != compute.ObjectiveGrounder ||
		def.Packs("stage1") || len(def.Stage1.Frozen) != 0 || !slices.Equal(def.Stage2.Frozen, []string{"grounder.", "embed.tokens"}) ||
		!slices.Equal(def.Stage3.Frozen, def.Stage2.Frozen) || !def.Model.Grounder || !def.Model.PatchPositions {
		t.Errorf("defaults %+v", def)
	}
	if !def.Packs("stage2") || def.Packs("stage1") {
		t.Errorf("Packs: stage1 %v stage2 %v, want false and true", def.Packs("stage1"), def.Packs("stage2"))
	}
	// A spec can still ask for the text path with the convolutional stem.
	stem, err := train.ParseSpec([]byte(`{"recipe": "text-boxes", "model": {"conv_stem": true}}`))
	if err != nil || !stem.Model.ConvStem || stem.Model.Grounder || stem.Model.Width != def.Model.Width {
		t.Errorf("conv_stem: %+v, %v", stem.Model, err)
	}
	got, err := train.ParseSpec([]byte(`{"stage2": {"steps": 47, "frozen": ["x"]}, "stage3": {"frozen": ["vision.", "projector."]}, "seed": 9}`))
	if err != nil {
		t.Fatal(err)
	}
	if got.Stage2.Steps != 47 || got.Seed != 9 || got.Stage2.BatchSize != def.Stage2.BatchSize ||
		!slices.Equal(got.Stage2.Frozen, []string{"x"}) || !slices.Equal(got.Stage3.Frozen, []string{"vision.", "projector."}) ||
		got.Stage1.Steps != def.Stage1.Steps || got.Model != def.Model {
		t.Errorf("partial spec did not keep the other defaults: %+v", got)
	}
	bad := map[string]string{
		`{"stage2": {"stepz": 3}}`:                                      `"stepz"`,
		`{"learning_rate": 3}`:                                          `"learning_rate"`,
		`{"model": {"widht": 3}}`:                                       `"widht"`,
		`{"stage2": {"steps": 0}}`:                                      "stage2.steps",
		`{"stage3": {"lr": 2}}`:                                         "stage3.lr",
		`{"stage1": {"warmup": 5000}}`:                                  "stage1.warmup",
		`{"stage1": {"checkpoint_every": -1}}`:                          "stage1.checkpoint_every",
		`{"stage2": {"data": {"stages": []}}}`:                          "stage2.data.stages",
		`{"stage1": {"trainable": [""]}}`:                               "stage1.trainable/frozen",
		`{"model": {"vocab_size": 500}}`:                                "model.vocab_size",
		`{"model": {"width": 31}}`:                                      "model",
		`{"max_words": 0}`:                                              "max_words",
		`{"log_every": 0}`:                                              "log_every",
		`{"recipe": "text-boxes", "model": {"ground_readout": true}}`:   "pack", // packed by default
		`{"model": {"text_fusion": true}}`:                              "grounder replaces",
		`{"seed": 1} {"seed": 2}`:                                       "trailing",
		`{"stage2": {"objective": "answers"}}`:                          "stage2.objective",
		`{"recipe": "text-boxes", "stage3": {"objective": "grounder"}}`: "stage3.objective",
		`{"recipe": "text-boxes", "model": {"ground_readout": true}, "pack": false, "stage2": {"pack": true}}`: "pack",
		`[1, 2]`: "run spec",
	}
	for in, field := range bad {
		_, err := train.ParseSpec([]byte(in))
		if !errors.Is(err, train.ErrInvalidRequest) {
			t.Errorf("%s: error %v; want ErrInvalidRequest", in, err)
			continue
		}
		if !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %q does not name %s", in, err, field)
		}
	}
}

// recording wraps a backend and records the requests it saw.
type recording struct {
	compute.Backend
	mu   sync.Mutex
	reqs []compute.TrainRequest
	// hook, when set, may replace a call's outcome.
	hook func(ctx context.Context, req compute.TrainRequest, progress func(compute.TrainProgress) error) (compute.TrainResult, error, bool)
}

func (r *recording) Train(ctx context.Context, req compute.TrainRequest, progress func(compute.TrainProgress) error) (compute.TrainResult, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()
	if r.hook != nil {
		if res, err, ok := r.hook(ctx, req, progress); ok {
			return res, err
		}
	}
	return r.Backend.Train(ctx, req, progress)
}

func (r *recording) requests() []compute.TrainRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

func newRequest(spec json.RawMessage) events.TrainRequested {
	set := uuid.NewString()
	return events.TrainRequested{CorrelationID: "corr-1", RunID: uuid.NewString(), SynthSetID: set, Backend: "toy", Spec: spec, Synth: synthFacts(set)}
}

// synthFacts are the facts synth answers for a set (fakeSynth serves any).
func synthFacts(set string) *events.SynthFacts {
	return &events.SynthFacts{SynthSetID: set, ManifestKey: "synth/" + set + "/manifest.json", DatasetID: "dataset-of-" + set, DatasetRoot: "/datasets/scenes"}
}

func TestTrainThreeStages(t *testing.T) {
	e := newEnv(t)
	rec := &recording{Backend: computetest.NewToy(computetest.ToyOptions{})}
	svc := e.service(t, rec)
	req := newRequest(tinySpec([3]int{6, 8, 6}, 3))
	var progress []events.Progress
	out, err := svc.Train(ctxT(t, 2*time.Minute), req, func(p events.Progress) { progress = append(progress, p) })
	if err != nil {
		t.Fatalf("Train: %v", err)
	}
	cks := checkpoints(t, e, req.RunID)
	want := map[string][]int{"stage1": {3, 6}, "stage2": {3, 6, 8}, "stage3": {3, 6}}
	for st, steps := range want {
		if got := stepsByStage(cks)[st]; !slices.Equal(got, steps) {
			t.Errorf("%s checkpoint steps %v, want %v", st, got, steps)
		}
	}
	byID := map[string]ckptRow{}
	for _, c := range cks {
		byID[c.ID] = c
		if c.Key != fmt.Sprintf("runs/%s/%s/step-%d.safetensors", req.RunID, c.Stage, c.Step) {
			t.Errorf("blob key %s", c.Key)
		}
		p, err := e.blob.Path(c.Key)
		if err != nil {
			t.Fatal(err)
		}
		sum, n, err := blob.FileSHA256(p)
		if err != nil || sum != c.SHA || n != c.Bytes {
			t.Errorf("blob %s: sha %s %d bytes (%v); row says %s %d", c.Key, sum, n, err, c.SHA, c.Bytes)
		}
	}
	// The completion names each stage's final checkpoint and loss.
	for st, steps := range want {
		c, ok := byID[out.Checkpoints[st]]
		if !ok || c.Stage != st || c.Step != steps[len(steps)-1] {
			t.Errorf("completion checkpoint of %s: %+v", st, c)
		}
		if out.FinalLoss[st] <= 0 {
			t.Errorf("final loss of %s: %v", st, out.FinalLoss[st])
		}
	}
	// Each stage starts from the previous stage's final checkpoint, with its own trainable set.
	reqs := rec.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d backend calls, want 3", len(reqs))
	}
	if reqs[0].InitCheckpoint != "" || reqs[0].ResumeCheckpoint != "" {
		t.Errorf("stage1 starts from %q/%q", reqs[0].InitCheckpoint, reqs[0].ResumeCheckpoint)
	}
	for i, st := range []string{"stage1", "stage2"} {
		final, _ := e.blob.Path(byID[out.Checkpoints[st]].Key)
		if reqs[i+1].InitCheckpoint != final {
			t.Errorf("%s starts from %q, want %s's final %q", reqs[i+1].Stage, reqs[i+1].InitCheckpoint, st, final)
		}
	}
	if !slices.Equal(reqs[0].Trainable, []string{"projector.", "fusion.", "embed.", "lm_head."}) || len(reqs[1].Trainable) != 0 {
		t.Errorf("trainable: stage1 %v, stage2 %v", reqs[0].Trainable, reqs[1].Trainable)
	}
	// Loss curve, stage rows, lineage and facts are in Postgres.
	if n := count(t, e, `SELECT count(*) FROM train_metrics WHERE run_id = $1`, req.RunID); n != 20 {
		t.Errorf("%d loss points, want 20 (log_every 1)", n)
	}
	if n := count(t, e, `SELECT count(*) FROM run_stages WHERE run_id = $1 AND status = 'completed'
		AND first_loss IS NOT NULL AND last_loss < first_loss`, req.RunID); n != 3 {
		t.Errorf("%d stages completed with a falling loss, want 3", n)
	}
	if n := count(t, e, `SELECT count(*) FROM outbox WHERE topic = $1 AND payload->>'run_id' = $2`,
		events.TopicCheckpointSaved, req.RunID); n != len(cks) {
		t.Errorf("%d checkpoint.saved facts for %d checkpoints", n, len(cks))
	}
	if n := count(t, e, `SELECT count(*) FROM lineage_edges WHERE src_kind = 'synth_set' AND src_id = $1 AND dst_id = $2`,
		req.SynthSetID, req.RunID); n != 1 {
		t.Errorf("synth set -> run edges: %d", n)
	}
	if n := count(t, e, `SELECT count(*) FROM lineage_edges WHERE src_kind = 'checkpoint' AND relation = 'derived_from'
		AND dst_id IN (SELECT id::text FROM checkpoints WHERE run_id = $1)`, req.RunID); n != len(cks)-1 {
		t.Errorf("checkpoint chain has %d edges for %d checkpoints", n, len(cks))
	}
	first2 := byID[""]
	for _, c := range cks {
		if c.Stage == "stage2" && c.Step == 3 {
			first2 = c
		}
	}
	if n := count(t, e, `SELECT count(*) FROM lineage_edges WHERE src_id = $1 AND dst_id = $2 AND relation = 'derived_from'`,
		out.Checkpoints["stage1"], first2.ID); n != 1 {
		t.Errorf("stage2's first checkpoint does not derive from stage1's final")
	}
	var model []byte
	if err := e.pool.QueryRow(context.Background(), `SELECT model_config FROM runs WHERE id = $1 AND status = 'completed' AND tokenizer_key IS NOT NULL`, req.RunID).Scan(&model); err != nil {
		t.Errorf("run row: %v", err)
	}
	// The completion carries the run's facts for its consumers (eval
	// reads no train tables): final checkpoints with their content, the
	// model config and its hash (also in every checkpoint.saved), the
	// tokenizer, the loss curve, and the synth set and dataset.
	f := out.Run
	if f == nil {
		t.Fatal("completion without run facts")
	}
	if f.SynthSetID != req.SynthSetID || f.ManifestKey != "synth/"+req.SynthSetID+"/manifest.json" ||
		f.DatasetID != "dataset-of-"+req.SynthSetID || f.DatasetRoot != "/datasets/scenes" || f.Backend != "toy" || f.TokenizerKey == "" {
		t.Errorf("run facts %+v", f)
	}
	if len(f.Checkpoints) != 3 {
		t.Fatalf("run facts name %d checkpoints, want the 3 finals", len(f.Checkpoints))
	}
	spec, err := train.ParseSpec(req.Spec)
	if err != nil {
		t.Fatal(err)
	}
	for i, ref := range f.Checkpoints {
		c := byID[ref.ID]
		if ref.ID != out.Checkpoints[train.Stages[i]] || ref.Stage != c.Stage || ref.Step != c.Step || ref.BlobKey != c.Key || ref.SHA256 != c.SHA ||
			ref.Objective != spec.Stage(ref.Stage).Objective {
			t.Errorf("checkpoint ref %+v, row %+v", ref, c)
		}
	}
	wantHash, err := gmmodel.ConfigSHA256(model)
	if err != nil || f.ModelConfigSHA256 != wantHash {
		t.Errorf("model config hash %q, want %q (%v)", f.ModelConfigSHA256, wantHash, err)
	}
	if got, _ := gmmodel.ConfigSHA256(f.ModelConfig); got != wantHash {
		t.Errorf("facts' model config hashes to %s, not %s", got, wantHash)
	}
	if n := count(t, e, `SELECT count(*) FROM outbox WHERE topic = $1 AND payload->>'run_id' = $2 AND payload->>'model_config_sha256' = $3`,
		events.TopicCheckpointSaved, req.RunID, wantHash); n != len(cks) {
		t.Errorf("%d of %d checkpoint.saved facts carry the model config hash", n, len(cks))
	}
	if len(f.Losses["stage1"]) != 6 || len(f.Losses["stage2"]) != 8 || len(f.Losses["stage3"]) != 6 {
		t.Errorf("loss curve points per stage: %d, %d, %d", len(f.Losses["stage1"]), len(f.Losses["stage2"]), len(f.Losses["stage3"]))
	}
	// Describe answers the same facts without training; a run it does not
	// know is bad input.
	described, err := svc.Describe(context.Background(), events.TrainDescribeRequested{CorrelationID: "d-1", RunID: req.RunID})
	if err != nil || described.CorrelationID != "d-1" || described.Run == nil || described.Run.ModelConfigSHA256 != wantHash ||
		len(described.Run.Checkpoints) != 3 || described.Run.Checkpoints[2] != f.Checkpoints[2] || len(rec.requests()) != 3 {
		t.Errorf("Describe: %+v, %v", described, err)
	}
	for _, id := range []string{"not-a-uuid", uuid.NewString()} {
		if _, err := svc.Describe(context.Background(), events.TrainDescribeRequested{RunID: id}); !errors.Is(err, train.ErrInvalidRequest) {
			t.Errorf("Describe(%s): %v, want invalid request", id, err)
		}
	}
	// Progress: every step of every stage, with details.
	steps := map[string]int{}
	for _, p := range progress {
		if p.Phase == "prepare" {
			continue
		}
		var d map[string]float64
		if err := json.Unmarshal(p.Details, &d); err != nil {
			t.Fatalf("details %s: %v", p.Details, err)
		}
		for _, k := range []string{"step", "loss", "lr", "tokens_per_sec"} {
			if _, ok := d[k]; !ok {
				t.Errorf("progress details %s lack %s", p.Details, k)
			}
		}
		if p.CorrelationID != "corr-1" || p.Service != "train" || p.Total != 20 {
			t.Errorf("progress %+v", p)
		}
		steps[p.Phase]++
	}
	if steps["stage1"] != 6 || steps["stage2"] != 8 || steps["stage3"] != 6 {
		t.Errorf("progress per stage %v", steps)
	}
	st, err := svc.Status(context.Background(), req.RunID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != "completed" || st.Stage != "stage3" || st.Step != 6 || st.Loss <= 0 || len(st.Stages) != 3 || st.Live {
		t.Errorf("status %+v", st)
	}
	// Train again: the completed run answers from Postgres without training.
	again, err := svc.Train(context.Background(), req, nil)
	if err != nil || again.Checkpoints["stage3"] != out.Checkpoints["stage3"] || len(rec.requests()) != 3 {
		t.Errorf("second Train of a completed run: %+v, %v, %d backend calls", again, err, len(rec.requests()))
	}
}

var errWorkerDied = errors.New("worker died")

// A worker dies mid-stage 2 (its context ends after a checkpoint); the
// next Train of the run skips stage 1, resumes stage 2 from its last
// checkpoint, and adds no duplicate rows or facts.
func TestTrainResume(t *testing.T) {
	e := newEnv(t)
	toy := computetest.NewToy(computetest.ToyOptions{})
	rec := &recording{Backend: toy}
	svc := e.service(t, rec)
	req := newRequest(tinySpec([3]int{4, 9, 4}, 3))

	ctx, cancel := context.WithCancel(context.Background())
	rec.hook = func(cctx context.Context, r compute.TrainRequest, progress func(compute.TrainProgress) error) (compute.TrainResult, error, bool) {
		if r.Stage != "stage2" {
			return compute.TrainResult{}, nil, false
		}
		res, err := toy.Train(cctx, r, func(p compute.TrainProgress) error {
			if err := progress(p); err != nil {
				return err
			}
			if p.Step == 5 {
				cancel() // the worker goes away after step 5 (checkpoint at 3)
				return errWorkerDied
			}
			return nil
		})
		return res, err, true
	}
	var lastStatus train.RunStatus
	_, err := svc.Train(ctx, req, func(p events.Progress) {
		lastStatus, _ = svc.Status(context.Background(), req.RunID)
	})
	if err == nil {
		t.Fatal("interrupted Train returned no error")
	}
	if !lastStatus.Live || lastStatus.Stage != "stage2" || lastStatus.Step != 5 {
		t.Errorf("live status at the interruption: %+v", lastStatus)
	}
	st, err := svc.Status(context.Background(), req.RunID)
	if err != nil || st.Status != "running" || st.Stage != "stage2" || st.Step != 5 || st.Live {
		t.Errorf("status after the interruption: %+v, %v", st, err)
	}
	before := checkpoints(t, e, req.RunID)
	if got := stepsByStage(before); !slices.Equal(got["stage1"], []int{3, 4}) || !slices.Equal(got["stage2"], []int{3}) {
		t.Fatalf("checkpoints before resume %v", got)
	}

	// On resume the backend first re-reports the checkpoint it resumed
	// from (as a backend may): that must add no row and no fact.
	rec.hook = func(cctx context.Context, r compute.TrainRequest, progress func(compute.TrainProgress) error) (compute.TrainResult, error, bool) {
		if r.ResumeCheckpoint == "" {
			return compute.TrainResult{}, nil, false
		}
		b, err := os.ReadFile(r.ResumeCheckpoint)
		if err != nil {
			return compute.TrainResult{}, err, true
		}
		again := r.CheckpointDir + "/again.safetensors"
		os.WriteFile(again, b, 0o644)
		sum, n, _ := blob.FileSHA256(again)
		if err := progress(compute.TrainProgress{Step: 3, Loss: 1, Checkpoint: &compute.Checkpoint{Path: again, Step: 3, Loss: 1, SHA256: sum, Bytes: n}}); err != nil {
			return compute.TrainResult{}, err, true
		}
		return compute.TrainResult{}, nil, false
	}
	n0 := len(rec.requests())
	var resumedSteps []int
	out, err := svc.Train(context.Background(), req, func(p events.Progress) {
		if p.Phase == "stage2" {
			var d struct{ Step int }
			json.Unmarshal(p.Details, &d)
			resumedSteps = append(resumedSteps, d.Step)
		}
	})
	if err != nil {
		t.Fatalf("resumed Train: %v", err)
	}
	reqs := rec.requests()[n0:]
	if len(reqs) != 2 || reqs[0].Stage != "stage2" || reqs[1].Stage != "stage3" {
		t.Fatalf("resumed calls %v", reqs)
	}
	mid, _ := e.blob.Path(fmt.Sprintf("runs/%s/stage2/step-3.safetensors", req.RunID))
	if reqs[0].ResumeCheckpoint != mid || reqs[0].InitCheckpoint != "" {
		t.Errorf("stage2 resumed from %q (init %q), want %q", reqs[0].ResumeCheckpoint, reqs[0].InitCheckpoint, mid)
	}
	if len(resumedSteps) < 2 || resumedSteps[1] != 4 {
		t.Errorf("resumed stage2 progress steps %v; want the count to continue at 4", resumedSteps)
	}
	cks := checkpoints(t, e, req.RunID)
	got := stepsByStage(cks)
	if !slices.Equal(got["stage1"], []int{3, 4}) || !slices.Equal(got["stage2"], []int{3, 6, 9}) || !slices.Equal(got["stage3"], []int{3, 4}) {
		t.Errorf("checkpoints after resume %v", got)
	}
	if before[2].ID != cks[2].ID || before[2].SHA != cks[2].SHA {
		t.Errorf("stage2 step 3 row changed: %+v -> %+v", before[2], cks[2])
	}
	if n := count(t, e, `SELECT count(*) FROM outbox WHERE topic = $1 AND payload->>'run_id' = $2`,
		events.TopicCheckpointSaved, req.RunID); n != len(cks) {
		t.Errorf("%d checkpoint.saved facts for %d checkpoints", n, len(cks))
	}
	if n := count(t, e, `SELECT attempts FROM run_stages WHERE run_id = $1 AND stage = 'stage2'`, req.RunID); n != 2 {
		t.Errorf("stage2 attempts %d, want 2", n)
	}
	if n := count(t, e, `SELECT count(*) FROM train_metrics WHERE run_id = $1 AND stage = 'stage2'`, req.RunID); n != 9 {
		t.Errorf("stage2 loss points %d, want 9", n)
	}
	if out.Checkpoints["stage2"] != cks[len(got["stage1"])+2].ID {
		t.Errorf("completion: %+v", out)
	}
}

// A plugin crash mid-stage is retried in-process from the last checkpoint.
func TestTrainCrashRetry(t *testing.T) {
	e := newEnv(t)
	toy := computetest.NewToy(computetest.ToyOptions{})
	rec := &recording{Backend: toy}
	crashes, always := 0, false
	rec.hook = func(ctx context.Context, r compute.TrainRequest, progress func(compute.TrainProgress) error) (compute.TrainResult, error, bool) {
		if r.Stage == "stage2" && always {
			return compute.TrainResult{}, &compute.CrashError{Op: "train", ExitStatus: "exit status 2"}, true
		}
		if r.Stage != "stage2" || crashes >= 2 {
			return compute.TrainResult{}, nil, false
		}
		crashes++
		res, err := toy.Train(ctx, r, func(p compute.TrainProgress) error {
			if err := progress(p); err != nil {
				return err
			}
			if p.Checkpoint != nil {
				return &compute.CrashError{Op: "train", ExitStatus: "signal: killed"}
			}
			return nil
		})
		return res, err, true
	}
	svc := e.service(t, rec)
	req := newRequest(tinySpec([3]int{3, 9, 3}, 3))
	if _, err := svc.Train(ctxT(t, time.Minute), req, nil); err != nil {
		t.Fatalf("Train with two crashes: %v", err)
	}
	var resumes []string
	for _, r := range rec.requests() {
		if r.Stage == "stage2" {
			resumes = append(resumes, r.ResumeCheckpoint)
		}
	}
	if len(resumes) != 3 || resumes[0] != "" || !strings.HasSuffix(resumes[1], "step-3.safetensors") || !strings.HasSuffix(resumes[2], "step-6.safetensors") {
		t.Errorf("stage2 calls resumed from %q", resumes)
	}
	if got := stepsByStage(checkpoints(t, e, req.RunID))["stage2"]; !slices.Equal(got, []int{3, 6, 9}) {
		t.Errorf("stage2 checkpoints %v", got)
	}

	// More crashes than crash_retries fail the call, retryably.
	always = true
	n0 := len(rec.requests())
	req2 := newRequest(tinySpec([3]int{3, 9, 3}, 3))
	_, err := svc.Train(ctxT(t, time.Minute), req2, nil)
	if !errors.Is(err, compute.ErrPluginCrashed) || errors.Is(err, train.ErrInvalidRequest) {
		t.Errorf("Train with endless crashes: %v", err)
	}
	if n := len(rec.requests()) - n0; n != 1+4 { // stage1, then stage2 tried 1 + crash_retries (3) times
		t.Errorf("%d backend calls, want 5", n)
	}
}

func TestTrainInvalid(t *testing.T) {
	e := newEnv(t)
	svc := e.service(t, computetest.NewToy(computetest.ToyOptions{}))
	cases := map[string]events.TrainRequested{
		"bad spec":      newRequest(json.RawMessage(`{"stage1": {"stepz": 1}}`)),
		"bad run id":    {RunID: "x", SynthSetID: uuid.NewString(), Backend: "toy"},
		"no synth set":  {RunID: uuid.NewString(), Backend: "toy"},
		"wrong backend": {RunID: uuid.NewString(), SynthSetID: uuid.NewString(), Backend: "cuda9000"},
		// A request from a workflow older than the synth set's facts, for
		// a run that recorded none: train reads no table of synth's.
		"no synth facts": {RunID: uuid.NewString(), SynthSetID: uuid.NewString(), Backend: "toy", Spec: tinySpec([3]int{1, 1, 1}, 1)},
		"another set's facts": func() events.TrainRequested {
			r := newRequest(tinySpec([3]int{1, 1, 1}, 1))
			r.Synth = synthFacts(uuid.NewString())
			return r
		}(),
		"no manifest": func() events.TrainRequested {
			r := newRequest(tinySpec([3]int{1, 1, 1}, 1))
			r.Synth.ManifestKey = ""
			return r
		}(),
	}
	for name, req := range cases {
		_, err := svc.Train(context.Background(), req, nil)
		if !errors.Is(err, train.ErrInvalidRequest) {
			t.Errorf("%s: %v; want ErrInvalidRequest", name, err)
		}
		if name == "no synth facts" && (err == nil || !strings.Contains(err.Error(), "no synth (the synth set's facts")) {
			t.Errorf("%s: %v; want the missing field named", name, err)
		}
	}
	// A backend that does not declare a feature the model needs is refused
	// before anything is recorded, naming the feature and the backend.
	bare := e.service(t, computetest.NewToy(computetest.ToyOptions{Features: []string{"box_label_sigma"}}))
	if _, err := bare.Train(context.Background(), newRequest(nil), nil); !errors.Is(err, train.ErrInvalidRequest) ||
		!strings.Contains(err.Error(), "images_after_text") || !strings.Contains(err.Error(), `backend "toy"`) {
		t.Errorf("a backend without the model's features: %v; want ErrInvalidRequest naming them", err)
	}
	// The default spec's stage 1 trains the grounder alone: a backend that
	// does not declare that objective (the toy declares every model
	// feature, no objective) is refused, not left to train every loss.
	if _, err := svc.Train(context.Background(), newRequest(nil), nil); !errors.Is(err, train.ErrInvalidRequest) ||
		!strings.Contains(err.Error(), `"objective:grounder"`) {
		t.Errorf("a backend without the grounder objective: %v; want ErrInvalidRequest naming it", err)
	}
	if n := count(t, e, `SELECT count(*) FROM runs`); n != 0 {
		t.Errorf("%d runs created by invalid requests", n)
	}
	if _, err := svc.Status(context.Background(), uuid.NewString()); !errors.Is(err, train.ErrRunNotFound) {
		t.Errorf("Status of an unknown run: %v", err)
	}
}

// Two Train calls of one run never overlap: the second is told the run is busy.
func TestTrainBusy(t *testing.T) {
	e := newEnv(t)
	toy := computetest.NewToy(computetest.ToyOptions{StepDelay: 20 * time.Millisecond})
	svc := e.service(t, toy)
	req := newRequest(tinySpec([3]int{20, 3, 3}, 10))
	started := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		_, err := svc.Train(context.Background(), req, func(events.Progress) { once.Do(func() { close(started) }) })
		done <- err
	}()
	select {
	case <-started:
	case err := <-done: // failed before its first progress: report, do not hang
		t.Fatalf("first Train: %v", err)
	}
	_, err := svc.Train(context.Background(), req, nil)
	if !errors.Is(err, train.ErrRunBusy) {
		t.Errorf("concurrent Train of one run: %v; want ErrRunBusy", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("first Train: %v", err)
	}
}

// TestSpecDataFilterReplacesDefault: a stage's data object is the whole
// filter; what it leaves out is not inherited from the default.
func TestSpecDataFilterReplacesDefault(t *testing.T) {
	got, err := train.ParseSpec([]byte(`{"stage1": {"data": {"stages": ["stage1"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if d := got.Stage1.Data; !slices.Equal(d.Stages, []string{"stage1"}) || len(d.Tasks) != 0 || !slices.Equal(d.Splits, []string{"train"}) {
		t.Fatalf("stage1 data %+v, want stage1 records of every task, train split", d)
	}
	if _, err := train.ParseSpec([]byte(`{"stage1": {"data": {"stagez": ["stage1"]}}}`)); err == nil || !strings.Contains(err.Error(), "stagez") {
		t.Fatalf("unknown field in data: %v", err)
	}
}

// A resumed run warns that the request's spec differs from the one it
// keeps only when a value does: the same spec again (which jsonb stored
// with its keys reordered) says nothing; a changed step count is named.
func TestResumeWarnsOnlyWhenTheSpecDiffers(t *testing.T) {
	e := newEnv(t)
	logs := &testutil.SyncBuffer{}
	svc, err := train.New(train.Config{
		DataDir: e.dataDir, Blob: e.blob, Synth: fakeSynth(40),
		Backends: train.BackendMap(map[string]compute.Backend{"toy": computetest.NewToy(computetest.ToyOptions{})}),
		Logger:   slog.New(slog.NewTextHandler(logs, nil)),
	}, e.pool)
	if err != nil {
		t.Fatal(err)
	}
	req := newRequest(tinySpec([3]int{2, 2, 2}, 2))
	if _, err := svc.Train(ctxT(t, 2*time.Minute), req, func(events.Progress) {}); err != nil {
		t.Fatal(err)
	}
	const warning = "the request's differs"
	again := req
	again.CorrelationID = "corr-2"
	if _, err := svc.Train(ctxT(t, time.Minute), again, func(events.Progress) {}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), warning) {
		t.Fatalf("the same spec again was reported as different:\n%s", logs)
	}
	changed := again
	changed.CorrelationID = "corr-3"
	changed.Spec = tinySpec([3]int{2, 5, 2}, 2)
	if _, err := svc.Train(ctxT(t, time.Minute), changed, func(events.Progress) {}); err != nil {
		t.Fatal(err)
	}
	var line string
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, warning) {
			line = l
		}
	}
	if !strings.Contains(line, "stage2.steps") || strings.Contains(line, "stage1") {
		t.Fatalf("warning %q, want one naming stage2.steps only", line)
	}
}

// The later stages' shards are built behind stage 1, which starts on its
// own: a build that fails after stage 1's shards fails the run naming the
// stage whose shards it could not build, with stage 1 trained and
// checkpointed; the next attempt builds them and finishes the run.
func TestLaterShardsBuildBehindStage1(t *testing.T) {
	e := newEnv(t)
	var passes atomic.Int32
	var failing atomic.Bool
	failing.Store(true)
	base := fakeSynth(40)
	reader := func(ctx context.Context, set events.SynthFacts) (train.SynthSet, error) {
		s, err := base(ctx, set)
		if err != nil {
			return s, err
		}
		records := s.Records
		s.Records = func(ctx context.Context) iter.Seq2[gmmodel.Record, error] {
			// Pass 1 builds the tokenizer, pass 2 stage 1's shards.
			if passes.Add(1) == 3 && failing.Load() {
				return func(yield func(gmmodel.Record, error) bool) {
					yield(gmmodel.Record{}, errors.New("synth shard unreadable"))
				}
			}
			return records(ctx)
		}
		return s, nil
	}
	svc, err := train.New(train.Config{
		DataDir: e.dataDir, Blob: e.blob, Synth: reader,
		Backends: train.BackendMap(map[string]compute.Backend{"toy": computetest.NewToy(computetest.ToyOptions{})}),
		Logger:   testLogger(t),
	}, e.pool)
	if err != nil {
		t.Fatal(err)
	}
	req := newRequest(tinySpec([3]int{4, 4, 4}, 2))
	_, err = svc.Train(ctxT(t, 2*time.Minute), req, func(events.Progress) {})
	if err == nil || !strings.Contains(err.Error(), "stage2 shards") || !strings.Contains(err.Error(), "synth shard unreadable") {
		t.Fatalf("err = %v, want stage2's shards failing with the reader's error", err)
	}
	if got := stepsByStage(checkpoints(t, e, req.RunID)); !slices.Equal(got["stage1"], []int{2, 4}) || len(got["stage2"]) != 0 {
		t.Fatalf("checkpoints %v: want stage 1 trained and nothing after it", got)
	}
	failing.Store(false)
	again := req
	again.CorrelationID = "corr-again"
	if _, err := svc.Train(ctxT(t, 2*time.Minute), again, func(events.Progress) {}); err != nil {
		t.Fatalf("second attempt: %v", err)
	}
	if got := stepsByStage(checkpoints(t, e, req.RunID)); !slices.Equal(got["stage3"], []int{2, 4}) {
		t.Fatalf("checkpoints after the second attempt %v", got)
	}
}
