package gomlx

import (
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	gmdataset "github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/services/ingest/scenes"
)

// The localization probe: a noisy grey image with coloured squares, a
// question token naming a colour, and the answer as the square's box in
// four coarse box-number tokens. With one square it checks that the spatial
// path (patches, positions, box tokens) learns at all; with a red and a
// green square it measures how fast the model learns to bind a word to what
// it sees, which is what referring expressions need.

const (
	probeBox0     = 15  // coarse "0.00" .. "1.00" are 15 .. 115, as in model
	probeQuestion = 120 // +0 red, +1 green
	probeAnswer   = 122 // "answer now" when the question precedes the image
	probeFiller0  = 123 // 123 .. 129: filler words
	probeFillers  = 7
	fineTok0      = probeBox0 + 101 // fine digits "0" .. "9", after the coarse numbers
)

type probeOpts struct {
	Squares    int // 1 or 2
	Steps      int
	LR         float64
	Heads      int
	VisDepth   int
	TextFirst  bool // question before the image
	Fusion     bool // Config.TextFusion
	FusionAttn bool // Config.FusionAttention
	// Filler is the number of random filler tokens (a template's words)
	// before the question when TextFirst: what a real instruction wraps
	// its two or three telling words in.
	Filler int
	// FillerJitter adds 0 to FillerJitter more filler tokens per item
	// (scene probe), so that the image's patches sit at a sequence
	// position that varies as a templated instruction's length does.
	FillerJitter int
	// PatchPos is Config.PatchPositions.
	PatchPos bool
	// Width, Depth and Sigma override the demo's 64, 2 and
	// Config.BoxLabelSigma when not zero.
	Width, Depth int
	Sigma        float64
	// Ground is Config.GroundLossWeight: with it the shard labels every
	// patch with the fraction the answer box covers.
	Ground float64
	// ColourOnly asks the scene probe about objects of a colour no other
	// object in their image has, by the colour word alone.
	ColourOnly bool
	// NoFine leaves the box numbers' third decimals (the fine digit
	// tokens of model.FormatBox's answers) out of the answer loss.
	NoFine bool
	// ShapeOnly asks by the shape word alone, about objects of a shape no
	// other object in their image has.
	ShapeOnly bool
	// CropShape asks the scene probe for the shape of a crop (the object's
	// box with half its size again of context, as the synth set's 1.5x
	// crops, resized to the model's input): the answer is one shape word,
	// scored as the argmax over the eight shape words. It measures shape
	// perception alone, at the scale stage 1's crop naming trains it.
	CropShape bool
	// ImageSize overrides the 48-pixel input when not zero.
	ImageSize int
	// Stem is Config.ConvStem.
	Stem bool
	// Box is Config.BoxLossWeight (with Ground): the shard also carries
	// the box at every covered patch.
	Box float64
	// Readout is Config.GroundReadout (with Ground).
	Readout bool
	// Templated asks the scene probe's questions the way the pipeline
	// does: synth's REC templates around the description, the chat
	// template, the tokenizer built from the questions and the answer as
	// text ("[0.123, 0.456, 0.789, 0.900]"), instead of the description's
	// words after filler tokens and four coarse numbers.
	Templated bool
}

type probeResult struct {
	FirstLoss, LastLoss float64
	MeanErr             float64 // mean |coarse value error| per coordinate, teacher forced
	MeanErrBaseline     float64 // the same for always answering the training mean box
	Acc05               float64 // IoU >= 0.5, teacher forced
	Acc05Baseline       float64 // the same for the training mean box
	// Point is the fraction of predicted boxes whose centre lies in the
	// true box: whether the model found the object, however loose its box.
	Point, PointBaseline float64
	// FreeAcc05 and FreePoint are Acc05 and Point with the box decoded
	// greedily, each number read after the model's own earlier ones (as
	// eval decodes), not the true ones.
	FreeAcc05, FreePoint float64
	// ShapeAcc and ShapeAccBaseline are CropShape's accuracy and that of
	// always answering the training split's most frequent shape.
	ShapeAcc, ShapeAccBaseline float64
	// BySize are the freely decoded Acc@0.5 and centre hits per size class
	// (probeItem.size), and SizeN the test objects of each.
	BySize [3][2]float64
	SizeN  [3]int
}

// probeSteps is GROUNDMESH_PROBE_STEPS, or def.
func probeSteps(def int) int {
	if n, err := strconv.Atoi(os.Getenv("GROUNDMESH_PROBE_STEPS")); err == nil && n > 0 {
		return n
	}
	return def
}

// report reports the result as benchmark metrics.
func (r probeResult) report(b *testing.B) {
	b.ReportMetric(r.LastLoss, "loss")
	b.ReportMetric(r.MeanErr, "err/coord")
	b.ReportMetric(r.MeanErrBaseline, "meanbox-err/coord")
	b.ReportMetric(r.Acc05, "acc@0.5")
	b.ReportMetric(r.Acc05Baseline, "meanbox-acc@0.5")
	b.ReportMetric(r.Point, "point")
	b.ReportMetric(r.PointBaseline, "meanbox-point")
	b.ReportMetric(r.FreeAcc05, "free-acc@0.5")
	b.ReportMetric(r.FreePoint, "free-point")
}

func (o probeOpts) config() model.Config {
	c := model.DefaultConfig(130)
	c.Width, c.Depth, c.Heads, c.VisionDepth = 64, 2, o.Heads, o.VisDepth
	c.MaxSeq, c.MaxImages = 48+o.Filler+o.FillerJitter, 1
	c.TextFusion = o.Fusion
	c.FusionAttention = o.FusionAttn
	if o.Width > 0 {
		c.Width = o.Width
	}
	if o.Depth > 0 {
		c.Depth = o.Depth
	}
	if o.Sigma > 0 {
		c.BoxLabelSigma = o.Sigma
	}
	c.GroundLossWeight = o.Ground
	c.ConvStem = o.Stem
	c.BoxLossWeight = o.Box
	c.GroundReadout = o.Readout
	c.PatchPositions = o.PatchPos
	if o.ImageSize > 0 {
		c.ImageSize = o.ImageSize
	}
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

// scoreShapes fills CropShape's accuracies: the answer token of an item is
// toks[at+1], one of the shape words.
func scoreShapes(t testing.TB, b *Backend, c model.Config, w map[string][]float32, train, test []probeItem, r *probeResult) {
	t.Helper()
	freq := map[int32]int{}
	for _, it := range train {
		freq[it.toks[it.at+1]]++
	}
	var major int32
	for k, v := range freq {
		if v > freq[major] || v == freq[major] && k < major {
			major = k
		}
	}
	lo, hi := int32(sceneWordID("shape", scenes.Shapes[0])), int32(sceneWordID("shape", scenes.Shapes[len(scenes.Shapes)-1]))
	for start := 0; start < len(test); start += 64 {
		part := test[start:min(start+64, len(test))]
		logits := itemLogits(t, b, c, w, part)
		for i, it := range part {
			best := lo + int32(argmax(logits[i][it.at][lo:hi+1]))
			want := it.toks[it.at+1]
			if best == want {
				r.ShapeAcc += 1 / float64(len(test))
			}
			if major == want {
				r.ShapeAccBaseline += 1 / float64(len(test))
			}
		}
	}
}

// itemLogits is the GoMLX forward's logits [item][position][vocab] of
// probe items.
func itemLogits(t testing.TB, b *Backend, c model.Config, w map[string][]float32, items []probeItem) [][][]float32 {
	t.Helper()
	batch := make([]compute.Sequence, len(items))
	for i, it := range items {
		batch[i] = compute.Sequence{Tokens: it.toks, Images: []compute.Image{{Size: c.ImageSize, Pixels: normalize(it.img)}}}
	}
	return gomlxLogits(t, b, c, w, batch)
}

// centreIn reports whether the centre of box a lies in box b.
func centreIn(a, b [4]int) bool {
	cx, cy := float64(a[0]+a[2])/2, float64(a[1]+a[3])/2
	return cx >= float64(b[0]) && cx <= float64(b[2]) && cy >= float64(b[1]) && cy <= float64(b[3])
}

// probeItem is one probe sample: the image (ImageSize^2 x 3 uint8), the
// token sequence, the position whose logits predict the first box number,
// and the box in coarse values (hundredths of the image).
type probeItem struct {
	cells []int32 // Config.Grounder's cell labels (model.CellLabels), or nil
	img   []byte
	toks  []int32
	at    int
	box   [4]int
	// size is the object's size class in the scene probe (0 small, 1
	// medium, 2 large; 0 elsewhere).
	size int
	// kind names the attributes the scene probe's expression uses besides
	// the shape ("shape" when none), for per-kind accuracy.
	kind string
	expr string
	// coarse are the positions whose logits predict the box's four coarse
	// numbers when the answer is not four consecutive coarse tokens after
	// at (the templated scene probe's "[0.123, ...]"); zero: at+k.
	coarse *[4]int
}

// coarseAt is the position whose logits predict the item's k-th coarse
// box number.
func (it probeItem) coarseAt(k int) int {
	if it.coarse != nil {
		return it.coarse[k]
	}
	return it.at + k
}

func runProbe(t testing.TB, o probeOpts) probeResult {
	t.Helper()
	c := o.config()
	gen := func(n int, rng *rand.Rand) []probeItem {
		items := make([]probeItem, n)
		for i := range items {
			img, q, box := probeSample(c, o.Squares, rng)
			seq, at := probeSeq(c, o, q, box, rng)
			items[i] = probeItem{img: img, toks: seq, at: at, box: box}
		}
		return items
	}
	return trainProbe(t, c, o, gen(4096, rand.New(rand.NewPCG(1, 2))), gen(64, rand.New(rand.NewPCG(77, 2))))
}

// trainProbe trains the model c on train for o.Steps steps (batch 16, lr
// o.LR) and scores the box of every test item teacher forced: the argmax
// coarse value of each of the four box numbers.
func trainProbe(t testing.TB, c model.Config, o probeOpts, train, test []probeItem) probeResult {
	t.Helper()
	dir := t.TempDir()
	n := len(train)
	L := c.MaxSeq
	tokens := make([]int32, n*L)
	targets := make([]int32, n*L)
	index := make([]int32, n)
	patchTgt := make([]byte, n*L)
	patchBox := make([]byte, n*L*4)
	images := make([]byte, 0, n*len(train[0].img))
	var mean [4]float64
	for i, it := range train {
		images = append(images, it.img...)
		index[i] = int32(i)
		for p := range L {
			targets[i*L+p] = -1
			tokens[i*L+p] = c.PadToken
			if p < len(it.toks) {
				tokens[i*L+p] = it.toks[p]
			}
		}
		for p := it.at; p < len(it.toks)-1; p++ {
			if o.NoFine && it.toks[p+1] >= fineTok0 && it.toks[p+1] < fineTok0+10 {
				continue
			}
			targets[i*L+p] = it.toks[p+1]
		}
		// The box is in hundredths of the image: a 100 x 100 image's pixels.
		b := it.box
		cover := model.PatchCover(c, 100, 100, [][4]float64{{float64(b[0]), float64(b[1]), float64(b[2]), float64(b[3])}})
		np := 0
		for p := range L {
			patchTgt[i*L+p] = model.NoPatchTarget
			if p < len(it.toks) && it.toks[p] == c.PatchToken {
				patchTgt[i*L+p] = byte(math.Round(cover[np] * model.PatchTargetScale))
				if patchTgt[i*L+p] > 0 {
					for k := range 4 {
						patchBox[(i*L+p)*4+k] = byte(b[k])
					}
				}
				np++
			}
		}
		for k := range 4 {
			mean[k] += float64(it.box[k]) / float64(n)
		}
	}
	shard := filepath.Join(dir, "probe.safetensors")
	f := &stFile{Metadata: map[string]string{"config_sha256": "probe", "synth_set": "probe"}, Tensors: map[string]stTensor{
		"tokens": i32Tensor(tokens, n, L), "targets": i32Tensor(targets, n, L), "image_index": i32Tensor(index, n, 1),
		"images": {DType: "U8", Shape: []int{n, c.ImageSize, c.ImageSize, 3}, Data: images}}}
	if o.Ground > 0 {
		f.Tensors["patch_targets"] = stTensor{DType: "U8", Shape: []int{n, L}, Data: patchTgt}
	}
	if o.Box > 0 {
		f.Tensors["patch_boxes"] = stTensor{DType: "U8", Shape: []int{n, L, 4}, Data: patchBox}
	}
	if _, _, err := writeSafetensorsAtomic(shard, f); err != nil {
		t.Fatal(err)
	}
	b := newTestBackend(t)
	if os.Getenv("GROUNDMESH_PROBE_LOG") != "" {
		b.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	res, err := b.Train(context.Background(), compute.TrainRequest{
		RunID: "probe", Stage: "stage2", ModelConfig: configJSON(t, c), Shards: []string{shard},
		Steps: o.Steps, BatchSize: 16, LearningRate: o.LR, WarmupSteps: 20, WeightDecay: 0.01, Seed: 1,
		LogEvery: 100, CheckpointEvery: o.Steps, CheckpointDir: dir,
	}, func(compute.TrainProgress) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	w := readWeights(t, res.Final.Path, c).weights
	r := probeResult{FirstLoss: res.FirstLoss, LastLoss: res.LastLoss}
	if o.CropShape {
		scoreShapes(t, b, c, w, train, test, &r)
		return r
	}
	var meanBox [4]int
	for k := range 4 {
		meanBox[k] = int(math.Round(mean[k]))
	}
	argmaxBox := func(l []float32) int { return argmax(l[probeBox0 : probeBox0+101]) }
	for lo := 0; lo < len(test); lo += 64 {
		part := test[lo:min(lo+64, len(test))]
		// Free running: four passes, each writing the model's own number.
		// The first pass reads the true tokens only, so its logits are
		// also the teacher-forced ones.
		free := make([]probeItem, len(part))
		for i, it := range part {
			free[i] = it
			free[i].toks = slices.Clone(it.toks)
		}
		freePred := make([][4]int, len(part))
		var logits [][][]float32
		for k := range 4 {
			fl := itemLogits(t, b, c, w, free)
			if k == 0 {
				logits = fl
			}
			for i, it := range free {
				freePred[i][k] = argmaxBox(fl[i][it.coarseAt(k)])
				it.toks[it.coarseAt(k)+1] = int32(probeBox0 + freePred[i][k])
			}
		}
		for i, it := range part {
			if probeBox(freePred[i]).IoU(probeBox(it.box)) >= 0.5 {
				r.FreeAcc05 += 1 / float64(len(test))
				r.BySize[it.size][0]++
			}
			if centreIn(freePred[i], it.box) {
				r.FreePoint += 1 / float64(len(test))
				r.BySize[it.size][1]++
			}
			r.SizeN[it.size]++
		}
		for i, it := range part {
			var pred [4]int
			for k := range 4 {
				pred[k] = argmaxBox(logits[i][it.coarseAt(k)])
				r.MeanErr += math.Abs(float64(pred[k]-it.box[k])) / float64(4*len(test))
				r.MeanErrBaseline += math.Abs(mean[k]-float64(it.box[k])) / float64(4*len(test))
			}
			if probeBox(pred).IoU(probeBox(it.box)) >= 0.5 {
				r.Acc05 += 1 / float64(len(test))
			}
			if probeBox(meanBox).IoU(probeBox(it.box)) >= 0.5 {
				r.Acc05Baseline += 1 / float64(len(test))
			}
			if centreIn(pred, it.box) {
				r.Point += 1 / float64(len(test))
			}
			if centreIn(meanBox, it.box) {
				r.PointBaseline += 1 / float64(len(test))
			}
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
	steps := probeSteps(400)
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
			r.report(b)
		})
	}
}
