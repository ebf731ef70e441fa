package gomlx

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	gmdataset "github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// The localization probe: a noisy grey image with coloured squares, a
// question token naming a colour, and the answer as the square's box in
// four coarse box-number tokens. With one square it checks that the spatial
// path (patches, positions, box tokens) learns at all; with a red and a
// green square it measures how fast the model learns to bind a word to what
// it sees, which is what referring expressions need.

const (
	probeBox0     = 15  // coarse "0.00" .. "1.00" are 15 .. 115, as in internal/model
	probeQuestion = 120 // +0 red, +1 green
	probeAnswer   = 122 // "answer now" when the question precedes the image
	probeFiller0  = 123 // 123 .. 129: filler words
	probeFillers  = 7
)

type probeOpts struct {
	Squares   int // 1 or 2
	Steps     int
	LR        float64
	Heads     int
	VisDepth  int
	TextFirst bool // question before the image
	Fusion    bool // Config.TextFusion
	// Filler is the number of random filler tokens (a template's words)
	// before the question when TextFirst: what a real instruction wraps
	// its two or three telling words in.
	Filler int
}

type probeResult struct {
	FirstLoss, LastLoss float64
	MeanErr             float64 // mean |coarse value error| per coordinate, teacher forced
	MeanErrBaseline     float64 // the same for always answering the training mean box
	Acc05               float64 // IoU >= 0.5, teacher forced
}

func (o probeOpts) config() model.Config {
	c := model.DefaultConfig(130)
	c.Width, c.Depth, c.Heads, c.VisionDepth = 64, 2, o.Heads, o.VisDepth
	c.MaxSeq, c.MaxImages = 48+o.Filler, 1
	c.TextFusion = o.Fusion
	return c
}

func probeSample(c model.Config, squares int, rng *rand.Rand) (img []byte, q int, box [4]int) {
	s := c.ImageSize
	img = make([]byte, s*s*3)
	for i := range img {
		img[i] = byte(100 + rng.IntN(40))
	}
	cols := [2][3]byte{{220, 30, 30}, {30, 200, 30}}
	var boxes [2][4]int
	for k := range squares {
		side := 5 + rng.IntN(10)
		x, y := rng.IntN(s-side), rng.IntN(s-side)
		boxes[k] = [4]int{x, y, x + side, y + side}
		for yy := y; yy < y+side; yy++ {
			for xx := x; xx < x+side; xx++ {
				copy(img[(yy*s+xx)*3:], cols[k][:])
			}
		}
	}
	q = rng.IntN(squares)
	for i := range 4 {
		box[i] = int(math.Round(float64(boxes[q][i]) / float64(s) * 100))
	}
	return img, q, box
}

// probeSeq returns the tokens and the position whose logits predict the
// first box number.
func probeSeq(c model.Config, o probeOpts, q int, box [4]int, rng *rand.Rand) ([]int32, int) {
	toks := []int32{tokBOS}
	if o.TextFirst {
		for range o.Filler {
			toks = append(toks, int32(probeFiller0+rng.IntN(probeFillers)))
		}
		toks = append(toks, int32(probeQuestion+q))
	}
	for range c.Patches() {
		toks = append(toks, c.PatchToken)
	}
	if o.TextFirst {
		toks = append(toks, probeAnswer)
	} else {
		toks = append(toks, int32(probeQuestion+q))
	}
	at := len(toks) - 1
	for _, v := range box {
		toks = append(toks, int32(probeBox0+v))
	}
	return append(toks, tokEOS), at
}

// probeBox is a box of coarse values as a dataset.Box, for its IoU.
func probeBox(b [4]int) gmdataset.Box {
	return gmdataset.Box{X1: float64(b[0]), Y1: float64(b[1]), X2: float64(b[2]), Y2: float64(b[3])}
}

func runProbe(t testing.TB, o probeOpts) probeResult {
	t.Helper()
	c := o.config()
	dir := t.TempDir()
	const n = 4096
	rng := rand.New(rand.NewPCG(1, 2))
	L := c.MaxSeq
	tokens := make([]int32, n*L)
	targets := make([]int32, n*L)
	index := make([]int32, n)
	var images []byte
	var mean [4]float64
	for i := range n {
		img, q, box := probeSample(c, o.Squares, rng)
		images = append(images, img...)
		index[i] = int32(i)
		seq, at := probeSeq(c, o, q, box, rng)
		for p := range L {
			targets[i*L+p] = -1
			tokens[i*L+p] = c.PadToken
			if p < len(seq) {
				tokens[i*L+p] = seq[p]
			}
		}
		for p := at; p < len(seq)-1; p++ {
			targets[i*L+p] = seq[p+1]
		}
		for k := range 4 {
			mean[k] += float64(box[k]) / n
		}
	}
	shard := filepath.Join(dir, "probe.safetensors")
	f := &stFile{Metadata: map[string]string{"config_sha256": "probe", "synth_set": "probe"}, Tensors: map[string]stTensor{
		"tokens": i32Tensor(tokens, n, L), "targets": i32Tensor(targets, n, L), "image_index": i32Tensor(index, n, 1),
		"images": {DType: "U8", Shape: []int{n, c.ImageSize, c.ImageSize, 3}, Data: images}}}
	if _, _, err := writeSafetensorsAtomic(shard, f); err != nil {
		t.Fatal(err)
	}
	b := newTestBackend(t)
	res, err := b.Train(context.Background(), compute.TrainRequest{
		RunID: "probe", Stage: "stage2", ModelConfig: configJSON(t, c), Shards: []string{shard},
		Steps: o.Steps, BatchSize: 16, LearningRate: o.LR, WarmupSteps: 20, WeightDecay: 0.01, Seed: 1,
		LogEvery: 50, CheckpointEvery: o.Steps, CheckpointDir: dir,
	}, func(compute.TrainProgress) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	w := readWeights(t, res.Final.Path, c).weights
	trng := rand.New(rand.NewPCG(77, 2))
	var batch []compute.Sequence
	var boxes [][4]int
	var ats []int
	for range 64 {
		img, q, box := probeSample(c, o.Squares, trng)
		seq, at := probeSeq(c, o, q, box, trng)
		batch = append(batch, compute.Sequence{Tokens: seq, Images: []compute.Image{{Size: c.ImageSize, Pixels: normalize(img)}}})
		boxes, ats = append(boxes, box), append(ats, at)
	}
	logits := gomlxLogits(t, b, c, w, batch)
	r := probeResult{FirstLoss: res.FirstLoss, LastLoss: res.LastLoss}
	for i, bx := range boxes {
		var pred [4]int
		for k := range 4 {
			l := logits[i][ats[i]+k]
			best := probeBox0
			for j := probeBox0; j <= probeBox0+100; j++ {
				if l[j] > l[best] {
					best = j
				}
			}
			pred[k] = best - probeBox0
			r.MeanErr += math.Abs(float64(pred[k]-bx[k])) / 256
			r.MeanErrBaseline += math.Abs(mean[k]-float64(bx[k])) / 256
		}
		if probeBox(pred).IoU(probeBox(bx)) >= 0.5 {
			r.Acc05 += 1.0 / 64
		}
	}
	return r
}

// TestProbeLocalizesOneSquare: a few hundred steps of the demo's model
// shape must learn where a lone square is, to within a few hundredths of
// the image, far better than the mean box. A broken patch layout, position
// table or box-token loss fails it; colour-only tests cannot see those.
func TestProbeLocalizesOneSquare(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for about a minute")
	}
	r := runProbe(t, probeOpts{Squares: 1, Steps: 250, LR: 3e-3, Heads: 2, VisDepth: 0, TextFirst: true, Fusion: true})
	t.Logf("one square, 250 steps: loss %.3f -> %.3f, mean |error| %.2f (mean box %.2f), Acc@0.5 %.2f",
		r.FirstLoss, r.LastLoss, r.MeanErr, r.MeanErrBaseline, r.Acc05)
	if r.MeanErr > 8 || r.MeanErr > 0.5*r.MeanErrBaseline {
		t.Fatalf("mean |error| %.2f hundredths of the image (mean box %.2f): the model does not localize", r.MeanErr, r.MeanErrBaseline)
	}
}

// BenchmarkProbeBinding measures how far the model gets in binding a colour
// word to one of two squares: GROUNDMESH_PROBE_STEPS steps (default 400),
// for the demo's layout, for it without text fusion, for both with eight
// random filler words before the colour word (filler8: a real prompt's
// template around its telling words), and for the earlier layout (four
// heads, one vision block, image first, no fusion). It reports loss and
// errors, not time.
func BenchmarkProbeBinding(b *testing.B) {
	steps := 400
	if s := os.Getenv("GROUNDMESH_PROBE_STEPS"); s != "" {
		steps, _ = strconv.Atoi(s)
	}
	for _, v := range []struct {
		name string
		o    probeOpts
	}{
		{"demo", probeOpts{Squares: 2, Steps: steps, LR: 3e-3, Heads: 2, VisDepth: 0, TextFirst: true, Fusion: true}},
		{"no-fusion", probeOpts{Squares: 2, Steps: steps, LR: 3e-3, Heads: 2, VisDepth: 0, TextFirst: true}},
		{"filler8", probeOpts{Squares: 2, Steps: steps, LR: 3e-3, Heads: 2, VisDepth: 0, TextFirst: true, Fusion: true, Filler: 8}},
		{"filler8-no-fusion", probeOpts{Squares: 2, Steps: steps, LR: 3e-3, Heads: 2, VisDepth: 0, TextFirst: true, Filler: 8}},
		{"image-first-h4-vd1", probeOpts{Squares: 2, Steps: steps, LR: 3e-3, Heads: 4, VisDepth: 1}},
	} {
		b.Run(v.name, func(b *testing.B) {
			var r probeResult
			for range b.N {
				r = runProbe(b, v.o)
			}
			b.ReportMetric(r.LastLoss, "loss")
			b.ReportMetric(r.MeanErr, "err/coord")
			b.ReportMetric(r.MeanErrBaseline, "meanbox-err/coord")
			b.ReportMetric(r.Acc05, "acc@0.5")
		})
	}
}
