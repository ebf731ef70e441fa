package model

import (
	"fmt"
	"math"
)

// This file is the tinygrounder v1 architecture, defined once against Ops:
// the forward pass every backend computes, the training losses, and the
// grounding encoder and head (Config documents each option). A backend
// runs it over its own tensors; Config.Params derives the parameters from
// it by running it over shapes.

// Constants of the architecture and its losses.
const (
	// MaskedScore is the additive attention score of a masked key.
	MaskedScore = -1e9
	// FusionScoreClip bounds Config.FusionAttention's scores, so that
	// exp(score) and its running sums stay finite in float32.
	FusionScoreClip = 30
	// The grounder loss's weights (DETR's L1 : GIoU balance).
	GrounderL1Weight   = 5
	GrounderGIoUWeight = 2
)

// Net is the model over one backend's tensors T.
type Net[T any] struct {
	o Ops[T]
	c Config
	// Config.Grounder: its inputs, each image's sentence vector [K,
	// Width] and the image grids [K, G, G, C] the head reads.
	textMask, imgRow T
	sImg, grid       T
	haveGrid         bool
	// images are the images GrounderFeatures read (the name head's input).
	images T
}

// NewNet returns the model of c over o.
func NewNet[T any](o Ops[T], c Config) *Net[T] { return &Net[T]{o: o, c: c} }

// Inputs are a batch's model inputs: tokens [B, L] (integer); patchIdx [B,
// L] (integer: the row of the patch feature each position reads, K*P rows);
// isPatch [B, L] (1 at patch positions); images [K, S, S, 3] normalized
// (NormalizePixels). With Config.Grounder also textMask [B, T] (1 at the
// text before a row's first image, T <= L) and imgRow [K] (integer: the
// batch row of each image).
type Inputs[T any] struct {
	Tokens, PatchIdx, IsPatch, Images T
	TextMask, ImgRow                  T
}

// Labels are a batch's training targets: lossIdx [Nt] (integer: flat
// positions into B*L), lossTgt [Nt] (integer), lossW [Nt]; patchTgt,
// patchW [B, L] (Config.GroundLossWeight); patchBox [B, L, 4], patchBoxW
// [B, L] (Config.BoxLossWeight); imgFirst [B] (integer: each row's first
// image), refBox [B, 4], refW [B], exists, existsW [B], cellIDs [B, P,
// CellWords] (integer), cellIDW [B, P, CellWords], cellW [B, P]
// (Config.Grounder); nameImg [N] (integer: the images that have a name),
// nameIDs [N, GrounderNameSlots] (integer), nameW [N, GrounderNameSlots]
// (Config.GrounderNameSlots).
type Labels[T any] struct {
	LossIdx, LossTgt, LossW T
	PatchTgt, PatchW        T
	PatchBox, PatchBoxW     T
	ImgFirst, RefBox, RefW  T
	Exists, ExistsW         T
	CellIDs, CellIDW, CellW T
	NameImg, NameIDs, NameW T
}

// Losses are a training step's scalars: the objective to minimize, and
// the answer, grounding, box and grounder losses it sums (each 0 where
// the config or the objective leaves it out).
type Losses[T any] struct {
	Objective, Answer, Ground, Box, Grounder T
}

func (n *Net[T]) dense(x T, prefix string, out int) T {
	in := n.last(x)
	return n.o.Dense(x, n.o.Param(prefix+".w", in, out), n.o.Param(prefix+".b", out))
}

func (n *Net[T]) layerNorm(x T, prefix string) T {
	w := n.last(x)
	return n.o.LayerNorm(x, n.o.Param(prefix+".w", w), n.o.Param(prefix+".b", w))
}

func (n *Net[T]) last(x T) int {
	d := n.o.Shape(x)
	return d[len(d)-1]
}

// index is x's element i along axis, the axis dropped.
func (n *Net[T]) index(x T, axis, i int) T {
	d := n.o.Shape(x)
	if axis < 0 {
		axis += len(d)
	}
	out := append(append([]int(nil), d[:axis]...), d[axis+1:]...)
	return n.o.Reshape(n.o.Slice(x, Range{Axis: axis, From: i, To: i + 1}), out...)
}

// part is x's elements [from, to) of its last axis.
func (n *Net[T]) part(x T, from, to int) T {
	return n.o.Slice(x, Range{Axis: len(n.o.Shape(x)) - 1, From: from, To: to})
}

func (n *Net[T]) oneMinus(x T) T { return n.o.Sub(n.o.Scalar(1), x) }

// attention is multi-head self-attention over x [N, T, W]; bias, when not
// nil, is an additive [T, T] mask (0 or MaskedScore) or [N, 1, 1, T] (keys
// masked per sequence).
//
// q, k and v come out of one transpose of qkv to [3, N, H, T, hd], and the
// products take their right-hand sides contracting axis first (k is
// transposed explicitly), the layout GoMLX's Go backend runs fastest.
func (n *Net[T]) attention(x T, prefix string, bias *T, kv *layerCache[T]) T {
	o := n.o
	d := o.Shape(x)
	nb, t, w := d[0], d[1], d[2]
	h := n.c.Heads
	hd := w / h
	qkv := n.dense(x, prefix+".qkv", 3*w)
	qkv = o.Transpose(o.Reshape(qkv, nb, t, 3, h, hd), 2, 0, 3, 1, 4)
	q, k, v := n.index(qkv, 0, 0), n.index(qkv, 0, 1), n.index(qkv, 0, 2)
	tk := t
	if kv != nil { // the keys and values of the positions before these
		if kv.have {
			k, v = o.Concat(2, kv.k, k), o.Concat(2, kv.v, v)
		}
		kv.k, kv.v, kv.have = k, v, true
		tk = o.Shape(k)[2]
	}
	scores := o.Scale(o.MatMulT(q, k), 1/math.Sqrt(float64(hd))) // [N, H, T, Tk]
	if bias != nil {
		if len(o.Shape(*bias)) == 2 {
			scores = o.Add(scores, o.Reshape(*bias, 1, 1, t, tk))
		} else {
			scores = o.Add(scores, *bias)
		}
	}
	probs := o.Softmax(scores)
	if kv != nil && kv.wantAttn {
		// The last position's attention over every key, averaged over heads.
		kv.attn = o.Reshape(o.ReduceMean(o.Slice(probs, Range{Axis: 2, From: t - 1, To: t}), false, 1), nb, tk)
	}
	out := o.MatMul(probs, v) // [N, H, T, hd]
	out = o.Reshape(o.Transpose(out, 0, 2, 1, 3), nb, t, w)
	return n.dense(out, prefix+".out", w)
}

// block is a pre-LN transformer block.
func (n *Net[T]) block(x T, prefix string, bias *T, kv *layerCache[T]) T {
	o := n.o
	w := n.last(x)
	x = o.Add(x, n.attention(n.layerNorm(x, prefix+".ln1"), prefix+".attn", bias, kv))
	hid := o.Gelu(n.dense(n.layerNorm(x, prefix+".ln2"), prefix+".mlp.fc1", n.c.MLPHidden(w)))
	return o.Add(x, n.dense(hid, prefix+".mlp.fc2", w))
}

// conv3x3 is the 3x3 convolution (Ops.Conv3x3) of x [K, S, S, in] with
// kernel prefix.w [3, 3, in, out] (HWIO), zero padding 1 and the given
// stride (1 or 2), plus prefix.b.
func (n *Net[T]) conv3x3(x T, prefix string, out, stride int) T {
	return n.conv3x3Bias(x, prefix, out, stride, false)
}

// conv3x3Bias is conv3x3, with the bias multiplied by zero when normed
// (an instance norm follows and removes it): the function is the same,
// but the bias's gradient is exactly zero instead of rounding noise,
// which Adam turns into full-size steps that differ from one backend's
// summation order to another's (the conformance matrix's demo cell saw
// grounder.conv.0.b move differently on libtorch).
func (n *Net[T]) conv3x3Bias(x T, prefix string, out, stride int, normed bool) T {
	o := n.o
	in := o.Shape(x)[3]
	b := o.Param(prefix+".b", out)
	if normed {
		b = o.Scale(b, 0)
	}
	return o.Conv3x3(x, o.Param(prefix+".w", 3, 3, in, out), b, stride)
}

// vision encodes images [K, S, S, 3] into patch features [K*P,
// VisionWidth] (after vision.ln_f, before the projector).
func (n *Net[T]) vision(images T) T {
	o, c := n.o, n.c
	k := o.Shape(images)[0]
	g, p := c.ImageSize/c.PatchSize, c.PatchSize
	var x T
	if chans := c.StemChannels(); chans != nil {
		x = images
		for i, ch := range chans {
			x = o.Gelu(n.conv3x3(x, fmt.Sprintf("vision.stem.%d", i), ch, 2))
		}
		x = o.Reshape(x, k, g*g, chans[len(chans)-1])
	} else {
		x = o.Reshape(images, k, g, p, g, p, 3)
		x = o.Transpose(x, 0, 1, 3, 2, 4, 5) // [K, gy, gx, py, px, c]
		x = o.Reshape(x, k, g*g, p*p*3)
	}
	x = n.dense(x, "vision.patch_embed", c.VisionWidth)
	x = o.Add(x, o.Reshape(o.Param("vision.pos", g*g, c.VisionWidth), 1, g*g, c.VisionWidth))
	for i := range c.VisionDepth {
		x = n.block(x, fmt.Sprintf("vision.blocks.%d", i), nil, nil)
	}
	x = n.layerNorm(x, "vision.ln_f")
	return o.Reshape(x, k*g*g, c.VisionWidth)
}

// Project is the projector MLP from vision features [..., VisionWidth] to
// the language model's width.
func (n *Net[T]) Project(x T) T {
	w := n.c.Width
	return n.dense(n.o.Gelu(n.dense(x, "projector.fc1", w)), "projector.fc2", w)
}

func (n *Net[T]) embedTokens() T { return n.o.Param("embed.tokens", n.c.VocabSize, n.c.Width) }

// Hidden runs the model up to the last language-model block (before
// lm.ln_f): [B, L, Width], and the hidden state entering the last block
// (where Config.GroundLossWeight's and BoxLossWeight's losses read).
func (n *Net[T]) Hidden(in Inputs[T]) (h, mid T) {
	tok := n.o.Gather(n.embedTokens(), in.Tokens) // [B, L, W]
	var feats T
	if n.c.Grounder {
		feats = n.GrounderFeatures(in)
	} else {
		feats = n.vision(in.Images)
	}
	return n.lm(tok, feats, false, true, in.PatchIdx, in.IsPatch, nil)
}

// Cache is one sequence's state between the inference steps of Step: the
// keys and values of every position so far, and what Config.TextFusion
// and Config.GroundReadout read of them. The zero value is an empty
// sequence.
type Cache[T any] struct {
	// Len is the number of positions so far.
	Len int
	// Feats are the sequence's image features, ImageFeatures' rows of
	// all its images in order; HaveFeats is false for a text-only
	// sequence.
	Feats     T
	HaveFeats bool
	// WantAttn asks Step for Attn: per language-model block, the last new
	// position's attention over all positions so far, averaged over the
	// heads ([1, Len]).
	WantAttn bool
	Attn     []T

	layers []layerCache[T]
	// Config.TextFusion: every position's weighted token embedding
	// [1, Len, W] and weight [1, Len].
	fuseTok, fuseW T
	// Config.GroundReadout: every position's grounding logit [1, Len],
	// "ground.ln" state [1, Len, W], image (feature row / Patches()) and
	// patch flag [1, Len].
	gz, gNormed, gImg, gPatch T
	have                      bool
}

// Live returns the tensors c holds from one Step to the next (the image
// features, each block's keys and values, the fusion and readout state):
// an engine that allocates per operation may free every other tensor a
// Step made once it has read the logits and Attn. Entries for state the
// config does not use are T's zero value.
func (c *Cache[T]) Live() []T {
	var out []T
	if c.HaveFeats {
		out = append(out, c.Feats)
	}
	for _, l := range c.layers {
		if l.have {
			out = append(out, l.k, l.v)
		}
	}
	if c.have {
		out = append(out, c.fuseTok, c.fuseW, c.gz, c.gNormed, c.gImg, c.gPatch)
	}
	return out
}

// MapLive replaces every tensor Live returns with f of it (f receives
// T's zero value for state the config does not use): an engine that
// computes each Step in a graph of its own carries the cache from one
// graph into the next with it, the values read back and fed in again.
func (c *Cache[T]) MapLive(f func(T) T) {
	if c.HaveFeats {
		c.Feats = f(c.Feats)
	}
	for i := range c.layers {
		if l := &c.layers[i]; l.have {
			l.k, l.v = f(l.k), f(l.v)
		}
	}
	if c.have {
		c.fuseTok, c.fuseW = f(c.fuseTok), f(c.fuseW)
		c.gz, c.gNormed, c.gImg, c.gPatch = f(c.gz), f(c.gNormed), f(c.gImg), f(c.gPatch)
	}
}

type layerCache[T any] struct {
	k, v     T // [1, H, Len, hd]
	have     bool
	wantAttn bool
	attn     T
}

// ImageFeatures encodes images [K, S, S, 3] (not with Config.Grounder:
// its features depend on the text, see Grounder) into the rows
// [K*Patches(), ...] a Cache's Feats holds: projected to the language
// model's width, or with Config.TextFusion not yet (each position projects
// its own modulated row).
func (n *Net[T]) ImageFeatures(images T) T {
	f := n.vision(images)
	if n.c.TextFusion {
		return f
	}
	return n.Project(f)
}

// Step runs the new positions of one sequence, tokens, patchIdx (the
// feature row each reads, among c.Feats) and isPatch [1, R], through the
// language model after the c.Len positions c holds, extends c, and
// returns the logits of the last new position [1, VocabSize].
func (n *Net[T]) Step(c *Cache[T], tokens, patchIdx, isPatch T) T {
	o := n.o
	if len(c.layers) != n.c.Depth {
		c.layers = make([]layerCache[T], n.c.Depth)
	}
	for i := range c.layers {
		c.layers[i].wantAttn = c.WantAttn
	}
	tok := o.Gather(n.embedTokens(), tokens)
	h, _ := n.lm(tok, c.Feats, true, c.HaveFeats, patchIdx, isPatch, c)
	r := o.Shape(tokens)[1]
	c.Len += r
	c.Attn = c.Attn[:0]
	if c.WantAttn {
		for i := range c.layers {
			c.Attn = append(c.Attn, c.layers[i].attn)
		}
	}
	d := o.Shape(h)
	return n.Logits(o.Reshape(o.Slice(h, Range{Axis: 1, From: r - 1, To: r}), 1, d[2]))
}

// causal is the [t, tk] mask of t new positions after tk-t earlier ones:
// 1 where the key comes no later than the query.
func (n *Net[T]) causal(t, tk int) T {
	o := n.o
	if t == tk {
		return o.LowerTri(t)
	}
	return o.GreaterEq(o.Shift(o.Iota(0, t, tk), float64(tk-t)), o.Iota(1, t, tk))
}

// lm is the language model over token embeddings tok [B, T, W] and image
// features feats (ImageFeatures' rows, already projected with projected),
// read at the patch positions (isPatch [B, T], row patchIdx [B, T]); with
// c, after the positions c holds (B is 1). It returns the hidden state
// after the last block and the one entering it.
func (n *Net[T]) lm(tok, feats T, projected, haveFeats bool, patchIdx, isPatch T, c *Cache[T]) (h, mid T) {
	o, cf := n.o, n.c
	l := o.Shape(tok)[1]
	past := 0
	if c != nil {
		past = c.Len
	}
	var patch T // [B, T, W]
	switch {
	case !haveFeats:
		patch = o.ZerosLike(tok)
	case cf.TextFusion:
		// Modulated per position, so projected per position.
		patch = n.Project(n.fuse(o.Gather(feats, patchIdx), tok, isPatch, c))
	case projected:
		patch = o.Gather(feats, patchIdx)
	default:
		patch = o.Gather(n.Project(feats), patchIdx)
	}
	m := o.Reshape(isPatch, append(o.Shape(isPatch), 1)...)
	x := o.Add(o.Mul(tok, n.oneMinus(m)), o.Mul(patch, m))
	pos := o.Reshape(o.Slice(o.Param("embed.pos", cf.MaxSeq, cf.Width), Range{Axis: 0, From: past, To: past + l}), 1, l, cf.Width)
	if cf.PatchPositions {
		// The k-th patch of its image (its feature row mod Patches())
		// takes embed.patch_pos[k] instead of its sequence position's.
		np := o.Scalar(float64(cf.Patches()))
		pf := o.ToFloat(patchIdx)
		k := o.ToInt(o.Sub(pf, o.Mul(o.Floor(o.Div(pf, np)), np)))
		pp := o.Gather(o.Param("embed.patch_pos", cf.Patches(), cf.Width), k) // [B, T, W]
		x = o.Add(x, o.Add(o.Mul(pos, n.oneMinus(m)), o.Mul(pp, m)))
	} else {
		x = o.Add(x, pos)
	}
	bias := o.Scale(o.Shift(n.causal(l, past+l), -1), -MaskedScore) // 0 where the key may be read
	for i := range cf.Depth {
		if i == cf.Depth-1 {
			mid = x
			if cf.GroundReadout {
				x = o.Add(x, n.readout(mid, patchIdx, isPatch, c))
			}
		}
		var kv *layerCache[T]
		if c != nil {
			kv = &c.layers[i]
		}
		x = n.block(x, fmt.Sprintf("lm.blocks.%d", i), &bias, kv)
	}
	if c != nil {
		c.have = true
	}
	return x, mid
}

// groundLogits is the grounding head: dense(ground.ln(mid)) [B, L], and
// the normalized states it reads [B, L, W].
func (n *Net[T]) groundLogits(mid T) (z, normed T) {
	normed = n.layerNorm(mid, "ground.ln")
	return n.index(n.dense(normed, "ground", 1), -1, 0), normed
}

// readout is Config.GroundReadout's term for the hidden state entering the
// last block, mid [B, L, W]: at every text position t, the "ground.ln"
// states of the patches of the image whose last patch comes latest before
// t, weighted by the softmax of their grounding logits, through "readout"
// (zeros where no image comes before t and at patch positions). A patch's
// image is its feature row (patchIdx [B, L]) divided by Patches().
func (n *Net[T]) readout(mid, patchIdx, isPatch T, c *Cache[T]) T {
	o := n.o
	d := o.Shape(mid)
	b, l, w := d[0], d[1], d[2]
	z, normed := n.groundLogits(mid)
	img := o.Floor(o.Div(o.ToFloat(patchIdx), o.Scalar(float64(n.c.Patches())))) // [B, T]
	patches := isPatch                                                           // of the keys
	lk, past := l, 0
	if c != nil { // the keys are every position so far
		if c.have {
			past = o.Shape(c.gz)[1]
			z, normed = o.Concat(1, c.gz, z), o.Concat(1, c.gNormed, normed)
			img, patches = o.Concat(1, c.gImg, img), o.Concat(1, c.gPatch, isPatch)
		}
		c.gz, c.gNormed, c.gImg, c.gPatch = z, normed, img, patches
		lk = past + l
	}
	var before T // [t, p]: 1 where p < t
	if c == nil {
		before = o.Greater(o.Iota(0, l, l), o.Iota(1, l, l))
	} else {
		before = o.Greater(o.Shift(o.Iota(0, l, lk), float64(past)), o.Iota(1, l, lk))
	}
	patchAt := o.Reshape(patches, b, 1, lk) // over p
	cand := o.Mul(o.Reshape(before, 1, l, lk), patchAt)
	// The latest patch position before t (-1 for none), then its image.
	posP := o.Iota(2, 1, 1, lk)
	last := o.ReduceMax(o.Shift(o.Mul(cand, o.Shift(posP, 1)), -1), false, -1) // [B, T]
	isLast := o.Equal(posP, o.Reshape(last, b, l, 1))                          // [B, T, Lk]
	lastImg := o.ReduceSum(o.Mul(isLast, o.Reshape(img, b, 1, lk)), false, -1) // [B, T]
	sameImg := o.Equal(o.Reshape(img, b, 1, lk), o.Reshape(lastImg, b, l, 1))  // [B, T, Lk]
	textAt := o.Reshape(n.oneMinus(isPatch), b, l, 1)                          // over t
	valid := o.Mul(o.Mul(cand, sameImg), textAt)
	scores := o.Add(o.Reshape(o.StopGradient(z), b, 1, lk), o.Scale(n.oneMinus(valid), MaskedScore))
	scores = o.Sub(scores, o.StopGradient(o.ReduceMax(scores, true, -1)))
	e := o.Mul(o.Exp(scores), valid)
	// A row with a valid patch sums to at least 1 (its largest term is
	// exp(0)); rows without one sum to 0, and the floor of 1 keeps their
	// gradient finite (a tiny floor squares to zero in float32).
	den := o.Max(o.ReduceSum(e, true, -1), o.Scalar(1))
	pooled := o.Einsum("btp,bpw->btw", o.Div(e, den), normed)
	return o.Dense(pooled, o.Param("readout.w", w, w))
}

// GroundLoss is Config.GroundLossWeight's loss: the mean binary
// cross-entropy, over the labelled patch positions (patchW [B, L] 1 there),
// of the logit dense(ln(mid)) against the covered fraction patchTgt [B, L].
// Zero when no position is labelled.
func (n *Net[T]) GroundLoss(mid, patchTgt, patchW T) T {
	o := n.o
	z, _ := n.groundLogits(mid)
	bce := n.bceWithLogits(z, patchTgt)
	den := o.Max(o.ReduceSum(patchW, false), o.Scalar(1))
	return o.Div(o.ReduceSum(o.Mul(bce, patchW), false), den)
}

// bceWithLogits is the binary cross-entropy of logits z against targets
// t, stably: max(z, 0) - z*t + log(1 + exp(-|z|)).
func (n *Net[T]) bceWithLogits(z, t T) T {
	o := n.o
	return o.Add(o.Sub(o.Max(z, o.ZerosLike(z)), o.Mul(z, t)), o.Log1P(o.Exp(o.Neg(o.Abs(z)))))
}

// BoxLoss is Config.BoxLossWeight's loss: the mean, weighted by patchBoxW
// [B, L] (the covered fraction of a patch of the referent, 0 elsewhere),
// of the L1 distance summed over the four coordinates between
// dense(ln(mid)) [B, L, 4] and the referent's box patchBox [B, L, 4].
// Zero when no position is weighted.
func (n *Net[T]) BoxLoss(mid, patchBox, patchBoxW T) T {
	o := n.o
	z := n.dense(n.layerNorm(mid, "box.ln"), "box", 4)
	l1 := o.ReduceSum(o.Abs(o.Sub(z, patchBox)), false, -1)
	den := o.Max(o.ReduceSum(patchBoxW, false), o.Scalar(1e-6))
	return o.Div(o.ReduceSum(o.Mul(l1, patchBoxW), false), den)
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
func (n *Net[T]) fuse(patch, tok, isPatch T, c *Cache[T]) T {
	o, cf := n.o, n.c
	d := o.Shape(tok)
	l, vw := d[1], cf.VisionWidth
	weight := n.oneMinus(isPatch) // [B, T]: 1 at text positions
	floor := 1.0                  // of the weight sum: no text yet gives zeros
	if cf.FusionAttention {
		score := o.Einsum("blw,w->bl", tok, o.Param("fusion.query", cf.Width))
		weight = o.Mul(weight, o.Exp(o.Clip(score, -FusionScoreClip, FusionScoreClip)))
		floor = 1e-30
	}
	tokW := o.Mul(tok, o.Reshape(weight, d[0], l, 1))
	lk := l
	if c != nil { // every position so far
		if c.have {
			tokW, weight = o.Concat(1, c.fuseTok, tokW), o.Concat(1, c.fuseW, weight)
		}
		c.fuseTok, c.fuseW = tokW, weight
		lk = o.Shape(weight)[1]
	}
	tri := n.causal(l, lk) // [T, Tk]: row i sums the keys up to it
	sum := o.Einsum("ij,bjw->biw", tri, tokW)
	count := o.Einsum("ij,bj->bi", tri, weight)
	mean := o.Div(sum, o.Reshape(o.Max(count, o.Scalar(floor)), d[0], l, 1))
	film := n.dense(n.layerNorm(mean, "fusion.ln"), "fusion", 2*vw) // [B, T, 2W]
	scale, shift := n.part(film, 0, vw), n.part(film, vw, 2*vw)
	return o.Add(o.Mul(patch, o.Shift(scale, 1)), shift)
}

// Logits applies lm.ln_f and lm_head to hidden states [..., Width].
func (n *Net[T]) Logits(h T) T {
	return n.o.Dense(n.layerNorm(h, "lm.ln_f"), n.o.Param("lm_head.w", n.c.Width, n.c.VocabSize))
}

// Forward is the logits [B, L, VocabSize] of every position.
func (n *Net[T]) Forward(in Inputs[T]) T {
	h, _ := n.Hidden(in)
	return n.Logits(h)
}

// maskedLoss is the mean cross-entropy over the loss positions: h [B, L,
// W], lossIdx [Nt] flat positions into B*L, lossTgt [Nt], lossW [Nt] (1
// for a real target, 0 for padding).
func (n *Net[T]) maskedLoss(h, lossIdx, lossTgt, lossW T) T {
	o := n.o
	d := o.Shape(h)
	sel := o.Gather(o.Reshape(h, d[0]*d[1], d[2]), lossIdx) // [Nt, W]
	logp := o.LogSoftmax(n.Logits(sel))                     // [Nt, V]
	nll := o.Neg(o.ReduceSum(o.Mul(logp, n.TargetDist(lossTgt)), false, -1))
	den := o.Max(o.ReduceSum(lossW, false), o.Scalar(1))
	return o.Div(o.ReduceSum(o.Mul(nll, lossW), false), den)
}

// TargetDist is the training target distribution of each loss position
// [Nt, V]: one-hot, except that with Config.BoxLabelSigma > 0 a box-number
// target (a coarse token, BoxToken0 .. BoxToken0+BoxTokens-1) spreads its
// mass over the neighbouring coarse values with a Gaussian of that sigma
// (in coarse steps), renormalized over the coarse range. A near miss then
// costs less than a far one, which a one-hot target cannot say.
func (n *Net[T]) TargetDist(lossTgt T) T {
	o, c := n.o, n.c
	oneHot := o.OneHot(lossTgt, c.VocabSize)
	if c.BoxLabelSigma <= 0 || c.BoxTokens <= 0 {
		return oneHot
	}
	nt := o.Shape(lossTgt)[0]
	lo, hi := o.Scalar(float64(c.BoxToken0)), o.Scalar(float64(c.BoxToken0)+float64(c.BoxTokens-1))
	j := o.Iota(1, 1, c.VocabSize) // [1, V]
	inRange := func(x T) T { return o.Mul(o.GreaterEq(x, lo), o.LessEq(x, hi)) }
	t := o.Reshape(o.ToFloat(lossTgt), nt, 1) // [Nt, 1]
	gauss := o.Exp(o.Scale(o.Square(o.Sub(j, t)), -1/(2*c.BoxLabelSigma*c.BoxLabelSigma)))
	gauss = o.Mul(gauss, inRange(j))
	gauss = o.Div(gauss, o.Max(o.ReduceSum(gauss, true, -1), o.Scalar(1e-12)))
	isBox := inRange(t) // [Nt, 1]
	return o.Add(o.Mul(gauss, isBox), o.Mul(oneHot, n.oneMinus(isBox)))
}

// TrainLosses is one training step's losses. With grounderOnly
// (compute.ObjectiveGrounder) the language model is not run: the
// objective is the grounder's loss alone.
func (n *Net[T]) TrainLosses(in Inputs[T], lb Labels[T], grounderOnly bool) Losses[T] {
	o, c := n.o, n.c
	zero := o.Scalar(0)
	if grounderOnly {
		n.GrounderFeatures(in)
		g := n.grounderLoss(lb)
		return Losses[T]{Objective: g, Answer: g, Ground: zero, Box: zero, Grounder: g}
	}
	h, mid := n.Hidden(in)
	ls := Losses[T]{Answer: n.maskedLoss(h, lb.LossIdx, lb.LossTgt, lb.LossW), Ground: zero, Box: zero, Grounder: zero}
	ls.Objective = ls.Answer
	if c.GroundLossWeight > 0 {
		ls.Ground = n.GroundLoss(mid, lb.PatchTgt, lb.PatchW)
		ls.Objective = o.Add(ls.Objective, o.Scale(ls.Ground, c.GroundLossWeight))
	}
	if c.BoxLossWeight > 0 {
		ls.Box = n.BoxLoss(mid, lb.PatchBox, lb.PatchBoxW)
		ls.Objective = o.Add(ls.Objective, o.Scale(ls.Box, c.BoxLossWeight))
	}
	if c.Grounder {
		ls.Grounder = n.grounderLoss(lb)
		ls.Objective = o.Add(ls.Objective, o.Scale(ls.Grounder, c.GrounderLossWeight))
	}
	return ls
}
