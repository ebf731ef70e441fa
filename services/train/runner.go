package train

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// Train runs (or resumes) the run of req: every stage not yet completed,
// each from the previous stage's final checkpoint, or from its own last
// recorded checkpoint when the run was interrupted. A plugin crash is
// retried from the last checkpoint up to the spec's crash_retries times.
// progress receives the stage as Phase and {"step","loss","lr",
// "tokens_per_sec"} as Details. Errors wrapping ErrInvalidRequest must not
// be retried; any other error may be, with the same run id.
func (s *Service) Train(ctx context.Context, req events.TrainRequested, progress func(events.Progress)) (out events.TrainCompleted, err error) {
	ctx, span := tracer.Start(ctx, "train.Train")
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	if progress == nil {
		progress = func(events.Progress) {}
	}
	if _, err := uuid.Parse(req.RunID); err != nil {
		return out, fmt.Errorf("train: run id %q is not a uuid: %w", req.RunID, ErrInvalidRequest)
	}
	if _, err := uuid.Parse(req.SynthSetID); err != nil {
		return out, fmt.Errorf("train: synth set id %q is not a uuid: %w", req.SynthSetID, ErrInvalidRequest)
	}
	if req.Backend == "" {
		req.Backend = DefaultBackend
	}
	if req.Backend, err = BackendKey(req.Backend, req.Device); err != nil {
		return out, err
	}
	span.SetAttributes(attribute.String("run_id", req.RunID), attribute.String("backend", req.Backend))
	spec, err := ParseSpec(req.Spec)
	if err != nil {
		return out, err
	}
	backend, err := s.cfg.Backends(req.Backend)
	if err != nil {
		return out, fmt.Errorf("train: backend %q: %w", req.Backend, err)
	}
	backend = compute.WithTracing(backend, req.Backend)
	desc, err := backend.Describe(ctx)
	if err != nil {
		return out, fmt.Errorf("train: describe backend %q: %w", req.Backend, err)
	}
	if err := spec.Model.Unsupported(req.Backend, desc.Features); err != nil {
		return out, fmt.Errorf("train: %w: %w", err, ErrInvalidRequest)
	}
	for _, name := range Stages {
		// A backend that predates an objective would ignore the field and
		// train every loss: it must declare the objective.
		if o := spec.Stage(name).Objective; o != compute.ObjectiveAll && !slices.Contains(desc.Features, compute.ObjectiveFeature(o)) {
			return out, fmt.Errorf("train: %s.objective %q: backend %q does not declare %q: %w", name, o, req.Backend, compute.ObjectiveFeature(o), ErrInvalidRequest)
		}
	}
	release, err := s.store.lockRun(ctx, req.RunID)
	if err != nil {
		return out, err
	}
	defer release()

	specBytes, err := specJSON(spec)
	if err != nil {
		return out, err
	}
	synthFacts, err := s.synthFacts(ctx, req)
	if err != nil {
		return out, err
	}
	run, created, err := s.store.ensureRun(ctx, req.RunID, req.SynthSetID, req.Backend, specBytes, synthFacts)
	if err != nil {
		return out, err
	}
	if run.Synth == nil {
		run.Synth = &synthFacts
	}
	if !created {
		// A resumed run keeps the spec it started with.
		if run.SynthSetID != req.SynthSetID || run.Backend != req.Backend {
			return out, fmt.Errorf("train: run %s exists for synth set %s on %s, not %s on %s: %w",
				run.ID, run.SynthSetID, run.Backend, req.SynthSetID, req.Backend, ErrInvalidRequest)
		}
		if spec, err = ParseSpec(run.Spec); err != nil {
			return out, fmt.Errorf("train: run %s: stored spec: %w", run.ID, err)
		}
		// The stored spec is jsonb, which reorders keys and spacing:
		// compare what the two say, not their bytes.
		if diff := specDiff(run.Spec, specBytes); len(req.Spec) > 0 && len(diff) > 0 {
			s.log.WarnContext(ctx, "resumed run keeps its recorded spec; the request's differs", "run", run.ID, "fields", diff)
		}
	}
	s.log.InfoContext(ctx, "train run", "run", run.ID, "resumed", !created, "status", run.Status, "backend", run.Backend)
	if run.Status == "completed" {
		return s.completedRun(ctx, req.CorrelationID, run)
	}
	r := &runner{s: s, req: req, spec: spec, backend: backend, progress: progress,
		dir: filepath.Join(s.cfg.DataDir, "runs", run.ID)}
	for _, st := range Stages {
		r.total += int64(spec.Stage(st).Steps)
	}
	defer s.setLive(run.ID, nil)
	s.setLive(run.ID, func(st *RunStatus) {
		for _, name := range Stages {
			st.Stages = append(st.Stages, StageStatus{Stage: name, Status: "pending", Steps: spec.Stage(name).Steps})
		}
	})
	if err := r.run(ctx, run); err != nil {
		status := "failed"
		if ctx.Err() != nil || !errors.Is(err, ErrInvalidRequest) {
			status = "running" // interrupted or retryable: a later Train resumes it
		}
		if serr := s.store.setRunStatus(context.WithoutCancel(ctx), run.ID, status, "", err.Error()); serr != nil {
			s.log.ErrorContext(ctx, "record run failure", "run", run.ID, "error", serr)
		}
		return out, err
	}
	if err := s.store.setRunStatus(ctx, run.ID, "completed", "", ""); err != nil {
		return out, err
	}
	return s.completed(ctx, req.CorrelationID, run.ID)
}

// synthFacts are the facts of the synth set req trains on: the request's
// (Synth), else those its run recorded when it was first requested (a
// request from a workflow older than the field, resuming the run). Without
// either the request is bad input: the service reads no table of
// services/synth to find them.
func (s *Service) synthFacts(ctx context.Context, req events.TrainRequested) (events.SynthFacts, error) {
	if f := req.Synth; f != nil {
		facts := *f
		if facts.SynthSetID == "" {
			facts.SynthSetID = req.SynthSetID
		}
		if facts.SynthSetID != req.SynthSetID {
			return facts, fmt.Errorf("train: synth.synth_set_id %q is not synth_set_id %q: %w", facts.SynthSetID, req.SynthSetID, ErrInvalidRequest)
		}
		if facts.ManifestKey == "" {
			return facts, fmt.Errorf("train: synth.manifest_key is empty: the synth set's facts name its manifest: %w", ErrInvalidRequest)
		}
		return facts, nil
	}
	run, err := s.store.run(ctx, req.RunID)
	if err != nil && !errors.Is(err, errNoRun) {
		return events.SynthFacts{}, err
	}
	if err == nil && run.Synth != nil && run.SynthSetID == req.SynthSetID {
		return *run.Synth, nil
	}
	return events.SynthFacts{}, fmt.Errorf("train: run %s: the request has no synth (the synth set's facts: manifest_key, dataset_root), and the run recorded none: %w", req.RunID, ErrInvalidRequest)
}

// Describe answers a completed run's facts (the answer Train gives once
// the run is done) without training; a run that does not exist or has not
// completed wraps ErrInvalidRequest.
func (s *Service) Describe(ctx context.Context, req events.TrainDescribeRequested) (out events.TrainCompleted, err error) {
	ctx, span := tracer.Start(ctx, "train.Describe", trace.WithAttributes(attribute.String("run_id", req.RunID)))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	if _, err := uuid.Parse(req.RunID); err != nil {
		return out, fmt.Errorf("describe run: run id %q is not a uuid: %w", req.RunID, ErrInvalidRequest)
	}
	run, err := s.store.run(ctx, req.RunID)
	if errors.Is(err, errNoRun) {
		return out, fmt.Errorf("describe run %s: not found: %w", req.RunID, ErrInvalidRequest)
	}
	if err != nil {
		return out, fmt.Errorf("describe run %s: %w", req.RunID, err)
	}
	if run.Status != "completed" {
		return out, fmt.Errorf("describe run %s: the run is %s, not completed: %w", req.RunID, run.Status, ErrInvalidRequest)
	}
	return s.completedRun(ctx, req.CorrelationID, run)
}

// completed answers a finished run from Postgres (completedRun of its row
// as it is now).
func (s *Service) completed(ctx context.Context, correlationID, runID string) (events.TrainCompleted, error) {
	run, err := s.store.run(ctx, runID)
	if err != nil {
		return events.TrainCompleted{CorrelationID: correlationID, RunID: runID}, err
	}
	return s.completedRun(ctx, correlationID, run)
}

// completedRun answers a finished run, given its row, with the facts its
// consumers need (events.RunFacts): the final checkpoints, model config,
// tokenizer, loss curve, and the synth set and dataset it trained on.
func (s *Service) completedRun(ctx context.Context, correlationID string, run runRow) (events.TrainCompleted, error) {
	runID := run.ID
	out := events.TrainCompleted{CorrelationID: correlationID, RunID: runID,
		Checkpoints: map[string]string{}, FinalLoss: map[string]float64{}}
	var err error
	facts := &events.RunFacts{SynthSetID: run.SynthSetID, Backend: run.Backend,
		ModelConfig: json.RawMessage(run.ModelConfig), TokenizerKey: run.TokenizerKey}
	if len(run.ModelConfig) == 0 {
		return out, fmt.Errorf("train: completed run %s has no model config recorded", runID)
	}
	if facts.ModelConfigSHA256, err = model.ConfigSHA256(run.ModelConfig); err != nil {
		return out, fmt.Errorf("train: completed run %s: %w", runID, err)
	}
	if run.Synth == nil {
		return out, fmt.Errorf("train: completed run %s records no facts of its synth set %s", runID, run.SynthSetID)
	}
	facts.ManifestKey, facts.DatasetID, facts.DatasetRoot = run.Synth.ManifestKey, run.Synth.DatasetID, run.Synth.DatasetRoot
	if facts.Losses, err = s.store.losses(ctx, runID); err != nil {
		return out, err
	}
	rows, err := s.store.stages(ctx, runID)
	if err != nil {
		return out, err
	}
	// The stored spec is the resolved one (every stage's objective
	// written out); a spec that no longer decodes leaves the objectives
	// empty, which consumers read as every loss.
	var spec RunSpec
	if err := json.Unmarshal(run.Spec, &spec); err != nil {
		s.log.WarnContext(ctx, "run spec does not decode: checkpoints answered without their stage objectives",
			"run", runID, "error", err)
		spec = RunSpec{}
	}
	for _, st := range Stages {
		c, err := s.store.lastCheckpoint(ctx, runID, st)
		if err != nil {
			return out, err
		}
		if c == nil {
			return out, fmt.Errorf("train: completed run %s has no %s checkpoint", runID, st)
		}
		out.Checkpoints[st] = c.ID
		facts.Checkpoints = append(facts.Checkpoints, events.CheckpointRef{ID: c.ID, Stage: st, Step: c.Step, BlobKey: c.BlobKey, SHA256: c.SHA256,
			Objective: spec.Stage(st).Objective})
		if r, ok := rows[st]; ok && r.LastLoss != nil {
			out.FinalLoss[st] = *r.LastLoss
		} else {
			out.FinalLoss[st] = c.Loss
		}
	}
	out.Run = facts
	return out, nil
}

// runner is one Train call's state.
type runner struct {
	s        *Service
	req      events.TrainRequested
	spec     RunSpec
	backend  compute.Backend
	progress func(events.Progress)
	dir      string
	data     *runData
	// configHash is data.ModelConfig's model.ConfigSHA256.
	configHash string
	total      int64 // steps over all stages
	done       int64 // steps of completed stages
}

func (r *runner) logf(msg string, args ...any) { r.s.log.Info(msg, args...) }

func (r *runner) run(ctx context.Context, run runRow) error {
	if err := r.prepare(ctx, run); err != nil {
		return err
	}
	defer r.data.stop()
	rows, err := r.s.store.stages(ctx, run.ID)
	if err != nil {
		return err
	}
	var prev *checkpointRow // final checkpoint of the previous stage
	for _, stage := range Stages {
		if row, ok := rows[stage]; ok && row.Status == "completed" {
			if prev, err = r.s.store.lastCheckpoint(ctx, run.ID, stage); err != nil {
				return err
			}
			if prev == nil {
				return fmt.Errorf("train: stage %s is completed but has no checkpoint", stage)
			}
			r.done += int64(r.spec.Stage(stage).Steps)
			r.s.setLive(run.ID, func(st *RunStatus) {
				st.setStage(stage, "completed", row.Step, prev.Loss)
			})
			r.logf("stage already completed", "run", run.ID, "stage", stage, "checkpoint", prev.ID)
			continue
		}
		if prev, err = r.stage(ctx, run.ID, stage, prev); err != nil {
			return fmt.Errorf("train %s: %w", stage, err)
		}
		r.done += int64(r.spec.Stage(stage).Steps)
	}
	return nil
}

// prepare builds (or reuses) the tokenizer, model config and shards.
func (r *runner) prepare(ctx context.Context, run runRow) error {
	ctx, span := tracer.Start(ctx, "train.prepareData")
	defer span.End()
	if run.Synth == nil {
		return fmt.Errorf("train: run %s records no facts of its synth set %s: %w", run.ID, run.SynthSetID, ErrInvalidRequest)
	}
	set, err := r.s.cfg.Synth(ctx, *run.Synth)
	if err != nil {
		return fmt.Errorf("train: open synth set %s: %w", run.SynthSetID, err)
	}
	var tok *model.Tokenizer
	if run.TokenizerKey != "" {
		f, err := r.s.cfg.Blob.Open(run.TokenizerKey)
		if err != nil {
			return fmt.Errorf("train: run tokenizer: %w", err)
		}
		tok, err = model.LoadTokenizer(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("train: run tokenizer: %w", err)
		}
	}
	r.progress(events.Progress{CorrelationID: r.req.CorrelationID, Service: "train", Phase: "prepare",
		Total: r.total, Message: "building tokenized shards", At: time.Now()})
	data, err := prepareData(ctx, filepath.Join(r.dir, "data"), run.SynthSetID, r.spec, set, tok, r.logf)
	if err != nil {
		return err
	}
	if run.TokenizerKey == "" {
		var buf bytes.Buffer
		if err := data.Tokenizer.Save(&buf); err != nil {
			return fmt.Errorf("train: save tokenizer: %w", err)
		}
		key := fmt.Sprintf("runs/%s/tokenizer.json", run.ID)
		if _, _, err := r.s.cfg.Blob.Put(key, &buf); err != nil {
			return fmt.Errorf("train: save tokenizer: %w", err)
		}
		if err := r.s.store.setRunData(ctx, run.ID, data.ModelConfig, key); err != nil {
			return err
		}
	}
	if r.configHash, err = model.ConfigSHA256(data.ModelConfig); err != nil {
		return fmt.Errorf("train: run %s: %w", run.ID, err)
	}
	r.data = data
	return nil
}

func (st *RunStatus) setStage(stage, status string, step int, loss float64) {
	st.Stage, st.Step, st.Loss = stage, step, loss
	for i := range st.Stages {
		if st.Stages[i].Stage == stage {
			st.Stages[i].Status, st.Stages[i].Step = status, step
			st.Steps = st.Stages[i].Steps
			if st.Stages[i].FirstLoss == 0 {
				st.Stages[i].FirstLoss = loss
			}
			st.Stages[i].LastLoss = loss
		}
	}
}

// blobPath is the local path of a blob key.
func (r *runner) blobPath(key string) (string, error) {
	p, err := r.s.cfg.Blob.LocalPath(key)
	if err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", key, err)
	}
	return p, nil
}

// stage runs one stage to its end and returns its final checkpoint.
func (r *runner) stage(ctx context.Context, runID, stage string, prev *checkpointRow) (*checkpointRow, error) {
	ctx, span := tracer.Start(ctx, "train.stage", trace.WithAttributes(attribute.String("run_id", runID), attribute.String("stage", stage)))
	defer span.End()
	ss := r.spec.Stage(stage)
	shards, err := r.data.stageShards(ctx, stage)
	if err != nil {
		return nil, fmt.Errorf("train: %s shards: %w", stage, err)
	}
	base := compute.TrainRequest{
		RunID: runID, Stage: stage, ModelConfig: r.data.ModelConfig, Shards: shards,
		Trainable: ss.Trainable, Frozen: ss.Frozen, Steps: ss.Steps, BatchSize: ss.BatchSize,
		LearningRate: ss.LearningRate, WarmupSteps: ss.WarmupSteps, WeightDecay: ss.WeightDecay,
		Seed: r.spec.Seed, LogEvery: r.spec.LogEvery, CheckpointEvery: ss.CheckpointEvery,
		Objective: ss.Objective,
	}
	for attempt := 0; ; attempt++ {
		last, err := r.s.store.lastCheckpoint(ctx, runID, stage)
		if err != nil {
			return nil, err
		}
		req := base
		chainPrev := prev
		switch {
		case last != nil && last.Step >= ss.Steps:
			// The final checkpoint was recorded before the interruption.
			if err := r.s.store.finishStage(ctx, runID, stage); err != nil {
				return nil, err
			}
			r.s.setLive(runID, func(st *RunStatus) { st.setStage(stage, "completed", last.Step, last.Loss) })
			return last, nil
		case last != nil:
			if req.ResumeCheckpoint, err = r.blobPath(last.BlobKey); err != nil {
				return nil, err
			}
			chainPrev = last
			r.logf("resuming stage", "run", runID, "stage", stage, "step", last.Step, "attempt", attempt)
		case prev != nil:
			if req.InitCheckpoint, err = r.blobPath(prev.BlobKey); err != nil {
				return nil, err
			}
		}
		// Every backend attempt counts, crash retries included.
		if err := r.s.store.startStage(ctx, runID, stage, ss.Steps); err != nil {
			return nil, err
		}
		// A directory per attempt: a plugin orphaned by a dead worker must
		// not write over the files of the attempt that replaced it.
		stageDir := filepath.Join(r.dir, stage)
		if err := os.MkdirAll(stageDir, 0o755); err != nil {
			return nil, fmt.Errorf("checkpoint dir: %w", err)
		}
		if req.CheckpointDir, err = os.MkdirTemp(stageDir, "work-*"); err != nil {
			return nil, fmt.Errorf("checkpoint dir: %w", err)
		}
		rec := &recorder{r: r, runID: runID, stage: stage, prev: chainPrev, flushed: time.Now()}
		res, err := r.backend.Train(ctx, req, rec.onProgress(ctx))
		if err == nil {
			err = rec.finish(ctx, res)
		}
		if err == nil {
			os.RemoveAll(req.CheckpointDir) // what was reported lives in the blob store now
			if err := r.s.store.finishStage(ctx, runID, stage); err != nil {
				return nil, err
			}
			final, err := r.s.store.lastCheckpoint(ctx, runID, stage)
			if err != nil {
				return nil, err
			}
			if final == nil || final.Step < ss.Steps {
				return nil, fmt.Errorf("stage ended without its final checkpoint (last %+v)", final)
			}
			r.s.setLive(runID, func(st *RunStatus) { st.setStage(stage, "completed", final.Step, final.Loss) })
			r.logf("stage completed", "run", runID, "stage", stage, "checkpoint", final.ID, "loss", final.Loss)
			return final, nil
		}
		// Keep what was logged before the failure.
		if ferr := rec.flush(context.WithoutCancel(ctx)); ferr != nil {
			r.s.log.ErrorContext(ctx, "record loss points", "error", ferr)
		}
		if errors.Is(err, compute.ErrPluginCrashed) && ctx.Err() == nil && attempt < r.spec.CrashRetries {
			r.s.log.WarnContext(ctx, "plugin crashed; resuming the stage from its last checkpoint",
				"run", runID, "stage", stage, "attempt", attempt+1, "of", r.spec.CrashRetries, "error", err)
			continue
		}
		if errors.Is(err, compute.ErrInvalidArgument) {
			err = fmt.Errorf("%w (%w)", err, ErrInvalidRequest)
		}
		return nil, err
	}
}

// recorder turns a backend's progress into Postgres rows, blob files and
// progress events.
type recorder struct {
	r       *runner
	runID   string
	stage   string
	prev    *checkpointRow // last checkpoint recorded before this one
	points  []lossPoint
	flushed time.Time
}

// onProgress returns the backend's progress callback. A checkpoint that
// arrives as ctx is cancelled is still recorded (each write is bounded
// instead), so that a stopping worker keeps what it has.
func (c *recorder) onProgress(ctx context.Context) func(compute.TrainProgress) error {
	return func(p compute.TrainProgress) error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		return c.report(ctx, p)
	}
}

func (c *recorder) report(ctx context.Context, p compute.TrainProgress) error {
	c.points = append(c.points, lossPoint{Step: p.Step, Loss: p.Loss, LR: p.LearningRate, TokensPerSec: p.TokensPerSec})
	if p.Checkpoint != nil {
		if err := c.checkpoint(ctx, *p.Checkpoint); err != nil {
			return err
		}
	} else if time.Since(c.flushed) >= c.r.s.cfg.MetricsFlush {
		if err := c.flush(ctx); err != nil {
			return err
		}
	}
	c.r.s.setLive(c.runID, func(st *RunStatus) { st.setStage(c.stage, "running", p.Step, p.Loss) })
	details, _ := json.Marshal(map[string]any{
		"step": p.Step, "loss": p.Loss, "lr": p.LearningRate, "tokens_per_sec": p.TokensPerSec,
	})
	msg := fmt.Sprintf("%s step %d/%d loss %.4f", c.stage, p.Step, c.r.spec.Stage(c.stage).Steps, p.Loss)
	if p.Checkpoint != nil {
		msg += " (checkpoint)"
	}
	c.r.progress(events.Progress{
		CorrelationID: c.r.req.CorrelationID, Service: "train", Phase: c.stage,
		Done: c.r.done + int64(p.Step), Total: c.r.total, Message: msg, Details: details, At: time.Now(),
	})
	return nil
}

func (c *recorder) flush(ctx context.Context) error {
	if len(c.points) == 0 {
		return nil
	}
	if err := c.r.s.store.recordMetrics(ctx, c.runID, c.stage, c.points); err != nil {
		return err
	}
	c.points, c.flushed = nil, time.Now()
	return nil
}

// checkpoint moves a checkpoint file into the blob store and records it.
func (c *recorder) checkpoint(ctx context.Context, ck compute.Checkpoint) error {
	sum, n, err := blob.FileSHA256(ck.Path)
	if err != nil {
		return fmt.Errorf("checkpoint step %d: %w", ck.Step, err)
	}
	if ck.SHA256 != "" && ck.SHA256 != sum {
		return fmt.Errorf("checkpoint %s: backend reported sha256 %s, file has %s", ck.Path, ck.SHA256, sum)
	}
	key := fmt.Sprintf("runs/%s/%s/step-%d.safetensors", c.runID, c.stage, ck.Step)
	prevID := ""
	if c.prev != nil {
		prevID = c.prev.ID
	}
	id, dup, same, err := c.r.s.store.recordCheckpoint(ctx, newCheckpoint{
		RunID: c.runID, Stage: c.stage, Step: ck.Step, Loss: ck.Loss, BlobKey: key, SHA256: sum, Bytes: n,
		PrevID: prevID, Points: c.points, ModelConfigSHA256: c.r.configHash,
		Store: func() error { return c.moveToBlob(ck.Path, key, sum) },
	})
	if err != nil {
		return err
	}
	c.points, c.flushed = nil, time.Now()
	if dup {
		// Recorded by an earlier attempt: keep that file and row.
		if !same {
			c.r.s.log.WarnContext(ctx, "checkpoint step recorded before with different bytes; keeping the recorded one",
				"run", c.runID, "stage", c.stage, "step", ck.Step)
		}
		os.Remove(ck.Path)
	}
	c.prev = &checkpointRow{ID: id, Stage: c.stage, Step: ck.Step, Loss: ck.Loss, BlobKey: key, SHA256: sum, Bytes: n}
	c.r.s.log.InfoContext(ctx, "checkpoint", "run", c.runID, "stage", c.stage, "step", ck.Step, "loss", ck.Loss,
		"key", key, "duplicate", dup)
	return nil
}

// moveToBlob hands the file to the blob store (blob.Store.PutFile: on the
// local store synced and renamed (same filesystem) or copied through Put
// (synced, verified, renamed); on S3 uploaded and kept as the cached copy),
// and checks the stored bytes. It runs inside the transaction that records
// the checkpoint, so that a store that cannot take the file (full,
// read-only) records no row.
func (c *recorder) moveToBlob(path, key, sum string) error {
	got, _, err := c.r.s.cfg.Blob.PutFile(key, path, sum)
	if err != nil {
		return fmt.Errorf("store checkpoint %s: %w", key, err)
	}
	if got != sum {
		return fmt.Errorf("store checkpoint %s: stored sha256 %s, want %s", key, got, sum)
	}
	return nil
}

// finish records what the stage's result adds to its progress reports:
// normally nothing, since the final checkpoint was reported as progress.
func (c *recorder) finish(ctx context.Context, res compute.TrainResult) error {
	if c.prev == nil || c.prev.Stage != c.stage || c.prev.Step < res.Final.Step {
		if _, err := os.Stat(res.Final.Path); err == nil {
			if err := c.checkpoint(ctx, res.Final); err != nil {
				return err
			}
		}
	}
	return c.flush(ctx)
}
