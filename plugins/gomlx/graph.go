package gomlx

import (
	"fmt"
	"math"

	gomlxcompute "github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/ml/layers/activation"
	"github.com/gomlx/gomlx/ml/nn"

	"github.com/groundmesh/groundmesh/model"
)

// AdamW hyperparameters (besides the learning rate and weight decay, which
// come with each TrainRequest).
const (
	adamBeta1   = 0.9
	adamBeta2   = 0.95
	adamEps     = 1e-8
	gradClipMax = 1.0
	maskedScore = -1e9
	// fusionScoreClip bounds Config.FusionAttention's scores, so that
	// exp(score) and its running sums stay finite in float32.
	fusionScoreClip = 30
)

// netGraph builds the tinygrounder v1 forward pass as a GoMLX graph.
type netGraph struct {
	cfg    model.Config
	p      map[string]*graph.Node
	faults faults
	// Config.Grounder: its inputs, and the image grids [K, G, G, C] that
	// hiddenMid leaves for the head.
	gin  grounderIn
	grid *graph.Node
	sImg *graph.Node // each image's sentence vector [K, Width]
}

func (n *netGraph) dense(x *graph.Node, prefix string) *graph.Node {
	b := n.p[prefix+".b"]
	return nn.Dense(x, n.p[prefix+".w"], b, gomlxcompute.DenseLayoutInputOutputs)
}

func (n *netGraph) layerNorm(x *graph.Node, prefix string) *graph.Node {
	return nn.LayerNorm(x, []int{-1}, layerNormEps, n.p[prefix+".w"], n.p[prefix+".b"], nil)
}

// attention is multi-head self-attention over x [N, T, W]; bias, when not
// nil, is an additive [T, T] mask (0 or maskedScore).
//
// The layout is chosen for the Go backend: one transpose of qkv to
// [3, N, H, T, hd], then batch matmuls whose right-hand sides are laid out
// contracting-axis-first (k is transposed explicitly), which its small-matmul
// kernels run several times faster than the contracting-last layout an
// Einsum over [N, T, H, hd] produces.
func (n *netGraph) attention(x *graph.Node, prefix string, bias *graph.Node) *graph.Node {
	dims := x.Shape().Dimensions
	nb, t, w := dims[0], dims[1], dims[2]
	h := n.cfg.Heads
	hd := w / h
	qkv := n.dense(x, prefix+".qkv")
	qkv = graph.TransposeAllAxes(graph.Reshape(qkv, nb, t, 3, h, hd), 2, 0, 3, 1, 4)
	part := func(i int) *graph.Node { return graph.Squeeze(graph.SliceAxis(qkv, 0, graph.AxisElem(i)), 0) }
	q, kT, v := part(0), graph.TransposeAllAxes(part(1), 0, 1, 3, 2), part(2)
	scores := graph.DotGeneral(q, []int{3}, []int{0, 1}, kT, []int{2}, []int{0, 1}) // [N, H, T, T]
	scores = graph.MulScalar(scores, 1/math.Sqrt(float64(hd)))
	if bias != nil && bias.Rank() == 2 {
		scores = graph.Add(scores, graph.Reshape(bias, 1, 1, t, t))
	} else if bias != nil { // [N, 1, 1, T]: keys masked per sequence
		scores = graph.Add(scores, bias)
	}
	probs := graph.Softmax(scores, -1)
	out := graph.DotGeneral(probs, []int{3}, []int{0, 1}, v, []int{2}, []int{0, 1}) // [N, H, T, hd]
	out = graph.Reshape(graph.TransposeAllAxes(out, 0, 2, 1, 3), nb, t, w)
	return n.dense(out, prefix+".out")
}

func (n *netGraph) block(x *graph.Node, prefix string, bias *graph.Node) *graph.Node {
	x = graph.Add(x, n.attention(n.layerNorm(x, prefix+".ln1"), prefix+".attn", bias))
	hid := activation.Gelu(n.dense(n.layerNorm(x, prefix+".ln2"), prefix+".mlp.fc1"))
	return graph.Add(x, n.dense(hid, prefix+".mlp.fc2"))
}

// vision encodes normalized images [K, S, S, 3] into patch features
// [K*P, VisionWidth] (after vision.ln_f, before the projector).
func (n *netGraph) vision(images *graph.Node) *graph.Node {
	c := n.cfg
	k := images.Shape().Dimensions[0]
	g := c.ImageSize / c.PatchSize
	p := c.PatchSize
	var x *graph.Node
	if chans := c.StemChannels(); chans != nil {
		x = images
		for i := range chans {
			prefix := fmt.Sprintf("vision.stem.%d", i)
			x = activation.Gelu(convStride2(x, n.p[prefix+".w"], n.p[prefix+".b"]))
		}
		x = graph.Reshape(x, k, g*g, chans[len(chans)-1]) // [K, gy*gx, c]
	} else {
		x = graph.Reshape(images, k, g, p, g, p, 3)
		x = graph.Transpose(x, 2, 3) // [K, gy, gx, py, px, c]
		x = graph.Reshape(x, k, g*g, p*p*3)
	}
	x = n.dense(x, "vision.patch_embed")
	x = graph.Add(x, graph.InsertAxes(n.p["vision.pos"], 0))
	for i := range c.VisionDepth {
		x = n.block(x, fmt.Sprintf("vision.blocks.%d", i), nil)
	}
	x = n.layerNorm(x, "vision.ln_f")
	return graph.Reshape(x, k*g*g, c.VisionWidth)
}

// convStride2 is one of Config.ConvStem's convolutions: x [K, S, S, in] with
// kernel w [3, 3, in, out] (HWIO), stride 2 and zero padding 1, plus b
// [out]; it returns [K, S/2, S/2, out] (see conv3x3).
func convStride2(x, w, b *graph.Node) *graph.Node { return conv3x3(x, w, b, 2) }

// project is the projector MLP from vision features [..., VisionWidth] to
// the language model's width.
func (n *netGraph) project(x *graph.Node) *graph.Node {
	return n.dense(activation.Gelu(n.dense(x, "projector.fc1")), "projector.fc2")
}

// hidden runs the model up to the last block (before lm.ln_f):
// tokens [B, L] int32, patchIdx [B, L] int32 (row of the patch feature
// each position reads), isPatch [B, L] float32 (1 at patch positions),
// images [K, S, S, 3] float32 normalized. It returns [B, L, Width].
func (n *netGraph) hidden(tokens, patchIdx, isPatch, images *graph.Node) *graph.Node {
	h, _ := n.hiddenMid(tokens, patchIdx, isPatch, images)
	return h
}

// hiddenMid is hidden that also returns the hidden state entering the last
// language-model block, where Config.GroundLossWeight's loss reads.
func (n *netGraph) hiddenMid(tokens, patchIdx, isPatch, images *graph.Node) (h, mid *graph.Node) {
	c := n.cfg
	g := tokens.Graph()
	l := tokens.Shape().Dimensions[1]
	tok := graph.Gather(n.p["embed.tokens"], graph.InsertAxes(tokens, -1)) // [B, L, W]
	var feats *graph.Node
	if c.Grounder {
		feats = n.grounderFeatures(tokens, images)
	} else {
		feats = n.vision(images)
	}
	var patch *graph.Node // [B, L, W]
	if c.TextFusion {
		// Modulated per position, so projected per position.
		patch = graph.Gather(feats, graph.InsertAxes(patchIdx, -1))
		patch = n.project(n.fuse(patch, tok, isPatch))
	} else {
		patch = graph.Gather(n.project(feats), graph.InsertAxes(patchIdx, -1))
	}
	m := graph.InsertAxes(isPatch, -1)
	x := graph.Add(graph.Mul(tok, graph.OneMinus(m)), graph.Mul(patch, m))
	pos := graph.InsertAxes(graph.SliceAxis(n.p["embed.pos"], 0, graph.AxisRange(0, l)), 0) // [1, L, W]
	if c.PatchPositions && !n.faults.ignorePatchPositions {
		// The k-th patch of its image (its feature row mod Patches())
		// takes embed.patch_pos[k] instead of its sequence position's.
		np := int32(c.Patches())
		k := graph.Sub(patchIdx, graph.MulScalar(graph.DivScalar(patchIdx, float64(np)), float64(np)))
		pp := graph.Gather(n.p["embed.patch_pos"], graph.InsertAxes(k, -1)) // [B, L, W]
		x = graph.Add(x, graph.Add(graph.Mul(pos, graph.OneMinus(m)), graph.Mul(pp, m)))
	} else {
		x = graph.Add(x, pos)
	}
	bias := graph.Where(graph.LowerTriangular(g, l), graph.Scalar(g, dtypes.Float32, 0), graph.Scalar(g, dtypes.Float32, maskedScore))
	for i := range c.Depth {
		if i == c.Depth-1 {
			mid = x
			if c.GroundReadout {
				x = graph.Add(x, n.readout(mid, patchIdx, isPatch))
			}
		}
		x = n.block(x, fmt.Sprintf("lm.blocks.%d", i), bias)
	}
	return x, mid
}

// groundLogits is the grounding head: dense(ground.ln(mid)) [B, L], and
// the normalized states it reads [B, L, W].
func (n *netGraph) groundLogits(mid *graph.Node) (z, normed *graph.Node) {
	normed = n.layerNorm(mid, "ground.ln")
	return graph.Squeeze(n.dense(normed, "ground"), -1), normed
}

// readout is Config.GroundReadout's term for the hidden state entering the
// last block, mid [B, L, W]: at every text position t, the "ground.ln"
// states of the patches of the image whose last patch comes latest before
// t, weighted by the softmax of their grounding logits, through "readout"
// (zeros where no image comes before t and at patch positions). A patch's
// image is its feature row (patchIdx [B, L]) divided by Patches().
func (n *netGraph) readout(mid, patchIdx, isPatch *graph.Node) *graph.Node {
	g := mid.Graph()
	l := mid.Shape().Dimensions[1]
	f32 := func(x *graph.Node) *graph.Node { return graph.ConvertDType(x, dtypes.Float32) }
	z, normed := n.groundLogits(mid)
	// before[t, p] = 1 where p < t.
	before := f32(graph.GreaterThan(graph.Iota(g, shapes.Make(dtypes.Int32, l, l), 0), graph.Iota(g, shapes.Make(dtypes.Int32, l, l), 1)))
	patchAt := graph.InsertAxes(isPatch, 1) // [B, 1, L]: over p
	cand := graph.Mul(graph.InsertAxes(before, 0), patchAt)
	// The latest patch position before t (-1 for none), then its image.
	posP := f32(graph.Iota(g, shapes.Make(dtypes.Int32, 1, 1, l), 2))
	last := graph.ReduceMax(graph.Sub(graph.Mul(cand, graph.AddScalar(posP, 1)), graph.ScalarOne(g, dtypes.Float32)), -1) // [B, L]
	img := graph.Floor(graph.DivScalar(f32(patchIdx), float64(n.cfg.Patches())))                                          // [B, L] (over p)
	isLast := f32(graph.Equal(posP, graph.InsertAxes(last, -1)))                                                          // [B, L, L]
	lastImg := graph.ReduceSum(graph.Mul(isLast, graph.InsertAxes(img, 1)), -1)                                           // [B, L]
	sameImg := f32(graph.Equal(graph.InsertAxes(img, 1), graph.InsertAxes(lastImg, -1)))                                  // [B, L, L]
	textAt := graph.InsertAxes(graph.OneMinus(isPatch), -1)                                                               // [B, L, 1]: over t
	valid := graph.Mul(graph.Mul(cand, sameImg), textAt)
	scores := graph.Add(graph.InsertAxes(graph.StopGradient(z), 1), graph.MulScalar(graph.OneMinus(valid), maskedScore))
	scores = graph.Sub(scores, graph.StopGradient(graph.ReduceAndKeep(scores, graph.ReduceMax, -1)))
	e := graph.Mul(graph.Exp(scores), valid)
	// A row with a valid patch sums to at least 1 (its largest term is
	// exp(0)); rows without one sum to 0, and the floor of 1 keeps their
	// gradient finite (a tiny floor squares to zero in float32).
	den := graph.Max(graph.ReduceAndKeep(e, graph.ReduceSum, -1), graph.ScalarOne(g, dtypes.Float32))
	pooled := graph.Einsum("btp,bpw->btw", graph.Div(e, den), normed)
	return nn.Dense(pooled, n.p["readout.w"], nil, gomlxcompute.DenseLayoutInputOutputs)
}

// groundLoss is Config.GroundLossWeight's loss: the mean binary
// cross-entropy, over the labelled patch positions (patchW [B, L] 1 there),
// of the logit dense(ln(mid)) against the covered fraction patchTgt [B, L].
// Zero when no position is labelled.
func (n *netGraph) groundLoss(mid, patchTgt, patchW *graph.Node) *graph.Node {
	g := mid.Graph()
	z, _ := n.groundLogits(mid) // [B, L]
	// BCE with logits, stably: max(z, 0) - z*t + log(1 + exp(-|z|)).
	bce := graph.Add(graph.Sub(graph.Max(z, graph.ZerosLike(z)), graph.Mul(z, patchTgt)),
		graph.Log1P(graph.Exp(graph.Neg(graph.Abs(z)))))
	den := graph.Max(graph.ReduceAllSum(patchW), graph.Scalar(g, dtypes.Float32, 1))
	return graph.Div(graph.ReduceAllSum(graph.Mul(bce, patchW)), den)
}

// boxLoss is Config.BoxLossWeight's loss: the mean, weighted by patchBoxW
// [B, L] (the covered fraction of a patch of the referent, 0 elsewhere),
// of the L1 distance summed over the four coordinates between
// dense(ln(mid)) [B, L, 4] and the referent's box patchBox [B, L, 4].
// Zero when no position is weighted.
func (n *netGraph) boxLoss(mid, patchBox, patchBoxW *graph.Node) *graph.Node {
	g := mid.Graph()
	z := n.dense(n.layerNorm(mid, "box.ln"), "box") // [B, L, 4]
	l1 := graph.ReduceSum(graph.Abs(graph.Sub(z, patchBox)), -1)
	den := graph.Max(graph.ReduceAllSum(patchBoxW), graph.Scalar(g, dtypes.Float32, 1e-6))
	return graph.Div(graph.ReduceAllSum(graph.Mul(l1, patchBoxW)), den)
}

// fuse is Config.TextFusion: feature-wise modulation (FiLM) of the patch
// features patch [B, L, VisionWidth], before the projector, by the text
// before them. For every position, the mean embedding of the non-patch
// positions up to it (tok [B, L, W] token embeddings, isPatch [B, L]; zeros
// where there are none; with Config.FusionAttention weighted by
// exp(clip(fusion.query . embedding))) goes through the layer norm
// "fusion.ln" and the linear "fusion" layer to a scale and a shift
// [VisionWidth] each, and the row becomes patch * (1 + scale) + shift. Only
// patch rows are used.
func (n *netGraph) fuse(patch, tok, isPatch *graph.Node) *graph.Node {
	g := tok.Graph()
	l, w := tok.Shape().Dimensions[1], n.cfg.VisionWidth
	weight := graph.OneMinus(isPatch) // [B, L]: 1 at text positions
	floor := 1.0                      // of the weight sum: no text yet gives zeros
	if n.cfg.FusionAttention {
		score := graph.Einsum("blw,w->bl", tok, n.p["fusion.query"])
		weight = graph.Mul(weight, graph.Exp(graph.ClipScalar(score, -fusionScoreClip, fusionScoreClip)))
		floor = 1e-30
	}
	tri := graph.ConvertDType(graph.LowerTriangular(g, l), dtypes.Float32) // [L, L]: row i sums j <= i
	sum := graph.Einsum("ij,bjw->biw", tri, graph.Mul(tok, graph.InsertAxes(weight, -1)))
	count := graph.Einsum("ij,bj->bi", tri, weight)
	mean := graph.Div(sum, graph.InsertAxes(graph.Max(count, graph.Scalar(g, dtypes.Float32, floor)), -1))
	film := n.dense(n.layerNorm(mean, "fusion.ln"), "fusion") // [B, L, 2W]
	scale := graph.SliceAxis(film, -1, graph.AxisRange(0, w))
	shift := graph.SliceAxis(film, -1, graph.AxisRange(w, 2*w))
	return graph.Add(graph.Mul(patch, graph.OnePlus(scale)), shift)
}

// logits applies lm.ln_f and lm_head to hidden states [..., Width].
func (n *netGraph) logits(h *graph.Node) *graph.Node {
	h = n.layerNorm(h, "lm.ln_f")
	return nn.Dense(h, n.p["lm_head.w"], nil, gomlxcompute.DenseLayoutInputOutputs)
}

// maskedLoss is the mean cross-entropy over the loss positions: h [B, L, W],
// lossIdx [Nt] flat positions into B*L, lossTgt [Nt], lossW [Nt] (1 for a
// real target, 0 for padding of the bucket).
func (n *netGraph) maskedLoss(h, lossIdx, lossTgt, lossW *graph.Node) *graph.Node {
	dims := h.Shape().Dimensions
	flat := graph.Reshape(h, dims[0]*dims[1], dims[2])
	sel := graph.Gather(flat, graph.InsertAxes(lossIdx, -1)) // [Nt, W]
	logits := n.logits(sel)                                  // [Nt, V]
	logp := graph.LogSoftmax(logits, -1)
	nll := graph.Neg(graph.ReduceSum(graph.Mul(logp, n.targetDist(lossTgt)), -1))
	den := graph.Max(graph.ReduceAllSum(lossW), graph.Scalar(h.Graph(), dtypes.Float32, 1))
	return graph.Div(graph.ReduceAllSum(graph.Mul(nll, lossW)), den)
}

// targetDist is the training target distribution of each loss position
// [Nt, V]: one-hot, except that with Config.BoxLabelSigma > 0 a box-number
// target (a coarse token, BoxToken0 .. BoxToken0+BoxTokens-1) spreads its
// mass over the neighbouring coarse values with a Gaussian of that sigma
// (in coarse steps), renormalized over the coarse range. A near miss then
// costs less than a far one, which a one-hot target cannot say.
func (n *netGraph) targetDist(lossTgt *graph.Node) *graph.Node {
	c := n.cfg
	oneHot := graph.OneHot(lossTgt, c.VocabSize, dtypes.Float32)
	if c.BoxLabelSigma <= 0 || c.BoxTokens <= 0 {
		return oneHot
	}
	g := lossTgt.Graph()
	nt := lossTgt.Shape().Dimensions[0]
	lo, hi := float64(c.BoxToken0), float64(c.BoxToken0)+float64(c.BoxTokens-1)
	j := graph.Iota(g, shapes.Make(dtypes.Float32, 1, c.VocabSize), 1) // [1, V]
	inRange := func(x *graph.Node) *graph.Node {
		ge := graph.ConvertDType(graph.GreaterOrEqual(x, graph.Scalar(g, dtypes.Float32, lo)), dtypes.Float32)
		le := graph.ConvertDType(graph.LessOrEqual(x, graph.Scalar(g, dtypes.Float32, hi)), dtypes.Float32)
		return graph.Mul(ge, le)
	}
	t := graph.ConvertDType(graph.Reshape(lossTgt, nt, 1), dtypes.Float32) // [Nt, 1]
	d := graph.Sub(j, t)                                                   // [Nt, V]
	gauss := graph.Exp(graph.MulScalar(graph.Square(d), -1/(2*c.BoxLabelSigma*c.BoxLabelSigma)))
	gauss = graph.Mul(gauss, inRange(j))
	gauss = graph.Div(gauss, graph.Max(graph.ReduceAndKeep(gauss, graph.ReduceSum, -1), graph.Scalar(g, dtypes.Float32, 1e-12)))
	isBox := inRange(t) // [Nt, 1]
	return graph.Add(graph.Mul(gauss, isBox), graph.Mul(oneHot, graph.OneMinus(isBox)))
}

// trainStepLayout fixes the order of the train step's inputs and outputs.
//
// Inputs: trainable params (T), their first moments (T), second moments (T),
// frozen params (F), then lr, bc1, bc2 (float32 scalars: learning rate and
// the Adam bias corrections 1/(1-beta^t)), weightDecay, then the batch:
// tokens, patchIdx, isPatch, images (float32, normalized on the host with
// model.NormalizePixels), lossIdx, lossTgt, lossW, patchTgt, patchW,
// patchBox, patchBoxW. Outputs: new params (T), new m (T), new v (T),
// loss, grad norm, ground loss, box loss. The loss is the answer loss; the
// gradient is of the answer loss plus GroundLossWeight times the ground
// loss and BoxLossWeight times the box loss (each zero without its weight).
type trainStepLayout struct {
	cfg       model.Config
	faults    faults
	trainable []paramSpec
	frozen    []paramSpec
	// grounderOnly is compute.ObjectiveGrounder: the language model is
	// not built, and the loss and the objective are the grounder's.
	grounderOnly bool
}

const numBatchInputs = 21

func (s *trainStepLayout) graphFn(inputs []*graph.Node) []*graph.Node {
	nt, nf := len(s.trainable), len(s.frozen)
	g := inputs[0].Graph()
	params := make(map[string]*graph.Node, nt+nf)
	for i, p := range s.trainable {
		params[p.Name] = inputs[i]
	}
	for i, p := range s.frozen {
		params[p.Name] = inputs[3*nt+i]
	}
	at := 3*nt + nf
	lr, bc1, bc2, wd := inputs[at], inputs[at+1], inputs[at+2], inputs[at+3]
	batch := inputs[at+4:]
	tokens, patchIdx, isPatch, images := batch[0], batch[1], batch[2], batch[3]
	lossIdx, lossTgt, lossW := batch[4], batch[5], batch[6]
	patchTgt, patchW := batch[7], batch[8]
	patchBox, patchBoxW := batch[9], batch[10]
	imgFirst, refBox, refW := batch[13], batch[14], batch[15]

	net := &netGraph{cfg: s.cfg, p: params, faults: s.faults, gin: grounderIn{textMask: batch[11], imgRow: batch[12]}}
	if s.grounderOnly {
		// compute.ObjectiveGrounder: the encoder and head alone; the
		// reported loss is theirs.
		net.grounderFeatures(tokens, images)
		grounder := net.fullGrounderLoss(imgFirst, refBox, refW, batch[16:21])
		zero := graph.Scalar(g, dtypes.Float32, 0)
		return s.adamW(inputs, grounder, lr, bc1, bc2, wd, grounder, zero, zero, grounder)
	}
	h, mid := net.hiddenMid(tokens, patchIdx, isPatch, images)
	loss := net.maskedLoss(h, lossIdx, lossTgt, lossW)
	objective, ground := loss, graph.Scalar(g, dtypes.Float32, 0)
	if s.cfg.GroundLossWeight > 0 {
		ground = net.groundLoss(mid, patchTgt, patchW)
		objective = graph.Add(loss, graph.MulScalar(ground, s.cfg.GroundLossWeight))
	}
	box := graph.Scalar(g, dtypes.Float32, 0)
	if s.cfg.BoxLossWeight > 0 {
		box = net.boxLoss(mid, patchBox, patchBoxW)
		objective = graph.Add(objective, graph.MulScalar(box, s.cfg.BoxLossWeight))
	}
	grounder := graph.Scalar(g, dtypes.Float32, 0)
	if s.cfg.Grounder {
		grounder = net.fullGrounderLoss(imgFirst, refBox, refW, batch[16:21])
		objective = graph.Add(objective, graph.MulScalar(grounder, s.cfg.GrounderLossWeight))
	}
	return s.adamW(inputs, objective, lr, bc1, bc2, wd, loss, ground, box, grounder)
}

// adamW ends the train step: the gradient of objective with respect to the
// trainable parameters (inputs[:T]), clipped by its global norm, one AdamW
// update, and the outputs in trainStepLayout's order with the four
// reported losses.
func (s *trainStepLayout) adamW(inputs []*graph.Node, objective, lr, bc1, bc2, wd, loss, ground, box, grounder *graph.Node) []*graph.Node {
	nt := len(s.trainable)
	g := objective.Graph()
	tp := inputs[:nt]
	grads := graph.Gradient(objective, tp...)
	sq := graph.Scalar(g, dtypes.Float32, 0)
	for _, gr := range grads {
		sq = graph.Add(sq, graph.ReduceAllSum(graph.Square(gr)))
	}
	gnorm := graph.Sqrt(sq)
	scale := graph.Min(graph.Scalar(g, dtypes.Float32, 1), graph.Div(graph.Scalar(g, dtypes.Float32, gradClipMax), graph.AddScalar(gnorm, 1e-6)))

	outs := make([]*graph.Node, 0, 3*nt+2)
	newM := make([]*graph.Node, nt)
	newV := make([]*graph.Node, nt)
	newP := make([]*graph.Node, nt)
	for i, p := range s.trainable {
		gr := graph.Mul(grads[i], scale)
		m := graph.Add(graph.MulScalar(inputs[nt+i], adamBeta1), graph.MulScalar(gr, 1-adamBeta1))
		v := graph.Add(graph.MulScalar(inputs[2*nt+i], adamBeta2), graph.MulScalar(graph.Square(gr), 1-adamBeta2))
		upd := graph.Div(graph.Mul(m, bc1), graph.AddScalar(graph.Sqrt(graph.Mul(v, bc2)), adamEps))
		if p.decays() {
			upd = graph.Add(upd, graph.Mul(wd, tp[i]))
		}
		newP[i] = graph.Sub(tp[i], graph.Mul(lr, upd))
		newM[i], newV[i] = m, v
	}
	outs = append(outs, newP...)
	outs = append(outs, newM...)
	outs = append(outs, newV...)
	return append(outs, loss, gnorm, ground, box, grounder)
}

// forwardLogitsFn builds the full-sequence forward used by the parity tests:
// inputs are all params in spec order, then tokens, patchIdx, isPatch and
// float32 normalized images; the output is logits [B, L, V].
func forwardLogitsFn(cfg model.Config, specs []paramSpec) func(inputs []*graph.Node) *graph.Node {
	return func(inputs []*graph.Node) *graph.Node {
		params := make(map[string]*graph.Node, len(specs))
		for i, p := range specs {
			params[p.Name] = inputs[i]
		}
		b := inputs[len(specs):]
		net := &netGraph{cfg: cfg, p: params}
		return net.logits(net.hidden(b[0], b[1], b[2], b[3]))
	}
}
