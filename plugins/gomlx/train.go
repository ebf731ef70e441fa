package gomlx

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// trainer owns one stage's compiled step and its parameter buffers.
type trainer struct {
	b      *Backend
	cfg    model.Config
	specs  []paramSpec
	sel    []bool
	layout *trainStepLayout
	exec   *graph.Exec

	trainIdx, frozenIdx []int
	tp, tm, tv, fp      []*tensors.Tensor
}

// stepOut is what one optimizer step reports: the answer loss, the
// gradient norm, and Config.GroundLossWeight's and Config.BoxLossWeight's
// losses (each 0 without its weight).
type stepOut struct {
	loss, gnorm, ground, box, grounder float32
}

func newTrainer(b *Backend, cfg model.Config, objective string, specs []paramSpec, sel []bool, st *modelState) (*trainer, error) {
	t := &trainer{b: b, cfg: cfg, specs: specs, sel: sel}
	t.layout = &trainStepLayout{cfg: cfg, faults: b.faults, grounderOnly: objective == compute.ObjectiveGrounder}
	for i, p := range specs {
		w := tensors.FromFlatDataAndDimensions(append([]float32(nil), st.weights[p.Name]...), p.Shape...)
		if sel[i] {
			t.trainIdx = append(t.trainIdx, i)
			t.layout.trainable = append(t.layout.trainable, p)
			t.tp = append(t.tp, w)
			m, v := st.m[p.Name], st.v[p.Name]
			if m == nil {
				m, v = make([]float32, p.Size()), make([]float32, p.Size())
			}
			t.tm = append(t.tm, tensors.FromFlatDataAndDimensions(append([]float32(nil), m...), p.Shape...))
			t.tv = append(t.tv, tensors.FromFlatDataAndDimensions(append([]float32(nil), v...), p.Shape...))
		} else {
			t.frozenIdx = append(t.frozenIdx, i)
			t.layout.frozen = append(t.layout.frozen, p)
			t.fp = append(t.fp, w)
		}
	}
	if len(t.trainIdx) == 0 {
		return nil, invalidf("build trainer: no parameter is trainable (check Trainable and Frozen prefixes)")
	}
	exec, err := graph.NewExec(b.ml, t.layout.graphFn)
	if err != nil {
		return nil, fmt.Errorf("build train step: %w", err)
	}
	t.exec = exec.SetMaxCache(-1).WithName("tinygrounder_train_step")
	return t, nil
}

func (t *trainer) close() {
	t.exec.Finalize()
	for _, ts := range [][]*tensors.Tensor{t.tp, t.tm, t.tv, t.fp} {
		for _, x := range ts {
			if x != nil && x.Ok() {
				_ = x.FinalizeAll()
			}
		}
	}
}

// step runs one optimizer step.
func (t *trainer) step(lr, bc1, bc2, wd float32, bt trainBatch) (stepOut, error) {
	nt := len(t.tp)
	args := make([]any, 0, 3*nt+len(t.fp)+4+numBatchInputs)
	for _, group := range [][]*tensors.Tensor{t.tp, t.tm, t.tv} {
		for _, x := range group {
			d, err := graph.DonateTensorBuffer(x, t.b.ml, 0)
			if err != nil {
				return stepOut{}, fmt.Errorf("donate parameter buffer: %w", err)
			}
			args = append(args, d)
		}
	}
	for _, x := range t.fp {
		args = append(args, x)
	}
	c := t.cfg
	args = append(args, lr, bc1, bc2, wd,
		tensors.FromFlatDataAndDimensions(bt.tokens, bt.B, bt.L),
		tensors.FromFlatDataAndDimensions(bt.patchIdx, bt.B, bt.L),
		tensors.FromFlatDataAndDimensions(bt.isPatch, bt.B, bt.L),
		tensors.FromFlatDataAndDimensions(bt.images, bt.K, c.ImageSize, c.ImageSize, 3),
		tensors.FromFlatDataAndDimensions(bt.lossIdx, len(bt.lossIdx)),
		tensors.FromFlatDataAndDimensions(bt.lossTgt, len(bt.lossTgt)),
		tensors.FromFlatDataAndDimensions(bt.lossW, len(bt.lossW)),
		tensors.FromFlatDataAndDimensions(bt.patchTgt, bt.B, bt.L),
		tensors.FromFlatDataAndDimensions(bt.patchW, bt.B, bt.L),
		tensors.FromFlatDataAndDimensions(bt.patchBox, bt.B, bt.L, 4),
		tensors.FromFlatDataAndDimensions(bt.patchBoxW, bt.B, bt.L),
		tensors.FromFlatDataAndDimensions(bt.textMask, bt.B, bt.textLen),
		tensors.FromFlatDataAndDimensions(bt.imgRow, bt.K),
		tensors.FromFlatDataAndDimensions(bt.imgFirst, bt.B),
		tensors.FromFlatDataAndDimensions(bt.refBox, bt.B, 4),
		tensors.FromFlatDataAndDimensions(bt.refW, bt.B),
		tensors.FromFlatDataAndDimensions(bt.exists, bt.B),
		tensors.FromFlatDataAndDimensions(bt.existsW, bt.B),
		tensors.FromFlatDataAndDimensions(bt.cellIDs, bt.B, c.Patches(), model.CellWords),
		tensors.FromFlatDataAndDimensions(bt.cellIDW, bt.B, c.Patches(), model.CellWords),
		tensors.FromFlatDataAndDimensions(bt.cellW, bt.B, c.Patches()),
		tensors.FromFlatDataAndDimensions(bt.nameImg, bt.nameN),
		tensors.FromFlatDataAndDimensions(bt.nameIDs, bt.nameN, nameSlots(c)),
		tensors.FromFlatDataAndDimensions(bt.nameW, bt.nameN, nameSlots(c)),
	)
	outs, err := t.exec.Call(args...)
	if err != nil {
		// The donated buffers are gone: the trainer cannot continue.
		t.tp, t.tm, t.tv = nil, nil, nil
		return stepOut{}, fmt.Errorf("run train step: %w", err)
	}
	copy(t.tp, outs[:nt])
	t.tm = append(t.tm[:0], outs[nt:2*nt]...)
	t.tv = append(t.tv[:0], outs[2*nt:3*nt]...)
	return stepOut{
		loss:   tensors.ToScalar[float32](outs[3*nt]),
		gnorm:  tensors.ToScalar[float32](outs[3*nt+1]),
		ground: tensors.ToScalar[float32](outs[3*nt+2]),
		box:    tensors.ToScalar[float32](outs[3*nt+3]),
		// grounder is Config.Grounder's loss (0 without it).
		grounder: tensors.ToScalar[float32](outs[3*nt+4]),
	}, nil
}

// state copies the parameters and optimizer moments to host memory.
func (t *trainer) state(step int) (*modelState, error) {
	return hostState(step, t.specs, t.trainIdx, t.frozenIdx, t.tp, t.tm, t.tv, t.fp, tensors.CopyFlatData[float32])
}

// learningRate is linear warmup to peak over warmup steps, then cosine decay
// to a tenth of peak at the last step. step is 1-based.
func learningRate(step, total, warmup int, peak float64) float64 {
	if warmup > 0 && step <= warmup {
		return peak * float64(step) / float64(warmup)
	}
	if total <= warmup {
		return peak
	}
	frac := math.Min(1, float64(step-warmup)/float64(total-warmup))
	floor := 0.1 * peak
	return floor + (peak-floor)*0.5*(1+math.Cos(math.Pi*frac))
}

func validateTrainRequest(req *compute.TrainRequest) error {
	switch {
	case req.Steps <= 0:
		return invalidf("train request: steps %d must be positive", req.Steps)
	case req.BatchSize <= 0:
		return invalidf("train request: batch size %d must be positive", req.BatchSize)
	case !(req.LearningRate > 0):
		return invalidf("train request: learning rate %v must be positive", req.LearningRate)
	case req.WarmupSteps < 0 || req.WeightDecay < 0:
		return invalidf("train request: warmup %d and weight decay %v must not be negative", req.WarmupSteps, req.WeightDecay)
	case req.CheckpointDir == "":
		return invalidf("train request: checkpoint dir is empty")
	case req.Stage == "" || strings.ContainsAny(req.Stage, `/\`) || req.Stage == "." || req.Stage == "..":
		return invalidf("train request: stage %q must be a plain name", req.Stage)
	case len(req.Shards) == 0:
		return invalidf("train request: no shards")
	case req.Objective != compute.ObjectiveAll && req.Objective != compute.ObjectiveGrounder:
		return invalidf("train request: objective %q is not one of \"\" (all losses) and %q", req.Objective, compute.ObjectiveGrounder)
	}
	if req.LogEvery <= 0 {
		req.LogEvery = 10
	}
	if req.CheckpointEvery < 0 {
		req.CheckpointEvery = 0
	}
	return nil
}

// onlyGrounder narrows a trainable selection to compute.ObjectiveGrounder's
// parameters (model.GrounderReads).
func onlyGrounder(specs []paramSpec, sel []bool) {
	for i, p := range specs {
		sel[i] = sel[i] && model.GrounderReads(p.Name)
	}
}

// Train runs one stage. See compute.Backend.
func (b *Backend) Train(ctx context.Context, req compute.TrainRequest, progress func(compute.TrainProgress) error) (res compute.TrainResult, err error) {
	ctx, span := b.tracer.Start(ctx, b.eng.name()+".Train", trace.WithAttributes(
		attribute.String("run_id", req.RunID), attribute.String("stage", req.Stage), attribute.Int("steps", req.Steps)))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	if !b.eng.canTrain() {
		return res, fmt.Errorf("%w: the %s engine serves models, it does not train them (train with gomlx or libtorch)", compute.ErrUnimplemented, b.eng.name())
	}
	if err := validateTrainRequest(&req); err != nil {
		return res, err
	}
	if progress == nil {
		progress = func(compute.TrainProgress) error { return nil }
	}
	cfg, err := model.ParseConfig(req.ModelConfig)
	if err != nil {
		return res, fmt.Errorf("train: %w: %w", compute.ErrInvalidArgument, err)
	}
	cfgSHA := cfg.SHA256()
	specs := paramSpecs(cfg)
	sel := selectTrainable(specs, req.Trainable, req.Frozen)
	if req.Objective == compute.ObjectiveGrounder {
		if !cfg.Grounder {
			return res, invalidf("train request: objective %q needs a model with the grounding head (model.grounder)", req.Objective)
		}
		onlyGrounder(specs, sel)
	}

	var st *modelState
	switch {
	case req.ResumeCheckpoint != "":
		if st, err = readCheckpoint(req.ResumeCheckpoint, specs, sel, true); err != nil {
			return res, fmt.Errorf("train: resume: %w", fileError(err))
		}
	case req.InitCheckpoint != "":
		if st, err = readCheckpoint(req.InitCheckpoint, specs, sel, false); err != nil {
			return res, fmt.Errorf("train: init: %w", fileError(err))
		}
	default:
		st = &modelState{weights: initParams(specs, req.Seed)}
	}
	if sha := st.meta["config_sha256"]; sha != "" && sha != cfgSHA {
		b.log.Warn("checkpoint config hash differs from the request's", "checkpoint", sha, "request", cfgSHA)
	}
	res.FLOPsStep = cfg.FLOPsPerStep(req.BatchSize)
	start := st.step
	if start >= req.Steps && req.ResumeCheckpoint != "" {
		sha, n, err := compute.FileSHA256(req.ResumeCheckpoint)
		if err != nil {
			return res, fmt.Errorf("train: %w", err)
		}
		loss, _ := strconv.ParseFloat(st.meta["loss"], 64)
		res.Final = compute.Checkpoint{Path: req.ResumeCheckpoint, Step: start, Loss: loss, SHA256: sha, Bytes: n}
		res.Steps, res.FirstLoss, res.LastLoss = start, loss, loss
		return res, nil
	}

	ds, err := newDataset(req.Shards, cfg, req.Seed)
	if err != nil {
		return res, fmt.Errorf("train: %w", fileError(err))
	}
	tr, err := b.eng.newStepper(b, cfg, req.Objective, specs, sel, st)
	if err != nil {
		return res, fmt.Errorf("train: %w", err)
	}
	defer tr.close()
	nTrain := 0
	for i, p := range specs {
		if sel[i] {
			nTrain += p.Size()
		}
	}
	b.log.Info("train stage starting", "run_id", req.RunID, "stage", req.Stage, "from_step", start, "steps", req.Steps,
		"batch", req.BatchSize, "params", cfg.ParamCount(), "trainable_params", nTrain, "samples", len(ds.samples))

	// The data position continues from the checkpoint's, so that a resumed
	// run reads the samples the uninterrupted one would have read next.
	dataPos := int64(start) * int64(req.BatchSize)
	if req.ResumeCheckpoint != "" {
		if p, err := strconv.ParseInt(st.meta["data_pos"], 10, 64); err == nil && p >= 0 {
			dataPos = p
		}
	}
	meta := map[string]string{
		"backend":       b.eng.name(),
		"config_sha256": cfgSHA,
		"stage":         req.Stage,
		"run_id":        req.RunID,
		"seed":          strconv.FormatInt(req.Seed, 10),
		"batch_size":    strconv.Itoa(req.BatchSize),
	}
	save := func(step int, loss float64) (*compute.Checkpoint, error) {
		s, err := tr.state(step)
		if err != nil {
			return nil, err
		}
		s.meta = meta
		meta["data_pos"] = strconv.FormatInt(dataPos, 10)
		meta["loss"] = strconv.FormatFloat(loss, 'g', -1, 64)
		f, err := checkpointFile(specs, s)
		if err != nil {
			return nil, err
		}
		path := filepath.Join(req.CheckpointDir, fmt.Sprintf("%s-step%06d.safetensors", req.Stage, step))
		sha, n, err := writeSafetensorsAtomic(path, f)
		if err != nil {
			return nil, fmt.Errorf("save checkpoint: %w", err)
		}
		b.log.Info("checkpoint saved", "path", path, "step", step, "bytes", n, "sha256", sha)
		return &compute.Checkpoint{Path: path, Step: step, Loss: loss, SHA256: sha, Bytes: n}, nil
	}

	// The reported loss is the mean over the last lossWindow batches: at
	// least two groups' worth of length-grouped batches (dataset.batchRefs),
	// since one batch's loss says which records it holds (a batch of short
	// crop names against one of dense descriptions) as much as how far
	// training is.
	lossWindow := max(req.LogEvery, 2*groupBatches)
	window := make([]float64, 0, lossWindow)
	// Config.GroundLossWeight's loss over the last batches that label any
	// patch (a batch without labels adds nothing to it).
	groundWindow := make([]float64, 0, req.LogEvery)
	grounderWindow := make([]float64, 0, req.LogEvery)
	boxWindow := make([]float64, 0, req.LogEvery) // Config.BoxLossWeight's, likewise
	windowTokens := 0
	windowStart := time.Now()
	first := true
	res.Steps = start
	batches := ds.prefetch(dataPos, req.BatchSize)
	defer batches.close()
	for step := start + 1; step <= req.Steps; step++ {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("train: stopped before step %d: %w", step, err)
		}
		bt := batches.next()
		dataPos += int64(req.BatchSize)
		lr := learningRate(step, req.Steps, req.WarmupSteps, req.LearningRate)
		bc1 := 1 / (1 - math.Pow(adamBeta1, float64(step)))
		bc2 := 1 / (1 - math.Pow(adamBeta2, float64(step)))
		out, err := tr.step(float32(lr), float32(bc1), float32(bc2), float32(req.WeightDecay), bt)
		if err != nil {
			return res, fmt.Errorf("train: step %d: %w", step, err)
		}
		loss := float64(out.loss)
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return res, fmt.Errorf("train: step %d: loss is %v (grad norm %v)", step, loss, out.gnorm)
		}
		if first {
			res.FirstLoss, first = loss, false
		}
		window = slide(window, loss, lossWindow)
		if cfg.Grounder && hasGrounderLabels(bt) {
			grounderWindow = slide(grounderWindow, float64(out.grounder), req.LogEvery)
		}
		if bt.labelled > 0 {
			groundWindow = slide(groundWindow, float64(out.ground), req.LogEvery)
			if cfg.BoxLossWeight > 0 {
				boxWindow = slide(boxWindow, float64(out.box), req.LogEvery)
			}
		}
		windowTokens += bt.realTokens
		res.Steps = step
		res.LastLoss = mean(window)

		logNow := step%req.LogEvery == 0 || step == req.Steps
		saveNow := (req.CheckpointEvery > 0 && step%req.CheckpointEvery == 0) || step == req.Steps
		if !logNow && !saveNow {
			continue
		}
		p := compute.TrainProgress{Step: step, Loss: res.LastLoss, LearningRate: lr,
			TokensPerSec: float64(windowTokens) / math.Max(time.Since(windowStart).Seconds(), 1e-9)}
		if logNow {
			b.log.Debug("train step", append([]any{"stage", req.Stage, "step", step, "loss", res.LastLoss, "lr", lr, "grad_norm", out.gnorm,
				"tokens_per_s", p.TokensPerSec}, auxLosses(cfg, groundWindow, boxWindow, grounderWindow)...)...)
		}
		if saveNow {
			// The rate covers compute only: the window restarts after the save.
			ck, err := save(step, res.LastLoss)
			if err != nil {
				return res, fmt.Errorf("train: step %d: %w", step, err)
			}
			res.Final = *ck
			p.Checkpoint = ck
			if cfg.GroundLossWeight > 0 && len(groundWindow) > 0 || cfg.Grounder && len(grounderWindow) > 0 {
				b.log.Info("grounding loss", append([]any{"stage", req.Stage, "step", step}, auxLosses(cfg, groundWindow, boxWindow, grounderWindow)...)...)
			}
		}
		windowTokens, windowStart = 0, time.Now()
		if err := progress(p); err != nil {
			return res, fmt.Errorf("train: progress at step %d: %w", step, err)
		}
	}
	b.log.Info("train stage done", "stage", req.Stage, "steps", res.Steps, "first_loss", res.FirstLoss, "last_loss", res.LastLoss)
	return res, nil
}

// auxLosses are the log attributes of the training-only losses that cfg
// trains: "ground_loss" and "box_loss", each the mean of its window; a
// loss the config does not train is left out rather than logged as 0.
func auxLosses(cfg model.Config, ground, box, grounder []float64) []any {
	var out []any
	if cfg.Grounder {
		out = append(out, "grounder_loss", mean(grounder))
	}
	if cfg.GroundLossWeight > 0 {
		out = append(out, "ground_loss", mean(ground))
	}
	if cfg.BoxLossWeight > 0 {
		out = append(out, "box_loss", mean(box))
	}
	return out
}

// slide appends x to the window w of at most n values, dropping the oldest.
func slide(w []float64, x float64, n int) []float64 {
	if len(w) == n {
		w = w[1:]
	}
	return append(w, x)
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}
