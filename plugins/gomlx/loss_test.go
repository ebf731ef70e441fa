package gomlx

import (
	"context"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// TestTargetDistBoxLabelSmoothing: a box-number target spreads a Gaussian
// over the coarse range only, peaked on the target and symmetric about it;
// every other target stays one-hot; sigma 0 is one-hot everywhere.
func TestTargetDistBoxLabelSmoothing(t *testing.T) {
	b := newTestBackend(t)
	c := tinyConfig()
	c.VocabSize, c.BoxToken0, c.BoxTokens, c.BoxLabelSigma = 40, 10, 21, 1.5
	targets := []int32{3, 10, 20, 30, 35} // text, first, middle, last box number, text
	dist := func(c2 c2cfg) [][]float32 {
		exec, err := graph.NewExec(b.ml, func(tgt *graph.Node) *graph.Node {
			return model.NewNet[*graph.Node](newOps(tgt.Graph(), nil), c2.Config).TargetDist(tgt)
		})
		if err != nil {
			t.Fatal(err)
		}
		defer exec.Finalize()
		out, err := exec.Call(tensors.FromFlatDataAndDimensions(targets, len(targets)))
		if err != nil {
			t.Fatal(err)
		}
		flat := tensors.MustCopyFlatData[float32](out[0])
		rows := make([][]float32, len(targets))
		for i := range rows {
			rows[i] = flat[i*c.VocabSize : (i+1)*c.VocabSize]
		}
		return rows
	}
	rows := dist(c2cfg{c})
	for i, tg := range targets {
		row := rows[i]
		sum := 0.0
		for _, v := range row {
			sum += float64(v)
		}
		if math.Abs(sum-1) > 1e-5 {
			t.Fatalf("target %d: row sums to %v", tg, sum)
		}
		box := tg >= 10 && tg <= 30
		for j, v := range row {
			switch {
			case !box && j == int(tg) && v != 1, !box && j != int(tg) && v != 0:
				t.Fatalf("text target %d: p[%d] = %v, want one-hot", tg, j, v)
			case box && (j < 10 || j > 30) && v != 0:
				t.Fatalf("box target %d: mass %v on non-box token %d", tg, v, j)
			case box && j != int(tg) && v >= row[tg]:
				t.Fatalf("box target %d: p[%d] = %v not below the peak %v", tg, j, v, row[tg])
			}
		}
		if box && tg == 20 {
			for d := 1; d <= 10; d++ {
				if math.Abs(float64(row[20-d]-row[20+d])) > 1e-6 || row[20+d] >= row[20+d-1] {
					t.Fatalf("box target 20: not symmetric and falling at distance %d: %v", d, row[10:31])
				}
			}
			if want := math.Exp(-1 / (2 * 1.5 * 1.5)); math.Abs(float64(row[21]/row[20])-want) > 1e-4 {
				t.Fatalf("p[21]/p[20] = %v, want %v", row[21]/row[20], want)
			}
		}
	}
	c.BoxLabelSigma = 0
	for i, row := range dist(c2cfg{c}) {
		for j, v := range row {
			if (j == int(targets[i])) != (v == 1) {
				t.Fatalf("sigma 0, target %d: p[%d] = %v", targets[i], j, v)
			}
		}
	}
}

type c2cfg struct{ Config model.Config }

// TestSinCos2DPositions: every patch of the grid gets a distinct code, and
// neighbouring cells are closer than far ones.
func TestSinCos2DPositions(t *testing.T) {
	const g, w = 6, 64
	v := make([]float32, g*g*w)
	sinCos2D(v, g*g, w)
	dist := func(a, b int) float64 {
		d := 0.0
		for k := range w {
			x := float64(v[a*w+k] - v[b*w+k])
			d += x * x
		}
		return math.Sqrt(d)
	}
	for a := range g * g {
		for b := a + 1; b < g*g; b++ {
			if dist(a, b) < 1e-3 {
				t.Fatalf("patches %d and %d share a position code", a, b)
			}
		}
	}
	if near, far := dist(0, 1), dist(0, g-1); near >= far {
		t.Fatalf("neighbour distance %v not below far distance %v", near, far)
	}
	if near, far := dist(0, g), dist(0, (g-1)*g); near >= far {
		t.Fatalf("row neighbour distance %v not below far distance %v", near, far)
	}
}

// TestGroundLoss: Config.GroundLossWeight's loss is the mean binary
// cross-entropy of dense(ln(mid)) against the covered fractions over the
// labelled positions only, computed here by hand.
func TestGroundLoss(t *testing.T) {
	b := newTestBackend(t)
	const w = 4
	mid := []float32{0.5, -1, 2, 0.25, 3, 1, -2, 0, 9, 9, 9, 1} // [1, 3, 4]
	lnW := []float32{1, 0.5, 2, 1}
	lnB := []float32{0, 0.1, 0, -0.2}
	gw := []float32{0.3, -0.7, 0.2, 1.1}
	gb := []float32{0.05}
	tgt := []float32{0.8, 0, 0.5}
	wt := []float32{1, 1, 0} // the third position carries no label
	got := headLoss(t, b, "ground", lnW, lnB, gw, gb, mid, tgt, wt, (*model.Net[*graph.Node]).GroundLoss)
	var want, n float64
	for p := range 3 {
		z := float64(gb[0])
		for i, v := range refLayerNorm(mid[p*w:(p+1)*w], lnW, lnB) {
			z += v * float64(gw[i])
		}
		pr := 1 / (1 + math.Exp(-z))
		bce := -(float64(tgt[p])*math.Log(pr) + (1-float64(tgt[p]))*math.Log(1-pr))
		want += float64(wt[p]) * bce
		n += float64(wt[p])
	}
	want /= n
	if math.Abs(got-want) > 1e-5 {
		t.Fatalf("ground loss %v, want %v", got, want)
	}
}

// headLoss runs a training-only head's loss in the graph: the head's layer
// norm (lnW, lnB) and linear layer (hw [w, out], hb [out]) under prefix,
// over mid [1, 3, w], against the targets tgt [1, 3] (out 1) or [1, 3,
// out], weighted by wt [1, 3].
func headLoss(t *testing.T, b *Backend, prefix string, lnW, lnB, hw, hb, mid, tgt, wt []float32,
	loss func(n *model.Net[*graph.Node], mid, tgt, wt *graph.Node) *graph.Node) float64 {
	t.Helper()
	w, out := len(lnW), len(hb)
	exec, err := graph.NewExec(b.ml, func(in []*graph.Node) *graph.Node {
		n := model.NewNet[*graph.Node](newOps(in[0].Graph(), map[string]*graph.Node{
			prefix + ".ln.w": in[0], prefix + ".ln.b": in[1], prefix + ".w": in[2], prefix + ".b": in[3]}), model.Config{})
		return loss(n, in[4], in[5], in[6])
	})
	if err != nil {
		t.Fatal(err)
	}
	defer exec.Finalize()
	tgtDims := []int{1, 3}
	if out > 1 {
		tgtDims = append(tgtDims, out)
	}
	res, err := exec.Call(tensors.FromFlatDataAndDimensions(lnW, w), tensors.FromFlatDataAndDimensions(lnB, w),
		tensors.FromFlatDataAndDimensions(hw, w, out), tensors.FromFlatDataAndDimensions(hb, out),
		tensors.FromFlatDataAndDimensions(mid, 1, 3, w), tensors.FromFlatDataAndDimensions(tgt, tgtDims...), tensors.FromFlatDataAndDimensions(wt, 1, 3))
	if err != nil {
		t.Fatal(err)
	}
	return float64(tensors.ToScalar[float32](res[0]))
}

// firstStep runs tr's first optimizer step on bt (learning rate 3e-3,
// Adam bias corrections 10, no weight decay).
func firstStep(t *testing.T, tr *trainer, bt trainBatch) stepOut {
	t.Helper()
	out, err := tr.step(3e-3, 10, 10, 0, bt)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runSteps runs tr's optimizer steps from to to (learning rate 3e-3, the
// Adam bias corrections of each step, no weight decay) on fresh batches.
func runSteps(t *testing.T, tr *trainer, from, to int, batch func() trainBatch) []stepOut {
	t.Helper()
	var outs []stepOut
	for step := from; step <= to; step++ {
		bc := float32(1 / (1 - math.Pow(adamBeta1, float64(step))))
		bc2 := float32(1 / (1 - math.Pow(adamBeta2, float64(step))))
		out, err := tr.step(3e-3, bc, bc2, 0, batch())
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, out)
	}
	return outs
}

// refLayerNorm is the layer norm of x with scale g and shift b, in float64.
func refLayerNorm(x, g, b []float32) []float64 {
	n := float64(len(x))
	var mean, vr float64
	for _, v := range x {
		mean += float64(v) / n
	}
	for _, v := range x {
		vr += (float64(v) - mean) * (float64(v) - mean) / n
	}
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = (float64(v)-mean)/math.Sqrt(vr+layerNormEps)*float64(g[i]) + float64(b[i])
	}
	return out
}

// freshTrainer is a trainer of c from seed-1 initial weights with every
// parameter training, closed when the test ends.
func freshTrainer(t *testing.T, b *Backend, c model.Config) *trainer {
	t.Helper()
	specs := paramSpecs(c)
	tr, err := newTrainer(b, c, compute.ObjectiveAll, specs, selectTrainable(specs, nil, nil), &modelState{weights: initParams(specs, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.close)
	return tr
}

// TestGroundLossTrains: with GroundLossWeight the train step descends the
// ground loss too (here: label every patch 1 when the image is red, which
// only the pixels tell), and it reports the answer loss alone.
func TestGroundLossTrains(t *testing.T) {
	b := newTestBackend(t)
	c := tinyConfig()
	c.GroundLossWeight = 1
	tr := freshTrainer(t, b, c)
	rng := rand.New(rand.NewPCG(5, 6))
	batch := func() trainBatch {
		rows := make([]batchRow, 16)
		for i := range rows {
			img, q := colourSample(c, rng)
			toks := append(promptTokens(c), int32(tokAnswer0+q), tokEOS)
			n := len(toks)
			for len(toks) < c.MaxSeq { // rows are MaxSeq long, as in a shard
				toks = append(toks, c.PadToken)
			}
			tg := make([]int32, len(toks))
			pt := make([]uint8, len(toks))
			for p, x := range toks {
				tg[p], pt[p] = -1, model.NoPatchTarget
				if x == c.PatchToken {
					pt[p] = 0
					if q == 0 {
						pt[p] = model.PatchTargetScale
					}
				}
			}
			tg[n-3], tg[n-2] = int32(tokAnswer0+q), tokEOS
			rows[i] = batchRow{tokens: toks, targets: tg, images: [][]byte{img}, patchTargets: pt}
		}
		return makeBatch(c, rows)
	}
	// The reported loss is the answer loss alone: the first step of the
	// same model without the grounding loss (its other parameters draw the
	// same initial values) reports the same loss on the same batch.
	plainCfg := c
	plainCfg.GroundLossWeight = 0
	plain := freshTrainer(t, b, plainCfg)
	bt := batch()
	withGround, without := firstStep(t, tr, bt), firstStep(t, plain, bt)
	if withGround.ground <= 0 || math.Abs(float64(withGround.loss-without.loss)) > 1e-5 {
		t.Fatalf("first step: loss %v with the grounding loss (ground %v), %v without: want the answer loss alone",
			withGround.loss, withGround.ground, without.loss)
	}

	outs := runSteps(t, tr, 2, 61, batch)
	first, last := outs[0].ground, outs[len(outs)-1].ground
	if first < 0.3 || last > 0.5*first {
		t.Fatalf("ground loss %v -> %v: want it at least halved", first, last)
	}
}

// TestGroundLossLogNeedsLabels: a stage whose records label no patch (crop
// naming, say) has no grounding loss to report, and the log must not claim
// one of 0.
func TestGroundLossLogNeedsLabels(t *testing.T) {
	dir := t.TempDir()
	c := tinyConfig()
	c.GroundLossWeight = 1
	shard := writeColourShard(t, dir, c, 64, 1) // no patch_targets
	b := newTestBackend(t)
	var logs strings.Builder
	b.log = slog.New(slog.NewTextHandler(&logs, nil))
	req := colourRequest(t, dir, shard)
	req.ModelConfig, req.Steps, req.CheckpointEvery = configJSON(t, c), 10, 5
	if _, err := b.Train(context.Background(), req, func(compute.TrainProgress) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "checkpoint saved") {
		t.Fatalf("no checkpoint logged; the test does not see the log:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "grounding loss") {
		t.Fatalf("grounding loss logged without labelled patches:\n%s", logs.String())
	}
}

func TestBoxLoss(t *testing.T) {
	b := newTestBackend(t)
	const w = 4
	mid := []float32{0.5, -1, 2, 0.25, 3, 1, -2, 0, 9, 9, 9, 1} // [1, 3, 4]
	lnW := []float32{1, 0.5, 2, 1}
	lnB := []float32{0, 0.1, 0, -0.2}
	bw := make([]float32, w*4)
	for i := range bw {
		bw[i] = float32(i%5)*0.1 - 0.2
	}
	bb := []float32{0.1, 0.2, 0.6, 0.7}
	box := []float32{0.1, 0.2, 0.5, 0.6, 0.1, 0.2, 0.5, 0.6, 0, 0, 0, 0}
	wt := []float32{1, 0.25, 0} // the third position is not covered
	got := headLoss(t, b, "box", lnW, lnB, bw, bb, mid, box, wt, (*model.Net[*graph.Node]).BoxLoss)
	var want, n float64
	for p := range 3 {
		ln := refLayerNorm(mid[p*w:(p+1)*w], lnW, lnB)
		var l1 float64
		for k := range 4 {
			z := float64(bb[k])
			for i, v := range ln {
				z += v * float64(bw[i*4+k])
			}
			l1 += math.Abs(z - float64(box[p*4+k]))
		}
		want += float64(wt[p]) * l1
		n += float64(wt[p])
	}
	want /= n
	if math.Abs(got-want) > 1e-5 {
		t.Fatalf("box loss %v, want %v", got, want)
	}
}

// TestBoxLossTrains: with BoxLossWeight the train step descends the box
// loss (the box of a square the pixels show, at the patches it covers),
// and it reports the answer loss alone.
func TestBoxLossTrains(t *testing.T) {
	b := newTestBackend(t)
	c := tinyConfig()
	c.GroundLossWeight, c.BoxLossWeight = 1, 1
	c.ImageSize, c.MaxSeq = 32, 24 // 16 patches: boxes vary
	tr := freshTrainer(t, b, c)
	plainCfg := c
	plainCfg.BoxLossWeight = 0
	plain := freshTrainer(t, b, plainCfg)
	rng := rand.New(rand.NewPCG(7, 8))
	batch := func() trainBatch { return squareBoxBatch(c, rng, func([4]int) int32 { return tokAnswer0 }) }
	bt := batch()
	with, without := firstStep(t, tr, bt), firstStep(t, plain, bt)
	if with.box <= 0 || without.box != 0 || math.Abs(float64(with.loss-without.loss)) > 1e-5 {
		t.Fatalf("first step: loss %v with the box loss (box %v), %v without (box %v): want the answer loss alone",
			with.loss, with.box, without.loss, without.box)
	}
	outs := runSteps(t, tr, 2, 81, batch)
	first, last := outs[0].box, outs[len(outs)-1].box
	t.Logf("box loss %v (first step), %v -> %v", with.box, first, last)
	if last > 0.6*first {
		t.Fatalf("box loss %v -> %v: want it down by at least 40%%", first, last)
	}
}

// TestGroundReadoutTrains: with Config.GroundReadout the grounding head's
// pooled patches feed the answer, and training stays finite, moves
// readout.w and learns an answer that only the referent's place tells
// (which half of the image the square's centre is in).
func TestGroundReadoutTrains(t *testing.T) {
	b := newTestBackend(t)
	c := tinyConfig()
	c.GroundLossWeight, c.BoxLossWeight, c.GroundReadout = 1, 1, true
	c.ImageSize, c.MaxSeq = 32, 24 // 16 patches
	tr := freshTrainer(t, b, c)
	init := initParams(paramSpecs(c), 1)["readout.w"]
	rng := rand.New(rand.NewPCG(7, 9))
	batch := func() trainBatch {
		return squareBoxBatch(c, rng, func(box [4]int) int32 {
			if box[0]+box[2] >= 100 {
				return tokAnswer0 + 1
			}
			return tokAnswer0
		})
	}
	outs := runSteps(t, tr, 1, 150, batch)
	var first, last float64
	for _, o := range outs[:10] {
		first += float64(o.loss) / 10
	}
	for _, o := range outs[len(outs)-10:] {
		last += float64(o.loss) / 10
	}
	st, err := tr.state(150)
	if err != nil {
		t.Fatal(err)
	}
	moved := maxAbsDiff(st.weights["readout.w"], init)
	t.Logf("answer loss %.3f -> %.3f (mean of 10 steps); readout.w moved by up to %.3g", first, last, moved)
	if moved < 1e-3 {
		t.Fatalf("readout.w moved by %.3g: no gradient reaches it", moved)
	}
	// Guessing the half costs ln 2 on one of the two targets (answer and
	// <eos>): a mean of 0.35 per target.
	if last > math.Ln2/4 {
		t.Fatalf("answer loss %.3f -> %.3f: want below %.3f, half of what guessing the half costs", first, last, math.Ln2/4)
	}
}

// squareBoxBatch is a batch of 16 one-square probe samples whose answer is
// answer(box) then <eos>, with the grounding and box targets of the
// square's patches (probeSample's box is in hundredths of the image).
func squareBoxBatch(c model.Config, rng *rand.Rand, answer func(box [4]int) int32) trainBatch {
	rows := make([]batchRow, 16)
	for i := range rows {
		img, _, box := computetest.Squares(c.ImageSize, 1, rng)
		a := answer(box)
		toks := append(promptTokens(c), a, tokEOS)
		n := len(toks)
		for len(toks) < c.MaxSeq {
			toks = append(toks, c.PadToken)
		}
		tg := make([]int32, len(toks))
		pt := make([]uint8, len(toks))
		pb := make([]uint8, 4*len(toks))
		cover := model.PatchCover(c, 100, 100, [][4]float64{{float64(box[0]), float64(box[1]), float64(box[2]), float64(box[3])}})
		np := 0
		for p, x := range toks {
			tg[p], pt[p] = -1, model.NoPatchTarget
			if x == c.PatchToken {
				pt[p] = uint8(math.Round(cover[np] * model.PatchTargetScale))
				if pt[p] > 0 {
					for k := range 4 {
						pb[p*4+k] = uint8(box[k])
					}
				}
				np++
			}
		}
		tg[n-3], tg[n-2] = a, tokEOS
		rows[i] = batchRow{tokens: toks, targets: tg, images: [][]byte{img}, patchTargets: pt, patchBoxes: pb}
	}
	return makeBatch(c, rows)
}
