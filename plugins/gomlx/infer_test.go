package gomlx

import (
	"context"
	"maps"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// parityTolerance bounds |logit difference| between the eager execution
// with a KV cache and the GoMLX full-sequence forward, of the one definition.
const parityTolerance = 1e-4

// roughWeights are random weights far from the near-uniform init, so that
// logits differ strongly across positions and a wrong cache, mask or patch
// order shows.
func roughWeights(c model.Config, seed uint64) map[string][]float32 {
	specs := paramSpecs(c)
	w := initParams(specs, 1)
	rng := rand.New(rand.NewPCG(seed, 3))
	for _, p := range specs {
		v := w[p.Name]
		for i := range v {
			switch p.Init {
			case initOnes:
				v[i] = float32(1 + 0.3*rng.NormFloat64())
			default:
				v[i] = float32(rng.NormFloat64() * 0.5 / math.Sqrt(float64(p.Shape[0])))
				if len(p.Shape) == 1 {
					v[i] = float32(rng.NormFloat64() * 0.2)
				}
			}
		}
	}
	return w
}

func writeWeights(t testing.TB, dir string, c model.Config, w map[string][]float32) string {
	t.Helper()
	f, err := checkpointFile(paramSpecs(c), &modelState{weights: w})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "weights.safetensors")
	if _, _, err := writeSafetensorsAtomic(path, f); err != nil {
		t.Fatal(err)
	}
	return path
}

// gomlxLogits runs the GoMLX full-sequence forward over a batch padded to
// MaxSeq and returns logits [b][position][vocab].
func gomlxLogits(t testing.TB, b *Backend, c model.Config, w map[string][]float32, batch []compute.Sequence) [][][]float32 {
	t.Helper()
	specs := paramSpecs(c)
	exec, err := graph.NewExec(b.ml, forwardLogitsFn(c, specs))
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	var args []any
	for _, p := range specs {
		args = append(args, tensors.FromFlatDataAndDimensions(w[p.Name], p.Shape...))
	}
	B, L, P := len(batch), c.MaxSeq, c.Patches()
	toks := make([]int32, B*L)
	pidx := make([]int32, B*L)
	isP := make([]float32, B*L)
	imgLen := c.ImageSize * c.ImageSize * 3
	imgs := make([]float32, B*c.MaxImages*imgLen)
	for i, s := range batch {
		for j, im := range s.Images {
			copy(imgs[(i*c.MaxImages+j)*imgLen:], im.Pixels)
		}
		np := 0
		for pos := range L {
			tok := c.PadToken
			if pos < len(s.Tokens) {
				tok = s.Tokens[pos]
			}
			toks[i*L+pos] = tok
			if tok == c.PatchToken && np < len(s.Images)*P {
				pidx[i*L+pos] = int32((i*c.MaxImages+np/P)*P + np%P)
				isP[i*L+pos] = 1
				np++
			}
		}
	}
	args = append(args,
		tensors.FromFlatDataAndDimensions(toks, B, L),
		tensors.FromFlatDataAndDimensions(pidx, B, L),
		tensors.FromFlatDataAndDimensions(isP, B, L),
		tensors.FromFlatDataAndDimensions(imgs, B*c.MaxImages, c.ImageSize, c.ImageSize, 3))
	out, err := exec.Call(args...)
	if err != nil {
		t.Fatal(err)
	}
	flat := tensors.MustCopyFlatData[float32](out[0])
	V := c.VocabSize
	res := make([][][]float32, B)
	for i := range B {
		for pos := range L {
			res[i] = append(res[i], flat[(i*L+pos)*V:(i*L+pos+1)*V])
		}
	}
	return res
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

// paritySequences: a sequence with two images and text before, between
// and after them, two with one image (with and without text before it),
// one without images; text tokens random.
func paritySequences(c model.Config, rng *rand.Rand) []compute.Sequence {
	img := func() compute.Image {
		px := make([]float32, c.ImageSize*c.ImageSize*3)
		for i := range px {
			px[i] = float32(rng.NormFloat64())
		}
		return compute.Image{Size: c.ImageSize, Pixels: px}
	}
	text := func(n int) []int32 {
		var out []int32
		for range n {
			out = append(out, int32(5+rng.IntN(c.VocabSize-5)))
		}
		return out
	}
	patches := func(n int) []int32 {
		var out []int32
		for range n * c.Patches() {
			out = append(out, c.PatchToken)
		}
		return out
	}
	// seq lays out: <bos>, lead text, then per image its patches followed
	// by mid text, then tail text. Text before and between images is what
	// Config.TextFusion reads.
	seq := func(images, lead, mid, tail int) compute.Sequence {
		toks := append([]int32{tokBOS}, text(lead)...)
		s := compute.Sequence{}
		for range images {
			toks = append(toks, patches(1)...)
			toks = append(toks, text(mid)...)
			s.Images = append(s.Images, img())
		}
		s.Tokens = append(toks, text(tail)...)
		return s
	}
	return []compute.Sequence{
		seq(2, 2, 1, c.MaxSeq-1-2-2*(c.Patches()+1)),
		seq(1, 0, 0, 6),
		seq(1, 3, 0, 3),
		seq(0, 0, 0, 9),
	}
}

// firstDecodable is the first position after the last patch token: a
// prefix must include every patch token, later tokens may be decoded.
func firstDecodable(c model.Config, s compute.Sequence) int {
	k := 1
	for i, t := range s.Tokens {
		if t == c.PatchToken {
			k = i + 1
		}
	}
	return k
}

func TestPrefillDecodeMatchFullForward(t *testing.T) {
	fusion := tinyConfig()
	fusion.TextFusion = true
	grounded := fusion
	grounded.GroundLossWeight = 1 // training only: inference must skip ground.*
	attn := fusion
	attn.FusionAttention = true // rough weights give fusion.query scores of several units
	stem := attn
	stem.ConvStem = true // 16-pixel images, 8-pixel patches: three convolutions of 4, 8, 16 channels
	readout := grounded
	readout.GroundReadout = true // inference must use ground.* and readout.w, image by image
	patchPos := attn
	patchPos.PatchPositions = true // patches take embed.patch_pos by their index in the image
	for _, v := range []struct {
		name string
		c    model.Config
	}{{"plain", tinyConfig()}, {"text-fusion", fusion}, {"ground-loss", grounded}, {"fusion-attention", attn}, {"conv-stem", stem}, {"ground-readout", readout}, {"patch-positions", patchPos}} {
		t.Run(v.name, func(t *testing.T) { testPrefillDecodeMatch(t, v.c) })
	}
}

func testPrefillDecodeMatch(t *testing.T, c model.Config) {
	ctx := context.Background()
	b := newTestBackend(t)
	w := roughWeights(c, 11)
	ck := writeWeights(t, t.TempDir(), c, w)
	batch := paritySequences(c, rand.New(rand.NewPCG(4, 4)))
	ref := gomlxLogits(t, b, c, w, batch)

	sess, err := b.Load(ctx, compute.LoadRequest{ModelConfig: configJSON(t, c), Checkpoint: ck})
	if err != nil {
		t.Fatal(err)
	}
	// The logits must vary across positions, or the comparison proves little.
	if d := maxAbsDiff(ref[0][len(batch[0].Tokens)-1], ref[0][len(batch[0].Tokens)-2]); d < 0.1 {
		t.Fatalf("reference logits barely vary across positions (%.3g): weights too tame for a parity test", d)
	}

	// Prefill alone at every prefix length.
	worst := 0.0
	for i, s := range batch {
		for k := firstDecodable(c, s); k <= len(s.Tokens); k++ {
			out, err := b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: []compute.Sequence{{Tokens: s.Tokens[:k], Images: s.Images}}})
			if err != nil {
				t.Fatal(err)
			}
			worst = math.Max(worst, maxAbsDiff(out.Logits[0], ref[i][k-1]))
			if err := b.ReleaseCache(ctx, sess.Session, out.CacheID); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("prefill vs GoMLX forward: max |diff| %.3g", worst)
	if worst > parityTolerance {
		t.Fatalf("prefill logits differ from the GoMLX forward by %.3g > %g", worst, parityTolerance)
	}

	// One batched prefill of the shortest prefixes, then lockstep decoding.
	var pre []compute.Sequence
	steps := math.MaxInt
	for _, s := range batch {
		k := firstDecodable(c, s)
		pre = append(pre, compute.Sequence{Tokens: s.Tokens[:k], Images: s.Images})
		steps = min(steps, len(s.Tokens)-k)
	}
	out, err := b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: pre, WantAttention: true})
	if err != nil {
		t.Fatal(err)
	}
	checkAttention(t, c, out.Attention, batch)
	worst = 0
	for i := range batch {
		worst = math.Max(worst, maxAbsDiff(out.Logits[i], ref[i][len(pre[i].Tokens)-1]))
	}
	for d := range steps {
		toks := make([]int32, len(batch))
		for i, s := range batch {
			toks[i] = s.Tokens[len(pre[i].Tokens)+d]
		}
		dec, err := b.Decode(ctx, compute.DecodeRequest{Session: sess.Session, CacheID: out.CacheID, Tokens: toks, WantAttention: true})
		if err != nil {
			t.Fatal(err)
		}
		checkAttention(t, c, dec.Attention, batch)
		for i := range batch {
			worst = math.Max(worst, maxAbsDiff(dec.Logits[i], ref[i][len(pre[i].Tokens)+d]))
		}
	}
	t.Logf("batched prefill + %d decode steps vs GoMLX forward: max |diff| %.3g", steps, worst)
	if worst > parityTolerance {
		t.Fatalf("decode logits differ from the GoMLX forward by %.3g > %g", worst, parityTolerance)
	}

	// Cache and session lifecycle errors.
	if err := b.ReleaseCache(ctx, sess.Session, out.CacheID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Decode(ctx, compute.DecodeRequest{Session: sess.Session, CacheID: out.CacheID, Tokens: make([]int32, len(batch))}); err == nil {
		t.Fatal("decode on a released cache: want error")
	}
	if err := b.Unload(ctx, sess.Session); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: pre}); err == nil {
		t.Fatal("prefill on an unloaded session: want error")
	}
}

// checkAttention: image sequences get a distribution share over the first
// image's patches; imageless ones get zeros.
func checkAttention(t *testing.T, c model.Config, attn [][]float32, batch []compute.Sequence) {
	t.Helper()
	for i, a := range attn {
		if len(a) != c.Patches() {
			t.Fatalf("attention %d has %d values, want %d", i, len(a), c.Patches())
		}
		sum := 0.0
		for _, v := range a {
			if v < 0 {
				t.Fatalf("negative attention %v", v)
			}
			sum += float64(v)
		}
		if len(batch[i].Images) == 0 && sum != 0 {
			t.Fatalf("sequence %d has no image but attention sums to %v", i, sum)
		}
		if len(batch[i].Images) > 0 && (sum <= 0 || sum > 1+1e-5) {
			t.Fatalf("sequence %d attention over patches sums to %v", i, sum)
		}
	}
}

func TestPrefillRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	c := tinyConfig()
	b := newTestBackend(t)
	ck := writeWeights(t, t.TempDir(), c, roughWeights(c, 1))
	sess, err := b.Load(ctx, compute.LoadRequest{ModelConfig: configJSON(t, c), Checkpoint: ck})
	if err != nil {
		t.Fatal(err)
	}
	long := make([]int32, c.MaxSeq+1)
	cases := map[string]compute.Sequence{
		"empty":          {},
		"too long":       {Tokens: long},
		"token outside":  {Tokens: []int32{int32(c.VocabSize)}},
		"patch no image": {Tokens: []int32{1, c.PatchToken}},
		"image size":     {Tokens: []int32{1}, Images: []compute.Image{{Size: 3, Pixels: make([]float32, 27)}}},
	}
	for name, s := range cases {
		if _, err := b.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: []compute.Sequence{s}}); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
	if _, err := b.Load(ctx, compute.LoadRequest{ModelConfig: configJSON(t, c), Checkpoint: ck, Device: "cuda:0"}); err == nil || !strings.Contains(err.Error(), "cuda:0") {
		t.Errorf("load on cuda: err %v", err)
	}
	other := c
	other.Width = 64
	if _, err := b.Load(ctx, compute.LoadRequest{ModelConfig: configJSON(t, other), Checkpoint: ck}); err == nil {
		t.Error("load with a config of another width: want error")
	}
}

// TestTextFusion: with the fusion layer at zero, a TextFusion model is the
// plain model (the projector moved after the gather changes nothing); with
// it trained, the patch positions depend on the text before the image
// through it, not only through attention.
func TestTextFusion(t *testing.T) {
	plain := tinyConfig()
	fused := plain
	fused.TextFusion = true
	w := roughWeights(fused, 5)
	b := newTestBackend(t)
	rng := rand.New(rand.NewPCG(8, 8))
	seqs := paritySequences(fused, rng)[2:3] // <bos>, 3 text tokens, one image, text
	lead := seqs[0]
	other := compute.Sequence{Tokens: append([]int32(nil), lead.Tokens...), Images: lead.Images}
	other.Tokens[2] = 5 + (lead.Tokens[2]-5+1)%int32(fused.VocabSize-5) // another text token
	batch := []compute.Sequence{lead, other}
	firstPatch := 4 // after <bos> and the 3 lead tokens

	zero := maps.Clone(w)
	for _, name := range []string{"fusion.w", "fusion.b"} {
		zero[name] = make([]float32, len(w[name]))
	}
	ref := gomlxLogits(t, b, plain, w, batch) // the plain model ignores fusion.*
	got := gomlxLogits(t, b, fused, zero, batch)
	for i := range batch {
		for p := range ref[i] {
			if d := maxAbsDiff(ref[i][p], got[i][p]); d > parityTolerance {
				t.Fatalf("zero fusion: sequence %d position %d differs from the plain model by %.3g", i, p, d)
			}
		}
	}

	on := gomlxLogits(t, b, fused, w, batch)
	delta := func(i int) []float32 {
		d := make([]float32, len(on[i][firstPatch]))
		for j := range d {
			d[j] = on[i][firstPatch][j] - ref[i][firstPatch][j]
		}
		return d
	}
	if d := maxAbsDiff(on[0][firstPatch], ref[0][firstPatch]); d < 1e-3 {
		t.Fatalf("fusion changes the first patch position's logits by only %.3g", d)
	}
	if d := maxAbsDiff(delta(0), delta(1)); d < 1e-3 {
		t.Fatalf("fusion's effect does not depend on the text before the image (%.3g)", d)
	}
}

// TestFusionAttention: with fusion.query at zero every text position weighs
// the same, and the model is the mean-pooling TextFusion model; with a
// query, the first patch position's logits move (the pooled text changed).
func TestFusionAttention(t *testing.T) {
	mean := tinyConfig()
	mean.TextFusion = true
	attn := mean
	attn.FusionAttention = true
	w := roughWeights(attn, 5)
	b := newTestBackend(t)
	batch := paritySequences(attn, rand.New(rand.NewPCG(8, 8)))[2:3] // <bos>, 3 text tokens, one image, text
	firstPatch := 4

	zero := maps.Clone(w)
	zero["fusion.query"] = make([]float32, len(w["fusion.query"]))
	ref := gomlxLogits(t, b, mean, w, batch) // mean pooling ignores fusion.query
	got := gomlxLogits(t, b, attn, zero, batch)
	for p := range ref[0] {
		if d := maxAbsDiff(ref[0][p], got[0][p]); d > parityTolerance {
			t.Fatalf("zero query: position %d differs from mean pooling by %.3g", p, d)
		}
	}
	on := gomlxLogits(t, b, attn, w, batch)
	if d := maxAbsDiff(on[0][firstPatch], ref[0][firstPatch]); d < 1e-3 {
		t.Fatalf("the query changes the first patch position's logits by only %.3g", d)
	}
}

// TestGroundReadout: Config.GroundReadout changes nothing up to the first
// image's last patch and changes what follows. (What it computes is held
// to the reference by the conformance matrix's ground_readout cell.)
func TestGroundReadout(t *testing.T) {
	c := tinyConfig()
	c.GroundLossWeight, c.GroundReadout = 1, true
	w := roughWeights(c, 5)
	off := maps.Clone(w)
	off["readout.w"] = make([]float32, len(w["readout.w"]))
	rng := rand.New(rand.NewPCG(8, 1))
	img := func() compute.Image {
		px := make([]float32, c.ImageSize*c.ImageSize*3)
		for i := range px {
			px[i] = float32(rng.NormFloat64())
		}
		return compute.Image{Size: c.ImageSize, Pixels: px}
	}
	p := c.PatchToken
	seq := compute.Sequence{Tokens: []int32{tokBOS, 7, 8, p, p, p, p, 9, 10, p, p, p, p, 11, 12, 13}, Images: []compute.Image{img(), img()}}
	b := newTestBackend(t)
	on, without := gomlxLogits(t, b, c, w, []compute.Sequence{seq})[0], gomlxLogits(t, b, c, off, []compute.Sequence{seq})[0]
	for i := range 7 {
		if d := maxAbsDiff(on[i], without[i]); d != 0 {
			t.Fatalf("position %d (up to the first image's last patch) changed by %.3g", i, d)
		}
	}
	for i := 7; i < len(seq.Tokens); i++ {
		if d := maxAbsDiff(on[i], without[i]); d < 1e-3 {
			t.Fatalf("position %d (after an image) changed by only %.3g", i, d)
		}
	}
}
