package gomlx

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

func colourRequest(t testing.TB, dir, shard string) compute.TrainRequest {
	return compute.TrainRequest{
		RunID: "run-test", Stage: "stage1", ModelConfig: configJSON(t, tinyConfig()),
		Shards: []string{shard}, Steps: 60, BatchSize: 16, LearningRate: 1e-2, WarmupSteps: 5,
		WeightDecay: 0.01, Seed: 42, LogEvery: 5, CheckpointEvery: 30, CheckpointDir: dir,
	}
}

func TestTrainLearnsImageColour(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := tinyConfig()
	shard := writeColourShard(t, dir, c, 256, 1)
	b := newTestBackend(t)
	req := colourRequest(t, dir, shard)
	var reports []compute.TrainProgress
	res, err := b.Train(ctx, req, func(p compute.TrainProgress) error {
		reports = append(reports, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first loss %.4f last loss %.4f, %d reports, FLOPs/step %.3g", res.FirstLoss, res.LastLoss, len(reports), res.FLOPsStep)
	if res.Steps != req.Steps || res.Final.Step != req.Steps {
		t.Fatalf("result steps %d, final checkpoint step %d, want %d", res.Steps, res.Final.Step, req.Steps)
	}
	if !(res.LastLoss < 0.3*res.FirstLoss) {
		t.Fatalf("loss did not fall clearly: first %.4f last %.4f", res.FirstLoss, res.LastLoss)
	}
	if want := math.Log(float64(c.VocabSize)); math.Abs(res.FirstLoss-want) > 0.5 {
		t.Errorf("first loss %.3f, want about ln(vocab)=%.3f at init", res.FirstLoss, want)
	}
	if res.FLOPsStep <= 0 {
		t.Errorf("FLOPsStep %v", res.FLOPsStep)
	}
	// Progress: every LogEvery steps, checkpoints at 30, 60, ... and the end.
	var ckSteps []int
	for i, p := range reports {
		if p.Step != (i+1)*req.LogEvery {
			t.Fatalf("report %d at step %d, want %d", i, p.Step, (i+1)*req.LogEvery)
		}
		if p.LearningRate <= 0 || p.TokensPerSec <= 0 {
			t.Errorf("report %+v lacks lr or tokens/s", p)
		}
		if p.Checkpoint != nil {
			ckSteps = append(ckSteps, p.Checkpoint.Step)
			sha, n, err := compute.FileSHA256(p.Checkpoint.Path)
			if err != nil || sha != p.Checkpoint.SHA256 || n != p.Checkpoint.Bytes {
				t.Errorf("checkpoint %s: sha %s/%d, reported %s/%d (%v)", p.Checkpoint.Path, sha, n, p.Checkpoint.SHA256, p.Checkpoint.Bytes, err)
			}
		}
	}
	if want := []int{30, 60}; !slices.Equal(ckSteps, want) {
		t.Errorf("checkpoints at %v, want %v", ckSteps, want)
	}
	if !strings.HasSuffix(res.Final.Path, "stage1-step000060.safetensors") {
		t.Errorf("final checkpoint path %s", res.Final.Path)
	}

	// The trained model answers held-out images through Prefill.
	sess, err := b.Load(ctx, compute.LoadRequest{ModelConfig: req.ModelConfig, Checkpoint: res.Final.Path})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(99, 7))
	var batch []compute.Sequence
	var want []int
	for range 40 {
		img, q := colourSample(c, rng)
		batch = append(batch, compute.Sequence{Tokens: promptTokens(c), Images: []compute.Image{{Size: c.ImageSize, Pixels: normalize(img)}}})
		want = append(want, tokAnswer0+q)
	}
	out, err := b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: batch, WantAttention: true})
	if err != nil {
		t.Fatal(err)
	}
	correct := 0
	for i, l := range out.Logits {
		if argmax(l) == want[i] {
			correct++
		}
		if len(out.Attention[i]) != c.Patches() {
			t.Fatalf("attention of sequence %d has %d values, want %d", i, len(out.Attention[i]), c.Patches())
		}
	}
	t.Logf("held-out colour accuracy %d/%d", correct, len(batch))
	if correct < 38 {
		t.Fatalf("held-out accuracy %d/%d, want >= 38 (chance is 10)", correct, len(batch))
	}
}

func TestFrozenParametersDoNotChange(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := tinyConfig()
	shard := writeColourShard(t, dir, c, 64, 2)
	b := newTestBackend(t)
	req := colourRequest(t, dir, shard)
	req.Steps, req.CheckpointEvery = 8, 0
	req.Trainable = []string{"projector.", "embed."}
	req.Frozen = []string{"embed.pos"}
	res, err := b.Train(ctx, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	specs := paramSpecs(c)
	init := initParams(specs, req.Seed)
	got := readWeights(t, res.Final.Path, c)
	f, err := readSafetensors(res.Final.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range specs {
		trains := (strings.HasPrefix(p.Name, "projector.") || strings.HasPrefix(p.Name, "embed.")) && p.Name != "embed.pos"
		same := slices.Equal(init[p.Name], got.weights[p.Name])
		_, hasM := f.Tensors[optimMPrefix+p.Name]
		switch {
		case trains && same:
			t.Errorf("%s should have trained but is unchanged", p.Name)
		case !trains && !same:
			t.Errorf("%s is frozen but changed", p.Name)
		case trains != hasM:
			t.Errorf("%s: optimizer state present %v, trainable %v", p.Name, hasM, trains)
		}
	}
}

func TestCheckpointRoundTripIsBitExact(t *testing.T) {
	dir := t.TempDir()
	c := tinyConfig()
	specs := paramSpecs(c)
	sel := selectTrainable(specs, []string{"lm."}, nil)
	st := &modelState{weights: initParams(specs, 5), m: map[string][]float32{}, v: map[string][]float32{}, step: 17,
		meta: map[string]string{"stage": "stage2", "run_id": "r1", "config_sha256": "abc"}}
	rng := rand.New(rand.NewPCG(1, 2))
	for i, p := range specs {
		if !sel[i] {
			continue
		}
		m, v := make([]float32, p.Size()), make([]float32, p.Size())
		for j := range m {
			m[j], v[j] = float32(rng.NormFloat64()), float32(rng.Float64()*1e-3)
		}
		m[0] = float32(math.Copysign(0, -1)) // negative zero must survive
		st.m[p.Name], st.v[p.Name] = m, v
	}
	f, err := checkpointFile(specs, st)
	if err != nil {
		t.Fatal(err)
	}
	path := dir + "/ck.safetensors"
	sha, n, err := writeSafetensorsAtomic(path, f)
	if err != nil {
		t.Fatal(err)
	}
	if sha2, n2, _ := compute.FileSHA256(path); sha2 != sha || n2 != n {
		t.Fatalf("reported sha/bytes %s/%d, file %s/%d", sha, n, sha2, n2)
	}
	back, err := readCheckpoint(path, specs, sel, true)
	if err != nil {
		t.Fatal(err)
	}
	if back.step != 17 || back.meta["stage"] != "stage2" || back.meta["run_id"] != "r1" || back.meta["format"] != checkpointFormat {
		t.Fatalf("metadata/step lost: step %d meta %v", back.step, back.meta)
	}
	for i, p := range specs {
		if !bitsEqual(st.weights[p.Name], back.weights[p.Name]) {
			t.Fatalf("weights %s differ after round trip", p.Name)
		}
		if sel[i] && (!bitsEqual(st.m[p.Name], back.m[p.Name]) || !bitsEqual(st.v[p.Name], back.v[p.Name])) {
			t.Fatalf("optimizer state %s differs after round trip", p.Name)
		}
	}
	// Writing the loaded state again gives the same bytes.
	f2, err := checkpointFile(specs, back)
	if err != nil {
		t.Fatal(err)
	}
	if sha3, _, err := writeSafetensorsAtomic(dir+"/ck2.safetensors", f2); err != nil || sha3 != sha {
		t.Fatalf("rewritten checkpoint sha %s, want %s (%v)", sha3, sha, err)
	}
	// A resume checkpoint must carry the optimizer state of every trainable parameter.
	if _, err := readCheckpoint(path, specs, selectTrainable(specs, nil, nil), true); err == nil {
		t.Fatal("resume with more trainable parameters than the checkpoint has moments: want error")
	}
}

func bitsEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

func TestResumeEqualsUninterruptedRun(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := tinyConfig()
	shard := writeColourShard(t, dir, c, 40, 3) // 40 samples: epochs wrap mid-run
	b := newTestBackend(t)

	full := colourRequest(t, dir+"/full", shard)
	full.Steps, full.CheckpointEvery, full.BatchSize = 12, 5, 8
	var mid string
	resFull, err := b.Train(ctx, full, func(p compute.TrainProgress) error {
		if p.Checkpoint != nil && p.Checkpoint.Step == 5 {
			mid = p.Checkpoint.Path
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if mid == "" {
		t.Fatal("no checkpoint at step 5")
	}

	resumed := full
	resumed.CheckpointDir = dir + "/resumed"
	resumed.ResumeCheckpoint = mid
	var firstStep int
	resRes, err := b.Train(ctx, resumed, func(p compute.TrainProgress) error {
		if firstStep == 0 {
			firstStep = p.Step
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if resRes.Steps != 12 || firstStep != 10 {
		t.Fatalf("resumed run ended at %d, first report at %d; want 12 and 10", resRes.Steps, firstStep)
	}
	a, err := readSafetensors(resFull.Final.Path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := readSafetensors(resRes.Final.Path)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Tensors) != len(r.Tensors) {
		t.Fatalf("tensor count %d vs %d", len(a.Tensors), len(r.Tensors))
	}
	for name, ta := range a.Tensors {
		if string(ta.Data) != string(r.Tensors[name].Data) {
			t.Fatalf("tensor %s differs between the uninterrupted and the resumed run", name)
		}
	}
	// A weights-only init from the same checkpoint is a different run: fresh
	// optimizer, step count from zero.
	init := full
	init.CheckpointDir = dir + "/init"
	init.InitCheckpoint, init.Steps = mid, 3
	resInit, err := b.Train(ctx, init, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resInit.Steps != 3 {
		t.Fatalf("init run steps %d, want 3", resInit.Steps)
	}
}

func TestTrainHonoursCancellation(t *testing.T) {
	dir := t.TempDir()
	c := tinyConfig()
	shard := writeColourShard(t, dir, c, 32, 4)
	b := newTestBackend(t)
	req := colourRequest(t, dir, shard)
	req.LogEvery = 1
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res, err := b.Train(ctx, req, func(p compute.TrainProgress) error {
		if p.Step == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if res.Steps != 3 {
		t.Fatalf("stopped after %d steps, want 3", res.Steps)
	}
	stop := errors.New("stop")
	_, err = b.Train(context.Background(), req, func(compute.TrainProgress) error { return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("err %v, want the progress callback's error", err)
	}
}

func TestTrainRejectsBadRequests(t *testing.T) {
	b := newTestBackend(t)
	dir := t.TempDir()
	good := colourRequest(t, dir, writeColourShard(t, dir, tinyConfig(), 16, 5))
	cases := map[string]func(*compute.TrainRequest){
		"no steps":       func(r *compute.TrainRequest) { r.Steps = 0 },
		"no batch":       func(r *compute.TrainRequest) { r.BatchSize = 0 },
		"bad stage":      func(r *compute.TrainRequest) { r.Stage = "../x" },
		"bad config":     func(r *compute.TrainRequest) { r.ModelConfig = []byte(`{"version":"x"}`) },
		"missing shard":  func(r *compute.TrainRequest) { r.Shards = []string{dir + "/missing.safetensors"} },
		"nothing trains": func(r *compute.TrainRequest) { r.Trainable = []string{"nope."} },
	}
	for name, mut := range cases {
		r := good
		mut(&r)
		if _, err := b.Train(context.Background(), r, nil); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
}

// trainColourClearly trains the colour task with model config c, fails
// unless the loss falls to under 0.3 of its first value, and returns the
// initial and the trained weights.
func trainColourClearly(t *testing.T, c model.Config) (init map[string][]float32, got *modelState) {
	t.Helper()
	dir := t.TempDir()
	shard := writeColourShard(t, dir, c, 256, 1)
	b := newTestBackend(t)
	req := colourRequest(t, dir, shard)
	req.ModelConfig = configJSON(t, c)
	req.CheckpointEvery = 0
	res, err := b.Train(context.Background(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first loss %.4f last loss %.4f", res.FirstLoss, res.LastLoss)
	if !(res.LastLoss < 0.3*res.FirstLoss) {
		t.Fatalf("loss did not fall clearly: first %.4f last %.4f", res.FirstLoss, res.LastLoss)
	}
	return initParams(paramSpecs(c), req.Seed), readWeights(t, res.Final.Path, c)
}

// TestConvStemTrains trains the colour task through Config.ConvStem: the
// gradient must reach every convolution (the graph pads by concatenation
// and cuts strided slices, each with its own gradient) and the loss fall.
func TestConvStemTrains(t *testing.T) {
	c := tinyConfig()
	c.ConvStem = true
	init, got := trainColourClearly(t, c)
	for i := range c.StemChannels() {
		for _, s := range []string{".w", ".b"} {
			name := fmt.Sprintf("vision.stem.%d%s", i, s)
			if len(got.weights[name]) == 0 || slices.Equal(init[name], got.weights[name]) {
				t.Errorf("%s did not train", name)
			}
		}
	}
}

// TestPatchPositionsTrain trains the colour task with
// Config.PatchPositions: the patches' position embeddings come from
// embed.patch_pos, which must train, and no longer from embed.pos, whose
// rows at the patches' sequence positions (1..4 in this task, where no
// text ever sits) must then keep their initial values exactly (position
// tables take no weight decay).
func TestPatchPositionsTrain(t *testing.T) {
	c := tinyConfig()
	c.PatchPositions = true
	init, got := trainColourClearly(t, c)
	if pp := got.weights["embed.patch_pos"]; len(pp) != c.Patches()*c.Width || slices.Equal(init["embed.patch_pos"], pp) {
		t.Fatalf("embed.patch_pos did not train (%d values)", len(pp))
	}
	w := c.Width
	for p := 1; p <= c.Patches(); p++ {
		if !slices.Equal(init["embed.pos"][p*w:(p+1)*w], got.weights["embed.pos"][p*w:(p+1)*w]) {
			t.Errorf("embed.pos row %d (a patch position) changed: the patches still read it", p)
		}
	}
	if slices.Equal(init["embed.pos"][0:w], got.weights["embed.pos"][0:w]) {
		t.Errorf("embed.pos row 0 (BOS) did not train")
	}
}
