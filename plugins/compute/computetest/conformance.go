// Package computetest is the conformance suite every compute backend must
// pass (like Watermill's universal pub/sub tests), with the fixtures it
// needs (a tiny model config, tiny tokenized shards, prompts), reference
// logits recorded from the reference backend, and Toy, a tiny backend for
// testing plumbing.
//
// A backend's test runs it in-process and, ideally, through its plugin
// binary:
//
//	func TestConformance(t *testing.T) {
//		computetest.RunConformance(t, computetest.Harness{
//			New: func(t *testing.T) compute.Backend { return mybackend.New() },
//			ReferenceLogits: "testdata/reference.json",
//		})
//	}
package computetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// Harness tells the suite how to get a backend and how strict to be.
type Harness struct {
	// New returns a fresh backend: a new instance or a new plugin process.
	// Required. If it implements io.Closer the suite closes it at the end
	// of the test that made it.
	New func(t *testing.T) compute.Backend
	// ModelConfig is the model config JSON. Default TinyConfigJSON().
	ModelConfig []byte
	// TrainSteps is the length of the training run. Default 40.
	TrainSteps int
	// BatchSize of the training run. Default 8.
	BatchSize int
	// LearningRate (peak) of the training run. Default 1e-2.
	LearningRate float64
	// Tolerance bounds the largest absolute logit difference between two
	// loads of one checkpoint, and between a resumed and an uninterrupted
	// run. Default 1e-5.
	Tolerance float64
	// DecodeTolerance bounds the difference between Prefill+Decode and a
	// Prefill of the longer sequence. Default 1e-4.
	DecodeTolerance float64
	// ReferenceLogits is a file written by WriteReference from the
	// reference backend; when set, the backend must reproduce its logits
	// from its checkpoint within ReferenceTolerance. Inference-only
	// backends need it (it supplies their checkpoint).
	ReferenceLogits string
	// ReferenceTolerance bounds |got - want| <= tol * (1 + |want|).
	// Default 1e-3.
	ReferenceTolerance float64
	// Timeout bounds each call the suite makes. Default 5 minutes.
	Timeout time.Duration
}

func (h *Harness) defaults(t *testing.T) {
	t.Helper()
	if h.New == nil {
		t.Fatal("computetest: Harness.New is required")
	}
	if h.ModelConfig == nil {
		h.ModelConfig = TinyConfigJSON()
	}
	if h.TrainSteps == 0 {
		h.TrainSteps = 40
	}
	if h.TrainSteps < 4 {
		t.Fatalf("computetest: TrainSteps %d: want at least 4", h.TrainSteps)
	}
	if h.BatchSize == 0 {
		h.BatchSize = 8
	}
	if h.LearningRate == 0 {
		h.LearningRate = 1e-2
	}
	if h.Tolerance == 0 {
		h.Tolerance = 1e-5
	}
	if h.DecodeTolerance == 0 {
		h.DecodeTolerance = 1e-4
	}
	if h.ReferenceTolerance == 0 {
		h.ReferenceTolerance = 1e-3
	}
	if h.Timeout == 0 {
		h.Timeout = 5 * time.Minute
	}
}

func (h *Harness) backend(t *testing.T) compute.Backend {
	t.Helper()
	b := h.New(t)
	if b == nil {
		t.Fatal("computetest: Harness.New returned nil")
	}
	if c, ok := b.(io.Closer); ok {
		t.Cleanup(func() { c.Close() })
	}
	return b
}

func (h *Harness) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
	t.Cleanup(cancel)
	return ctx
}

// suite is the state shared by the subtests: one training run whose
// checkpoints the later tests load.
type suite struct {
	h       Harness
	cfg     model.Config
	b       compute.Backend
	desc    compute.Description
	dir     string
	shard   string
	base    compute.TrainRequest
	trained *trainRun // nil when the backend cannot train
	ckpt    string    // checkpoint the inference tests load
}

type trainRun struct {
	progress []compute.TrainProgress
	result   compute.TrainResult
	mid      *compute.Checkpoint
}

// RunConformance runs the suite against the backends h makes.
func RunConformance(t *testing.T, h Harness) {
	h.defaults(t)
	cfg, err := model.ParseConfig(h.ModelConfig)
	if err != nil {
		t.Fatalf("computetest: model config: %v", err)
	}
	s := &suite{h: h, cfg: cfg, dir: t.TempDir()}
	s.b = h.backend(t)
	if s.shard, err = WriteTinyShard(s.dir, cfg, 48, 1); err != nil {
		t.Fatal(err)
	}
	s.base = compute.TrainRequest{
		RunID: "conformance", Stage: "stage1", ModelConfig: h.ModelConfig, Shards: []string{s.shard},
		Steps: h.TrainSteps, BatchSize: h.BatchSize, LearningRate: h.LearningRate, WarmupSteps: 2,
		Seed: 42, LogEvery: 1, CheckpointEvery: h.TrainSteps / 2,
	}

	t.Run("Describe", s.testDescribe)
	if t.Failed() {
		return
	}
	if s.desc.CanTrain {
		t.Run("Train", s.testTrain)
		if s.trained == nil {
			return // every later test needs its checkpoints
		}
		s.ckpt = s.trained.result.Final.Path
		t.Run("CheckpointFormat", s.testCheckpointFormat)
		t.Run("Resume", s.testResume)
		t.Run("InitAndFreeze", s.testInitFreeze)
		t.Run("Cancel", s.testCancel)
		t.Run("ProgressError", s.testProgressError)
		t.Run("TrainInvalid", s.testTrainInvalid)
	} else {
		if h.ReferenceLogits == "" {
			t.Fatal("computetest: the backend cannot train: set Harness.ReferenceLogits to supply a checkpoint")
		}
		ref, err := ReadReference(h.ReferenceLogits)
		if err != nil {
			t.Fatal(err)
		}
		s.ckpt = ref.CheckpointPath
	}
	t.Run("SameLogitsAcrossLoads", s.testSameLogits)
	t.Run("PrefillDecode", s.testPrefillDecode)
	t.Run("Generate", s.testGenerate)
	t.Run("InferenceErrors", s.testInferenceErrors)
	if h.ReferenceLogits != "" {
		t.Run("Reference", s.testReference)
	}
}

func (s *suite) testDescribe(t *testing.T) {
	d, err := s.b.Describe(s.h.ctx(t))
	if err != nil {
		t.Fatalf("Describe: %v", err)
	}
	if d.Backend == "" || d.Version == "" {
		t.Errorf("Describe: backend %q version %q: both must be set", d.Backend, d.Version)
	}
	if len(d.Devices) == 0 {
		t.Errorf("Describe: no devices")
	}
	if !slices.Contains(d.Dtypes, "float32") {
		t.Errorf("Describe: dtypes %v lack float32", d.Dtypes)
	}
	s.desc = d
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// checkCheckpoint verifies that c describes its file.
func checkCheckpoint(t *testing.T, c compute.Checkpoint) {
	t.Helper()
	sum, n, err := compute.FileSHA256(c.Path)
	if err != nil {
		t.Errorf("checkpoint %s: %v", c.Path, err)
		return
	}
	if sum != c.SHA256 || n != c.Bytes {
		t.Errorf("checkpoint %s: reported sha256 %s, %d bytes; file has %s, %d bytes", c.Path, c.SHA256, c.Bytes, sum, n)
	}
}

func (s *suite) testTrain(t *testing.T) {
	req := s.base
	req.CheckpointDir = filepath.Join(s.dir, "run")
	run := &trainRun{}
	res, err := s.b.Train(s.h.ctx(t), req, func(p compute.TrainProgress) error {
		run.progress = append(run.progress, p)
		return nil
	})
	if err != nil {
		t.Fatalf("Train: %v", err)
	}
	run.result = res
	n := s.h.TrainSteps
	if res.Steps != n {
		t.Errorf("result steps %d, want %d", res.Steps, n)
	}
	if len(run.progress) < n/2 {
		t.Fatalf("%d progress reports for %d steps with LogEvery 1", len(run.progress), n)
	}
	var losses []float64
	last := 0
	for _, p := range run.progress {
		if p.Step <= last || p.Step > n {
			t.Errorf("progress step %d after %d (steps %d)", p.Step, last, n)
		}
		last = p.Step
		if math.IsNaN(p.Loss) || math.IsInf(p.Loss, 0) || p.Loss <= 0 {
			t.Errorf("step %d: loss %v", p.Step, p.Loss)
		}
		if p.LearningRate <= 0 || p.LearningRate > req.LearningRate*(1+1e-9) {
			t.Errorf("step %d: learning rate %v outside (0, %v]", p.Step, p.LearningRate, req.LearningRate)
		}
		if p.TokensPerSec < 0 {
			t.Errorf("step %d: tokens/s %v", p.Step, p.TokensPerSec)
		}
		losses = append(losses, p.Loss)
		if p.Checkpoint != nil {
			checkCheckpoint(t, *p.Checkpoint)
			if p.Checkpoint.Step != p.Step {
				t.Errorf("checkpoint at step %d reported with progress of step %d", p.Checkpoint.Step, p.Step)
			}
			if p.Step == n/2 {
				run.mid = p.Checkpoint
			}
		}
	}
	if run.mid == nil {
		t.Errorf("no checkpoint reported at step %d (CheckpointEvery %d)", n/2, req.CheckpointEvery)
	}
	if res.Final.Step != n {
		t.Errorf("final checkpoint at step %d, want %d", res.Final.Step, n)
	}
	checkCheckpoint(t, res.Final)
	k := max(1, len(losses)/8)
	head, tail := mean(losses[:k]), mean(losses[len(losses)-k:])
	t.Logf("loss: first %d steps %.4f, last %d steps %.4f (result first %.4f last %.4f)", k, head, k, tail, res.FirstLoss, res.LastLoss)
	if !(tail < 0.9*head) {
		t.Errorf("training did not lower the loss: mean of the first %d steps %.4f, of the last %d %.4f", k, head, k, tail)
	}
	if res.FirstLoss != losses[0] || res.LastLoss != losses[len(losses)-1] {
		t.Errorf("result first/last loss %v/%v, progress says %v/%v", res.FirstLoss, res.LastLoss, losses[0], losses[len(losses)-1])
	}
	if res.FLOPsStep <= 0 {
		t.Errorf("FLOPs per step %v", res.FLOPsStep)
	}
	if !t.Failed() {
		s.trained = run
	}
}

func (s *suite) testCheckpointFormat(t *testing.T) {
	tensors, _, err := model.ReadSafetensorsFile(s.ckpt)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]model.Tensor{}
	for _, tt := range tensors {
		byName[tt.Name] = tt
	}
	for _, p := range s.cfg.Params() {
		tt, ok := byName[p.Name]
		if !ok {
			t.Errorf("checkpoint lacks canonical parameter %s", p.Name)
			continue
		}
		if tt.DType != "F32" || !slices.Equal(tt.Shape, p.Shape) {
			t.Errorf("parameter %s is %s%v, want F32%v", p.Name, tt.DType, tt.Shape, p.Shape)
		}
	}
}

// logits loads ckpt into b and returns the prefill logits of prompts'
// full sequences.
func (s *suite) logits(t *testing.T, b compute.Backend, ckpt string) [][]float32 {
	t.Helper()
	ctx := s.h.ctx(t)
	sess, err := b.Load(ctx, compute.LoadRequest{ModelConfig: s.h.ModelConfig, Checkpoint: ckpt})
	if err != nil {
		t.Fatalf("Load %s: %v", ckpt, err)
	}
	defer b.Unload(ctx, sess.Session)
	var batch []compute.Sequence
	for _, p := range Prompts(s.cfg) {
		batch = append(batch, p.Sequence(len(p.Next)))
	}
	r, err := b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: batch})
	if err != nil {
		t.Fatalf("Prefill: %v", err)
	}
	if err := b.ReleaseCache(ctx, sess.Session, r.CacheID); err != nil {
		t.Errorf("ReleaseCache: %v", err)
	}
	checkShape(t, r.Logits, len(batch), s.cfg.VocabSize)
	return r.Logits
}

func checkShape(t *testing.T, m [][]float32, rows, cols int) {
	t.Helper()
	if len(m) != rows {
		t.Fatalf("logits for %d sequences, want %d", len(m), rows)
	}
	for i, r := range m {
		if len(r) != cols {
			t.Fatalf("logits row %d has %d values, want %d", i, len(r), cols)
		}
		for _, x := range r {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("logits row %d holds %v", i, x)
			}
		}
	}
}

// CompareLogits returns an error naming the first value where got and want
// differ by more than absTol + relTol*|want|.
func CompareLogits(got, want [][]float32, absTol, relTol float64) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d rows, want %d", len(got), len(want))
	}
	for i := range want {
		if len(got[i]) != len(want[i]) {
			return fmt.Errorf("row %d: %d values, want %d", i, len(got[i]), len(want[i]))
		}
		for j := range want[i] {
			d := math.Abs(float64(got[i][j] - want[i][j]))
			if math.IsNaN(d) || d > absTol+relTol*math.Abs(float64(want[i][j])) {
				return fmt.Errorf("logit [%d][%d] = %v, want %v (|diff| %.3g > %.3g + %.3g*|want|)", i, j, got[i][j], want[i][j], d, absTol, relTol)
			}
		}
	}
	return nil
}

func (s *suite) testResume(t *testing.T) {
	mid := s.trained.mid
	if mid == nil {
		t.Fatal("no mid-stage checkpoint to resume from")
	}
	req := s.base
	req.CheckpointDir = filepath.Join(s.dir, "resume")
	req.ResumeCheckpoint = mid.Path
	var steps []int
	res, err := s.b.Train(s.h.ctx(t), req, func(p compute.TrainProgress) error {
		steps = append(steps, p.Step)
		return nil
	})
	if err != nil {
		t.Fatalf("Train (resume from step %d): %v", mid.Step, err)
	}
	if len(steps) == 0 || steps[0] != mid.Step+1 {
		t.Errorf("resumed progress steps %v: want them to continue from %d", steps, mid.Step+1)
	}
	if res.Steps != s.h.TrainSteps || res.Final.Step != s.h.TrainSteps {
		t.Errorf("resumed result: steps %d, final checkpoint step %d; want %d", res.Steps, res.Final.Step, s.h.TrainSteps)
	}
	checkCheckpoint(t, res.Final)
	want := s.logits(t, s.b, s.trained.result.Final.Path)
	got := s.logits(t, s.b, res.Final.Path)
	if err := CompareLogits(got, want, s.h.Tolerance, 0); err != nil {
		t.Errorf("resumed run differs from the uninterrupted one (weights, optimizer state or data order not restored): %v", err)
	}
}

func (s *suite) testInitFreeze(t *testing.T) {
	req := s.base
	req.Stage = "stage2"
	req.CheckpointDir = filepath.Join(s.dir, "stage2")
	req.InitCheckpoint = s.trained.result.Final.Path
	req.Trainable = []string{"lm_head.", "embed."}
	req.Frozen = []string{"embed."}
	req.Steps = 3
	req.CheckpointEvery = 3
	var steps []int
	res, err := s.b.Train(s.h.ctx(t), req, func(p compute.TrainProgress) error {
		steps = append(steps, p.Step)
		return nil
	})
	if err != nil {
		t.Fatalf("Train (init from checkpoint, only lm_head trainable): %v", err)
	}
	if len(steps) == 0 || steps[0] != 1 || res.Steps != 3 {
		t.Errorf("a stage started from another stage's checkpoint counts from step 1: steps %v, result %d", steps, res.Steps)
	}
	before, _, err := model.ReadSafetensorsFile(req.InitCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	after, _, err := model.ReadSafetensorsFile(res.Final.Path)
	if err != nil {
		t.Fatal(err)
	}
	afterBy := map[string][]byte{}
	for _, tt := range after {
		afterBy[tt.Name] = tt.Data
	}
	canonical := map[string]bool{}
	for _, p := range s.cfg.Params() {
		canonical[p.Name] = true
	}
	changed := false
	for _, tt := range before {
		if !canonical[tt.Name] {
			continue // optimizer state
		}
		same := bytes.Equal(tt.Data, afterBy[tt.Name])
		if strings.HasPrefix(tt.Name, "lm_head.") {
			changed = changed || !same
		} else if !same {
			t.Errorf("frozen parameter %s changed (checkpoint round trip not exact, or freezing ignored)", tt.Name)
		}
	}
	if !changed {
		t.Errorf("trainable lm_head.w did not change in 3 steps")
	}
}

func (s *suite) testCancel(t *testing.T) {
	req := s.base
	req.CheckpointDir = filepath.Join(s.dir, "cancel")
	req.Steps = 100000
	req.CheckpointEvery = 100000
	ctx, cancel := context.WithCancel(s.h.ctx(t))
	defer cancel()
	var cancelledAt time.Time
	_, err := s.b.Train(ctx, req, func(p compute.TrainProgress) error {
		if cancelledAt.IsZero() && p.Step >= 2 {
			cancelledAt = time.Now()
			cancel()
		}
		return nil
	})
	if err == nil {
		t.Fatal("Train returned no error after its context was cancelled")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Train after cancel: %v; want an error wrapping context.Canceled", err)
	}
	if cancelledAt.IsZero() {
		t.Fatalf("Train failed before step 2: %v", err)
	}
	if d := time.Since(cancelledAt); d > 30*time.Second {
		t.Errorf("Train took %v to stop after cancel", d)
	}
	// The backend must still serve after a cancelled stage.
	if _, err := s.b.Describe(s.h.ctx(t)); err != nil {
		t.Errorf("Describe after a cancelled Train: %v", err)
	}
}

var errStop = errors.New("computetest: stop")

func (s *suite) testProgressError(t *testing.T) {
	req := s.base
	req.CheckpointDir = filepath.Join(s.dir, "progress-error")
	req.Steps = 100000
	req.CheckpointEvery = 100000
	calls := 0
	_, err := s.b.Train(s.h.ctx(t), req, func(p compute.TrainProgress) error {
		calls++
		if calls == 2 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) {
		t.Errorf("Train whose progress failed: %v; want an error wrapping the progress error", err)
	}
}

func (s *suite) testTrainInvalid(t *testing.T) {
	ctx := s.h.ctx(t)
	cases := map[string]func(*compute.TrainRequest){
		"zero steps":   func(r *compute.TrainRequest) { r.Steps = 0 },
		"bad config":   func(r *compute.TrainRequest) { r.ModelConfig = []byte(`{"version":"tinygrounder/v0"}`) },
		"no shards":    func(r *compute.TrainRequest) { r.Shards = nil },
		"missing init": func(r *compute.TrainRequest) { r.InitCheckpoint = filepath.Join(s.dir, "missing.safetensors") },
		// An objective a backend does not know is refused, not trained as
		// something else.
		"unknown objective": func(r *compute.TrainRequest) { r.Objective = "no-such-objective" },
	}
	for name, mutate := range cases {
		req := s.base
		req.CheckpointDir = filepath.Join(s.dir, "invalid")
		mutate(&req)
		_, err := s.b.Train(ctx, req, nil)
		want := compute.ErrInvalidArgument
		if name == "missing init" {
			want = compute.ErrNotFound
		}
		if !errors.Is(err, want) {
			t.Errorf("%s: Train error %v; want one wrapping %v", name, err, want)
		}
	}
}

func (s *suite) testSameLogits(t *testing.T) {
	a := s.logits(t, s.b, s.ckpt)
	b := s.logits(t, s.b, s.ckpt)
	if err := CompareLogits(b, a, s.h.Tolerance, 0); err != nil {
		t.Errorf("two loads in one backend: %v", err)
	}
	other := s.h.backend(t)
	c := s.logits(t, other, s.ckpt)
	if err := CompareLogits(c, a, s.h.Tolerance, 0); err != nil {
		t.Errorf("two backend instances: %v", err)
	}
}

func (s *suite) testPrefillDecode(t *testing.T) {
	ctx := s.h.ctx(t)
	sess, err := s.b.Load(ctx, compute.LoadRequest{ModelConfig: s.h.ModelConfig, Checkpoint: s.ckpt})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	defer s.b.Unload(ctx, sess.Session)
	prompts := Prompts(s.cfg)
	full := func(n int) [][]float32 {
		var batch []compute.Sequence
		for _, p := range prompts {
			batch = append(batch, p.Sequence(n))
		}
		r, err := s.b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: batch})
		if err != nil {
			t.Fatalf("Prefill of %d extra tokens: %v", n, err)
		}
		if err := s.b.ReleaseCache(ctx, sess.Session, r.CacheID); err != nil {
			t.Errorf("ReleaseCache: %v", err)
		}
		return r.Logits
	}
	var batch []compute.Sequence
	for _, p := range prompts {
		batch = append(batch, p.Sequence(0))
	}
	r, err := s.b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: batch})
	if err != nil {
		t.Fatalf("Prefill: %v", err)
	}
	checkShape(t, r.Logits, len(prompts), s.cfg.VocabSize)
	if err := CompareLogits(r.Logits, full(0), s.h.Tolerance, 0); err != nil {
		t.Errorf("two prefills of the same batch: %v", err)
	}
	for k := range len(prompts[0].Next) {
		toks := make([]int32, len(prompts))
		for i, p := range prompts {
			toks[i] = p.Next[k]
		}
		d, err := s.b.Decode(ctx, compute.DecodeRequest{Session: sess.Session, CacheID: r.CacheID, Tokens: toks})
		if err != nil {
			t.Fatalf("Decode %d: %v", k, err)
		}
		checkShape(t, d.Logits, len(prompts), s.cfg.VocabSize)
		if err := CompareLogits(d.Logits, full(k+1), s.h.DecodeTolerance, s.h.DecodeTolerance); err != nil {
			t.Errorf("Prefill + %d Decode steps differs from a Prefill of the longer sequences (KV cache): %v", k+1, err)
		}
	}
	if err := s.b.ReleaseCache(ctx, sess.Session, r.CacheID); err != nil {
		t.Errorf("ReleaseCache: %v", err)
	}
	_, err = s.b.Decode(ctx, compute.DecodeRequest{Session: sess.Session, CacheID: r.CacheID, Tokens: make([]int32, len(prompts))})
	if !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Decode on a released cache: %v; want ErrNotFound", err)
	}
}

func (s *suite) testInferenceErrors(t *testing.T) {
	ctx := s.h.ctx(t)
	seq := Prompts(s.cfg)[0].Sequence(0)
	_, err := s.b.Prefill(ctx, compute.PrefillRequest{Session: "no-such-session", Batch: []compute.Sequence{seq}})
	if !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Prefill on an unknown session: %v; want ErrNotFound", err)
	}
	_, err = s.b.Load(ctx, compute.LoadRequest{ModelConfig: s.h.ModelConfig, Checkpoint: filepath.Join(s.dir, "missing.safetensors")})
	if !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Load of a missing checkpoint: %v; want ErrNotFound", err)
	}
	_, err = s.b.Load(ctx, compute.LoadRequest{ModelConfig: []byte(`{"version":"tinygrounder/v0"}`), Checkpoint: s.ckpt})
	if !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("Load with a bad config: %v; want ErrInvalidArgument", err)
	}
	_, err = s.b.Load(ctx, compute.LoadRequest{ModelConfig: s.h.ModelConfig, Checkpoint: s.ckpt, Dtype: "q3_no_such_dtype"})
	if !errors.Is(err, compute.ErrInvalidArgument) || !strings.Contains(fmt.Sprint(err), "float32") {
		t.Errorf("Load with an undeclared dtype: %v; want ErrInvalidArgument naming the declared dtypes", err)
	}
	sess, err := s.b.Load(ctx, compute.LoadRequest{ModelConfig: s.h.ModelConfig, Checkpoint: s.ckpt, Dtype: compute.DtypeFloat32})
	if err != nil {
		t.Fatalf("Load as float32: %v", err)
	}
	_, err = s.b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session})
	if !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("Prefill of an empty batch: %v; want ErrInvalidArgument", err)
	}
	if err := s.b.Unload(ctx, sess.Session); err != nil {
		t.Fatalf("Unload: %v", err)
	}
	_, err = s.b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: []compute.Sequence{seq}})
	if !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Prefill after Unload: %v; want ErrNotFound", err)
	}
}

func (s *suite) testReference(t *testing.T) {
	ref, err := ReadReference(s.h.ReferenceLogits)
	if err != nil {
		t.Fatal(err)
	}
	b := s.h.backend(t)
	ctx := s.h.ctx(t)
	sess, err := b.Load(ctx, compute.LoadRequest{ModelConfig: ref.ModelConfig, Checkpoint: ref.CheckpointPath})
	if err != nil {
		t.Fatalf("Load reference checkpoint: %v", err)
	}
	defer b.Unload(ctx, sess.Session)
	r, err := b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: ref.Inputs})
	if err != nil {
		t.Fatalf("Prefill reference inputs: %v", err)
	}
	if err := CompareLogits(r.Logits, ref.Logits, s.h.ReferenceTolerance, s.h.ReferenceTolerance); err != nil {
		t.Errorf("logits differ from the reference backend %s: %v", ref.Backend, err)
	}
}

// Reference is what WriteReference records: a checkpoint of the reference
// backend, inputs, and the logits the reference backend computed for them.
type Reference struct {
	Backend     string             `json:"backend"`
	Version     string             `json:"version"`
	ModelConfig json.RawMessage    `json:"model_config"`
	Checkpoint  string             `json:"checkpoint"` // file name, beside the reference file
	SHA256      string             `json:"sha256"`     // of the checkpoint
	Inputs      []compute.Sequence `json:"inputs"`
	Logits      [][]float32        `json:"logits"`

	// CheckpointPath is Checkpoint resolved against the reference file's
	// directory (set by ReadReference).
	CheckpointPath string `json:"-"`
}

// WriteReference trains the reference backend b for a few steps on the
// tiny fixtures (config cfgJSON, nil for TinyConfigJSON), and writes
// reference.safetensors and reference.json into dir; it returns the path of
// reference.json, which Harness.ReferenceLogits names.
func WriteReference(ctx context.Context, b compute.Backend, dir string, cfgJSON []byte) (string, error) {
	if cfgJSON == nil {
		cfgJSON = TinyConfigJSON()
	}
	cfg, err := model.ParseConfig(cfgJSON)
	if err != nil {
		return "", fmt.Errorf("write reference: %w", err)
	}
	d, err := b.Describe(ctx)
	if err != nil {
		return "", fmt.Errorf("write reference: %w", err)
	}
	work, err := os.MkdirTemp("", "computetest-ref-*")
	if err != nil {
		return "", fmt.Errorf("write reference: %w", err)
	}
	defer os.RemoveAll(work)
	shard, err := WriteTinyShard(work, cfg, 48, 1)
	if err != nil {
		return "", fmt.Errorf("write reference: %w", err)
	}
	res, err := b.Train(ctx, compute.TrainRequest{
		RunID: "reference", Stage: "stage1", ModelConfig: cfgJSON, Shards: []string{shard},
		Steps: 10, BatchSize: 8, LearningRate: 1e-2, WarmupSteps: 2, Seed: 42, LogEvery: 10,
		CheckpointEvery: 10, CheckpointDir: work,
	}, nil)
	if err != nil {
		return "", fmt.Errorf("write reference: train: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("write reference: %w", err)
	}
	ckpt := filepath.Join(dir, "reference.safetensors")
	data, err := os.ReadFile(res.Final.Path)
	if err == nil {
		err = os.WriteFile(ckpt, data, 0o644)
	}
	if err != nil {
		return "", fmt.Errorf("write reference: copy checkpoint: %w", err)
	}
	sum, _, err := compute.FileSHA256(ckpt)
	if err != nil {
		return "", fmt.Errorf("write reference: %w", err)
	}
	ref := Reference{Backend: d.Backend, Version: d.Version, ModelConfig: cfgJSON, Checkpoint: "reference.safetensors", SHA256: sum}
	for _, p := range Prompts(cfg) {
		ref.Inputs = append(ref.Inputs, p.Sequence(len(p.Next)))
	}
	sess, err := b.Load(ctx, compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: ckpt})
	if err != nil {
		return "", fmt.Errorf("write reference: %w", err)
	}
	defer b.Unload(ctx, sess.Session)
	r, err := b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: ref.Inputs})
	if err != nil {
		return "", fmt.Errorf("write reference: %w", err)
	}
	ref.Logits = r.Logits
	out, err := json.MarshalIndent(ref, "", " ")
	if err != nil {
		return "", fmt.Errorf("write reference: %w", err)
	}
	path := filepath.Join(dir, "reference.json")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return "", fmt.Errorf("write reference: %w", err)
	}
	return path, nil
}

// ReadReference reads a reference file and checks its checkpoint's sha256.
func ReadReference(path string) (*Reference, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read reference: %w", err)
	}
	var ref Reference
	if err := json.Unmarshal(b, &ref); err != nil {
		return nil, fmt.Errorf("read reference %s: %w", path, err)
	}
	ref.CheckpointPath = filepath.Join(filepath.Dir(path), ref.Checkpoint)
	sum, _, err := compute.FileSHA256(ref.CheckpointPath)
	if err != nil {
		return nil, fmt.Errorf("read reference %s: %w", path, err)
	}
	if sum != ref.SHA256 {
		return nil, fmt.Errorf("read reference %s: checkpoint sha256 %s, recorded %s", path, sum, ref.SHA256)
	}
	return &ref, nil
}

// testGenerate holds a backend that declares compute.FeatureGenerate to
// the host's loop: its Generate gives the answers (tokens, finish reasons,
// attention) that model.DecodeLoop gives over its Prefill and Decode.
func (s *suite) testGenerate(t *testing.T) {
	if !slices.Contains(s.desc.Features, compute.FeatureGenerate) {
		t.Skip("the backend does not declare " + compute.FeatureGenerate + ": hosts run the decode loop over Prefill and Decode")
	}
	ctx := s.h.ctx(t)
	sess, err := s.b.Load(ctx, compute.LoadRequest{ModelConfig: s.h.ModelConfig, Checkpoint: s.ckpt})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	defer s.b.Unload(ctx, sess.Session)
	var batch []compute.Sequence
	for _, p := range Prompts(s.cfg) {
		batch = append(batch, p.Sequence(0))
	}
	for _, g := range []compute.Grammar{{Kind: compute.GrammarNone}, {Kind: compute.GrammarYesNo}} {
		req := compute.GenerateRequest{Session: sess.Session, Batch: batch, Grammar: g, MaxNew: 4, WantAttention: s.desc.CanAttention}
		got, err := s.b.Generate(ctx, req)
		if err != nil {
			t.Fatalf("Generate (grammar %q): %v", g.Kind, err)
		}
		want, err := model.DecodeLoop(ctx, s.b, s.cfg, req)
		if err != nil {
			t.Fatalf("host loop (grammar %q): %v", g.Kind, err)
		}
		if len(got.Answers) != len(want.Answers) {
			t.Fatalf("grammar %q: %d answers, the host loop %d", g.Kind, len(got.Answers), len(want.Answers))
		}
		for i := range want.Answers {
			ga, wa := got.Answers[i], want.Answers[i]
			if !slices.Equal(ga.Tokens, wa.Tokens) || ga.Finish != wa.Finish {
				t.Errorf("grammar %q answer %d: %v (%s), the host loop %v (%s)", g.Kind, i, ga.Tokens, ga.Finish, wa.Tokens, wa.Finish)
			}
			if err := CompareLogits(ga.Attention, wa.Attention, s.h.Tolerance, s.h.Tolerance); err != nil {
				t.Errorf("grammar %q answer %d attention: %v", g.Kind, i, err)
			}
			if ga.Head.OK != wa.Head.OK || ga.Head.OK && CompareLogits([][]float32{ga.Head.Box[:], {ga.Head.Score, ga.Head.Exists}}, [][]float32{wa.Head.Box[:], {wa.Head.Score, wa.Head.Exists}}, s.h.Tolerance, s.h.Tolerance) != nil {
				t.Errorf("grammar %q answer %d: head %+v, the host loop %+v", g.Kind, i, ga.Head, wa.Head)
			}
		}
	}
	_, err = s.b.Generate(ctx, compute.GenerateRequest{Session: sess.Session, Batch: batch, Grammar: compute.Grammar{Kind: "regex"}})
	if !errors.Is(err, compute.ErrInvalidArgument) {
		t.Errorf("Generate with an unknown grammar: %v; want ErrInvalidArgument", err)
	}
	_, err = s.b.Generate(ctx, compute.GenerateRequest{Session: "no-such-session", Batch: batch})
	if !errors.Is(err, compute.ErrNotFound) {
		t.Errorf("Generate on an unknown session: %v; want ErrNotFound", err)
	}
}
