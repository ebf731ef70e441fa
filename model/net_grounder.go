package model

import (
	"fmt"
	"math"
)

// Config.Grounder's part of the definition: the sentence vector, the
// CoordConv tower with FiLM, the pointer-and-box head and its losses.

// sentence is the sentence vector [B, Width] of each row: the text
// positions textMask [B, T] marks, embedded, through one bidirectional
// block over them and GrounderQueries attention pools. Only the first T
// positions of tokens [B, L] are read: the marked text comes first, and an
// unmarked position takes no part (its key is masked and it is not
// pooled), so T only has to cover the longest marked text.
func (n *Net[T]) sentence(tokens, textMask T) T {
	o, c := n.o, n.c
	l := o.Shape(textMask)[1]
	tokens = o.Slice(tokens, Range{Axis: 1, From: 0, To: l})
	b, w := o.Shape(tokens)[0], c.Width
	x := o.Gather(n.embedTokens(), tokens) // [B, L, W]
	if c.GrounderTextGRU {
		hf := n.gru(x, textMask, "grounder.text.gru.fwd", w, false)
		hb := n.gru(x, textMask, "grounder.text.gru.bwd", w, true)
		return n.layerNorm(n.dense(o.Concat(-1, hf, hb), "grounder.text.gru.proj", w), "grounder.text.ln")
	}
	x = o.Add(x, o.Reshape(o.Slice(o.Param("grounder.text.pos", c.MaxSeq, w), Range{Axis: 0, From: 0, To: l}), 1, l, w))
	off := o.Scale(n.oneMinus(textMask), MaskedScore) // [B, L]: 0 on text
	bias := o.Reshape(off, b, 1, 1, l)
	x = n.block(x, "grounder.text.block", &bias, nil)
	for i := range c.GrounderTextDepth {
		x = n.block(x, fmt.Sprintf("grounder.text.blocks.%d", i), &bias, nil)
	}
	scores := o.Einsum("blw,qw->bql", x, o.Param("grounder.text.query", c.GrounderQueries, w))
	scores = o.Add(o.Scale(scores, 1/math.Sqrt(float64(w))), o.Reshape(off, b, 1, l))
	pooled := o.Einsum("bql,blw->bqw", o.Softmax(scores), x)
	pooled = o.Reshape(pooled, b, c.GrounderQueries*w)
	return n.layerNorm(n.dense(pooled, "grounder.text.proj", w), "grounder.text.ln")
}

// sigmoid is 1/(1+exp(-x)), its argument clipped to ±30 so that exp
// stays finite (and its gradient a number) in every dtype that trains.
func (n *Net[T]) sigmoid(x T) T {
	o := n.o
	return o.Div(o.Scalar(1), o.Shift(o.Exp(o.Neg(o.Clip(x, -30, 30))), 1))
}

// tanh is 2 sigmoid(2x) - 1.
func (n *Net[T]) tanh(x T) T { return n.o.Shift(n.o.Scale(n.sigmoid(n.o.Scale(x, 2)), 2), -1) }

// gru runs a GRU of width h (prefix's parameters: the input's gates
// ".x.w", ".x.b" [W, 3h], the state's ".h.w", ".h.b" [h, 3h], gates in
// the order update, reset, candidate) over x [B, L, W], forward or
// backward, and returns its last state [B, h]. A position that mask [B, L]
// leaves 0 does not change the state, so that the backward pass starts at
// each row's last marked position and the forward one ends there (the
// marked positions come first). A backend that implements RecurrentOps
// runs it as one operation.
func (n *Net[T]) gru(x, mask T, prefix string, h int, backward bool) T {
	o := n.o
	d := o.Shape(x)
	b, l := d[0], d[1]
	wx, bx := o.Param(prefix+".x.w", n.last(x), 3*h), o.Param(prefix+".x.b", 3*h)
	uw, ub := o.Param(prefix+".h.w", h, 3*h), o.Param(prefix+".h.b", 3*h)
	if r, ok := o.(RecurrentOps[T]); ok {
		return r.GRU(x, mask, wx, bx, uw, ub, backward)
	}
	in := o.Dense(x, wx, bx)                              // every position's input gates at once
	state := o.ZerosLike(n.index(n.part(in, 0, h), 1, 0)) // [B, h]
	for i := range l {
		t := i
		if backward {
			t = l - 1 - i
		}
		xt := n.index(in, 1, t)                                        // [B, 3h]
		ht := o.Dense(state, uw, ub)                                   // [B, 3h]
		zr := n.sigmoid(o.Add(n.part(xt, 0, 2*h), n.part(ht, 0, 2*h))) // both gates in one
		z, r := n.part(zr, 0, h), n.part(zr, h, 2*h)
		cand := n.tanh(o.Add(n.part(xt, 2*h, 3*h), o.Mul(r, n.part(ht, 2*h, 3*h))))
		next := o.Add(cand, o.Mul(z, o.Sub(state, cand)))
		m := o.Reshape(n.index(mask, 1, t), b, 1)
		state = o.Add(state, o.Mul(m, o.Sub(next, state)))
	}
	return state
}

// instanceNorm normalizes x [K, S, S, C] per image and channel over the
// S*S cells to zero mean and unit variance.
func (n *Net[T]) instanceNorm(x T) T {
	o := n.o
	xc := o.Sub(x, o.ReduceMean(x, true, 1, 2))
	v := o.ReduceMean(o.Square(xc), true, 1, 2)
	return o.Div(xc, o.Sqrt(o.Shift(v, LayerNormEps)))
}

// coordChannels is [k, s, s, 2]: each cell's centre x and y in -1..1.
func (n *Net[T]) coordChannels(k, s int) T {
	o := n.o
	norm := func(v T) T { return o.Shift(o.Scale(v, 2/float64(s)), 1/float64(s)-1) }
	return o.Concat(-1, norm(o.Iota(2, k, s, s, 1)), norm(o.Iota(1, k, s, s, 1)))
}

// tower is the CoordConv tower over images [K, S, S, 3], each modulated by
// its row's sentence vector sImg [K, Width]; it returns the grid [K, G, G,
// VisionWidth].
func (n *Net[T]) tower(images, sImg T) T {
	o, c := n.o, n.c
	d := o.Shape(images)
	k, half := d[0], d[1]/2
	strides, chans := c.GrounderConvs()
	x := o.Reshape(images, k, half, 2, half, 2, 3)
	x = o.Reshape(o.Transpose(x, 0, 1, 3, 2, 4, 5), k, half, half, 12) // 2x2 space to depth
	for i, stride := range strides {
		s := o.Shape(x)[1]
		in := o.Concat(-1, x, n.coordChannels(k, s))
		// Config.GrounderNorm's instance norm, not a per-cell norm over
		// channels: that wiped out how strongly a cell responds (object or
		// background); on the scene probe it did no better than none
		// (Acc@0.5 0.207 against 0.252), where the instance norm did
		// (docs/experiments.md).
		y := n.conv3x3Bias(in, fmt.Sprintf("grounder.conv.%d", i), chans[i], stride, c.GrounderNorm)
		if c.GrounderNorm {
			y = n.instanceNorm(y)
		}
		film := n.dense(sImg, fmt.Sprintf("grounder.film.%d", i), 2*chans[i]) // [K, 2C]
		scale := o.Reshape(n.part(film, 0, chans[i]), k, 1, 1, chans[i])
		shift := o.Reshape(n.part(film, chans[i], 2*chans[i]), k, 1, 1, chans[i])
		y = o.Gelu(o.Add(o.Mul(y, o.Shift(scale, 1)), shift))
		if stride == 1 && o.Shape(x)[3] == chans[i] {
			y = o.Add(x, y)
		}
		x = y
	}
	if c.GrounderGridDepth > 0 {
		dd := o.Shape(x)
		s, ch := dd[1], dd[3]
		x = o.Reshape(x, k, s*s, ch)
		for i := range c.GrounderGridDepth {
			x = n.block(x, fmt.Sprintf("grounder.grid.blocks.%d", i), nil, nil)
		}
		x = o.Reshape(x, k, s, s, ch)
	}
	return x
}

// GrounderFeatures runs the sentence encoder and the tower over in
// (Tokens, TextMask, ImgRow, Images), keeps the grids for the head, and
// returns the patch features [K*P, VisionWidth] the language model reads
// (after vision.ln_f, before the projector).
func (n *Net[T]) GrounderFeatures(in Inputs[T]) T {
	o, c := n.o, n.c
	n.textMask, n.imgRow, n.images = in.TextMask, in.ImgRow, in.Images
	n.sImg = o.Gather(n.sentence(in.Tokens, in.TextMask), in.ImgRow)
	n.grid = n.tower(in.Images, n.sImg)
	n.haveGrid = true
	k := o.Shape(in.Images)[0]
	return n.layerNorm(o.Reshape(n.grid, k*c.Patches(), c.VisionWidth), "vision.ln_f")
}

// Head is the pointer-and-box head over the grids GrounderFeatures left:
// pointer logits [K, P] and each cell's box [K, P, 4] (x1, y1, x2, y2 in
// the padded square, the cell's centre minus and plus the predicted
// distances).
func (n *Net[T]) Head() (logits, boxes T) {
	if !n.haveGrid {
		panic("model: Net.Head before GrounderFeatures")
	}
	o, c := n.o, n.c
	d := o.Shape(n.grid)
	k, s, ch := d[0], d[1], d[3]
	x := o.Concat(-1, n.grid, n.coordChannels(k, s))
	x = n.dense(o.Gelu(n.dense(x, "grounder.head.fc1", c.VisionWidth)), "grounder.head.out", 5) // [K, G, G, 5]
	x = o.Reshape(x, k, s*s, 5)
	logits = n.index(x, -1, 0)
	// Matching: each cell's key against the sentence's query, so that a
	// cell scores by how well what it shows matches the words.
	q := o.Dense(n.sImg, o.Param("grounder.match.q.w", c.Width, c.VisionWidth))                     // [K, D]
	key := o.Dense(o.Reshape(n.grid, k, s*s, ch), o.Param("grounder.match.k.w", ch, c.VisionWidth)) // [K, P, D]
	logits = o.Add(logits, o.Scale(o.Einsum("kpd,kd->kp", key, q), 1/math.Sqrt(float64(c.VisionWidth))))
	// l, t, r, b: a cell's width times exp(z), FCOS style (one cell each
	// side at initialization), clipped to stay finite.
	dist := o.Scale(o.Exp(o.Clip(n.part(x, 1, 5), -4, 3)), 1/float64(s))
	centre := o.Reshape(o.Scale(o.Shift(n.coordChannels(1, s), 1), 0.5), 1, s*s, 2) // 0..1
	cx, cy := n.part(centre, 0, 1), n.part(centre, 1, 2)
	side := func(i int) T { return n.part(dist, i, i+1) }
	boxes = o.Concat(-1, o.Sub(cx, side(0)), o.Sub(cy, side(1)), o.Add(cx, side(2)), o.Add(cy, side(3)))
	return logits, boxes
}

// Grounder is the inference half of Config.Grounder for in: the projected
// patch features [K*P, Width] the language model reads, the head's
// pointer logits [K, P] and boxes [K, P, 4], and with
// Config.GrounderNameSlots the name head's logits [K, GrounderNameSlots,
// VocabSize] (the zero T without it).
func (n *Net[T]) Grounder(in Inputs[T]) (feats, logits, boxes, names T) {
	feats = n.Project(n.GrounderFeatures(in))
	logits, boxes = n.Head()
	if n.c.GrounderNameSlots > 0 {
		names = n.NameLogits(in.Images)
	}
	return feats, logits, boxes, names
}

// NameLogits is Config.GrounderNameSlots' name head over images [K, S, S,
// 3]: for each image, a distribution over the vocabulary for each of the
// words (slots) that name the object at its centre, <eos> after the last
// word; logits [K, GrounderNameSlots, VocabSize]. Each slot reads the word
// the slot before it picked (the most likely one that NameTokens may
// pick), so that the logits of every slot are those of the name
// NameTokens decodes from them.
//
// It reads the pixels through convolutions of its own
// ("grounder.name.conv.<i>": the pixels folded 2x2 as the tower folds
// them, then a stride-2, a stride-1, a stride-2 and a stride-1
// convolution, coordinate channels beside each input, GELU after each, no
// normalization and no FiLM), not the tower's cells: those are modulated
// by the sentence and normalized per image and channel, so a crop that its
// object fills (nearly one colour) reaches them as almost nothing
// (docs/experiments.md, the name head of 2026-12-07). The cells are pooled
// two ways, by a learned softmax over positions ("grounder.name.pool":
// where the central object sits) and by their maximum (the strongest
// local evidence of a shape or texture anywhere), then "grounder.name.ln"
// and "grounder.name.fc1" with GELU give the image's vector (nameFeatures)
// and nameSlot each slot's word.
func (n *Net[T]) NameLogits(images T) T {
	o, c := n.o, n.c
	h := n.nameFeatures(images)
	k, slots, w := o.Shape(h)[0], c.GrounderNameSlots, c.Width
	z, prev := n.nameStart(h)
	out := make([]T, slots)
	for s := range slots {
		lg := n.nameSlot(n.part(z, s*w, (s+1)*w), prev)
		out[s] = o.Reshape(lg, k, 1, c.VocabSize)
		if s+1 < slots {
			// The word NameTokens picks here: the largest logit among the
			// tokens a name may hold at slot s.
			masked := o.Add(lg, n.nameMask(s))
			pick := o.Equal(masked, o.ReduceMax(masked, true, -1)) // [K, V], one 1
			prev = o.Dense(pick, n.nameVocab())
		}
	}
	return o.Concat(1, out...)
}

// nameFeatures is the name head's vector of each image [K, Width].
func (n *Net[T]) nameFeatures(images T) T {
	o, c := n.o, n.c
	d := o.Shape(images)
	k, half := d[0], d[1]/2
	x := o.Reshape(images, k, half, 2, half, 2, 3)
	x = o.Reshape(o.Transpose(x, 0, 1, 3, 2, 4, 5), k, half, half, 12)
	for i, cv := range nameConvs(c) {
		s := o.Shape(x)[1]
		x = o.Gelu(n.conv3x3Bias(o.Concat(-1, x, n.coordChannels(k, s)), fmt.Sprintf("grounder.name.conv.%d", i), cv.ch, cv.stride, false))
	}
	d = o.Shape(x)
	p, ch := d[1]*d[2], d[3]
	x = o.Reshape(x, k, p, ch)
	w := o.Reshape(o.Softmax(o.Reshape(o.Param("grounder.name.pool", p), 1, p)), 1, p, 1)
	pooled := o.Concat(-1, o.ReduceSum(o.Mul(x, w), false, 1), o.ReduceMax(x, false, 1)) // [K, 2C]
	return o.Gelu(n.dense(n.layerNorm(pooled, "grounder.name.ln"), "grounder.name.fc1", c.Width))
}

// nameStart is what every slot of the images whose vectors h [N, Width]
// holds starts from: z [N, Slots*Width], each slot's part of
// "grounder.name.out", and the first slot's word before it [N, Width],
// "grounder.name.start".
func (n *Net[T]) nameStart(h T) (z, start T) {
	o, c := n.o, n.c
	z = n.dense(h, "grounder.name.out", c.GrounderNameSlots*c.Width)
	start = o.Add(o.ZerosLike(h), o.Reshape(o.Param("grounder.name.start", c.Width), 1, c.Width))
	return z, start
}

// nameSlot is one slot's logits [N, VocabSize] from the slot's part of
// "grounder.name.out" (z [N, Width]) and the vector of the word before it
// (prev [N, Width]: "grounder.name.start" for the first slot, the word's
// row of "grounder.name.vocab" after it): their sum through
// "grounder.name.prev", a residual GELU layer "grounder.name.mix", then
// the scores against "grounder.name.vocab" (the head's own word vectors:
// not the token embeddings, which stage 1 leaves small and the language
// model owns) plus a bias per word.
func (n *Net[T]) nameSlot(z, prev T) T {
	o, c := n.o, n.c
	u := o.Add(z, n.dense(prev, "grounder.name.prev", c.Width))
	u = o.Add(u, n.dense(o.Gelu(u), "grounder.name.mix", c.Width))
	lg := o.Einsum("nw,vw->nv", u, n.nameVocab())
	return o.Add(lg, o.Reshape(o.Param("grounder.name.vocab.b", c.VocabSize), 1, c.VocabSize))
}

func (n *Net[T]) nameVocab() T { return n.o.Param("grounder.name.vocab.w", n.c.VocabSize, n.c.Width) }

// nameMask is 0 at the tokens a name's slot s may pick (NameToken, and
// <eos> after the first slot) and -1e9 elsewhere, [1, VocabSize].
func (n *Net[T]) nameMask(s int) T {
	o := n.o
	j := o.Iota(1, 1, n.c.VocabSize)
	at := func(v int32) T { return o.Scalar(float64(v)) }
	ok := o.Max(o.GreaterEq(j, at(tokWord0)), o.Mul(o.GreaterEq(j, at(tokFine0)), o.LessEq(j, at(tokFine0+9))))
	ok = o.Max(ok, o.Equal(j, at(tokCap)))
	if s > 0 {
		ok = o.Max(ok, o.Equal(j, at(tokEOS)))
	}
	return o.Scale(n.oneMinus(ok), -1e9)
}

// NameToken reports whether a name's words may hold token id: vocabulary
// words, lone digits and <cap>; not byte pieces (a name spelled byte by
// byte does not fit the slots, and a byte alone need not be text), box
// numbers, markers or <eos>.
func NameToken(id int32) bool {
	return id >= tokWord0 || id >= tokFine0 && id < tokFine0+10 || id == tokCap
}

type nameConv struct{ ch, stride int }

// nameConvs are the name head's convolutions: half the tower's width at a
// quarter of the image's side (two), then the full width at an eighth
// (two).
func nameConvs(c Config) []nameConv {
	return []nameConv{{c.VisionWidth / 2, 2}, {c.VisionWidth / 2, 1}, {c.VisionWidth, 2}, {c.VisionWidth, 1}}
}

// NameLossWeight scales nameLoss in grounderLoss. The name head shares no
// parameter with the rest, so under Adam the weight changes its steps
// little; what it changes is the head's share of the gradient's global
// norm, which the optimizer clips (at 1): at weight 1, two demo runs'
// REC Acc@0.5 pooled 0.672 and 0.675 against 0.710 to 0.737 without the
// head (docs/experiments.md).
const NameLossWeight = 0.1

// nameLoss is Config.GrounderNameSlots' loss: the cross-entropy of each
// labelled slot (nameW [N, Slots] 1 there; nameIDs [N, Slots] the word,
// <eos> after the last; 0 in unlabelled slots) of the named images
// (nameImg [N], indices into the batch's images: the head runs on these
// alone), each slot reading the label's word before it (teacher
// forcing), averaged over the labelled slots. Zero when none is labelled.
func (n *Net[T]) nameLoss(nameImg, nameIDs, nameW T) T {
	o, c := n.o, n.c
	h := n.nameFeatures(o.Gather(n.images, nameImg)) // [N, W]
	b, slots, w := o.Shape(h)[0], c.GrounderNameSlots, c.Width
	z, start := n.nameStart(h)
	prev := o.Reshape(start, b, 1, w)
	if slots > 1 {
		prev = o.Concat(1, prev, o.Gather(n.nameVocab(), o.Slice(nameIDs, Range{Axis: 1, From: 0, To: slots - 1})))
	}
	lg := n.nameSlot(o.Reshape(z, b*slots, w), o.Reshape(prev, b*slots, w)) // [N*Slots, V]
	picked := o.GatherElems(o.LogSoftmax(lg), o.Reshape(nameIDs, b*slots, 1))
	nll := o.Neg(o.Reshape(picked, b, slots))
	den := o.Max(o.ReduceSum(nameW, false), o.Scalar(1))
	return o.Div(o.ReduceSum(o.Mul(nll, nameW), false), den)
}

// NameTokens decodes one image's name logits (NameLogits' [Slots, V] for
// it, row major): each slot's most likely token among the words a name
// can have (NameToken) and <eos>, up to the first <eos> (not included);
// the first slot's among the words alone (a name has one). The answer has
// 1 to slots tokens, and decodes to valid text.
func NameTokens(logits []float32, slots, vocab int) []int32 {
	var out []int32
	for s := range slots {
		row := logits[s*vocab : (s+1)*vocab]
		best := int32(-1)
		for v, x := range row {
			id := int32(v)
			if !NameToken(id) && (id != tokEOS || s == 0) {
				continue
			}
			if best < 0 || x > row[best] {
				best = id
			}
		}
		if best < 0 || best == tokEOS {
			break
		}
		out = append(out, best)
	}
	return out
}

// grounderLoss is Config.Grounder's loss over the rows with a referent
// (refW [B] 1 there): cross-entropy of the pointer over the first image's
// cells (imgFirst [B]) against a Gaussian around the cell that holds the
// referent's centre (refBox [B, 4]), plus the L1 and GIoU of the cells'
// boxes weighted by that Gaussian; plus, over the rows with an existence
// label (existsW [B] 1 there; exists [B] 1 present, 0 absent: REC
// referents and POPE probes), the binary cross-entropy of the pointer
// logits' log-sum-exp, averaged over each class apart and the two means
// halved, so that the cells light up only for what is there;
// plus, with GrounderCellWords, cellWordLoss; plus, with GrounderNameSlots,
// nameLoss times NameLossWeight. Zero when no row has a label.
func (n *Net[T]) grounderLoss(lb Labels[T]) T {
	o := n.o
	logits, boxes := n.Head()
	p := o.Shape(logits)[1]
	s := int(math.Round(math.Sqrt(float64(p))))
	lg := o.Gather(logits, lb.ImgFirst) // [B, P]
	bx := o.Gather(boxes, lb.ImgFirst)  // [B, P, 4]
	b := o.Shape(lg)[0]
	rb := func(i int) T { return n.part(lb.RefBox, i, i+1) } // [B, 1]
	// Target: a Gaussian in cell units around the box centre.
	gcx := o.Scale(o.Scale(o.Add(rb(0), rb(2)), 0.5), float64(s))
	gcy := o.Scale(o.Scale(o.Add(rb(1), rb(3)), 0.5), float64(s))
	idx := o.Iota(1, 1, p)
	row := o.Floor(o.Div(idx, o.Scalar(float64(s))))
	cellY := o.Shift(row, 0.5)
	cellX := o.Shift(o.Sub(idx, o.Scale(row, float64(s))), 0.5)
	d2 := o.Add(o.Square(o.Sub(cellX, gcx)), o.Square(o.Sub(cellY, gcy))) // [B, P]
	sg := n.c.PointerSigma()
	tgt := o.Softmax(o.Scale(d2, -1/(2*sg*sg)))
	ce := o.Neg(o.ReduceSum(o.Mul(tgt, o.LogSoftmax(lg)), false, -1)) // [B]
	gt := o.Reshape(lb.RefBox, b, 1, 4)
	l1 := o.ReduceSum(o.Abs(o.Sub(bx, gt)), false, -1) // [B, P]
	giou := n.boxGIoU(bx, gt)                          // [B, P]
	reg := o.ReduceSum(o.Mul(tgt, o.Add(o.Scale(l1, GrounderL1Weight), o.Scale(n.oneMinus(giou), GrounderGIoUWeight))), false, -1)
	per := o.Add(ce, reg)
	den := o.Max(o.ReduceSum(lb.RefW, false), o.Scalar(1))
	loss := o.Div(o.ReduceSum(o.Mul(per, lb.RefW), false), den)
	// Existence: BCE with logits z = logsumexp(cells) - log(P), stably.
	mx := o.StopGradient(o.ReduceMax(lg, true, -1))
	z := o.Add(o.Reshape(mx, b), o.Log(o.ReduceSum(o.Exp(o.Sub(lg, mx)), false, -1)))
	z = o.Shift(z, -math.Log(float64(p)))
	// Balanced between the classes: half the term is the mean over the
	// present labels, half over the absent, so that the batch's mix (REC
	// referents are all present) does not set the head's prior.
	bce := n.bceWithLogits(z, lb.Exists)
	pos := o.Mul(lb.ExistsW, lb.Exists)
	neg := o.Mul(lb.ExistsW, n.oneMinus(lb.Exists))
	mean := func(w T) T {
		return o.Div(o.ReduceSum(o.Mul(bce, w), false), o.Max(o.ReduceSum(w, false), o.Scalar(1)))
	}
	loss = o.Add(loss, o.Scale(o.Add(mean(pos), mean(neg)), 0.5))
	if n.c.GrounderCellWords {
		loss = o.Add(loss, n.cellWordLoss(lb.ImgFirst, lb.CellIDs, lb.CellIDW, lb.CellW))
	}
	if n.c.GrounderNameSlots > 0 {
		loss = o.Add(loss, o.Scale(n.nameLoss(lb.NameImg, lb.NameIDs, lb.NameW), NameLossWeight))
	}
	return loss
}

// boxGIoU is the generalized IoU of boxes a and b [..., 4] (x1, y1, x2,
// y2; broadcast), over the leading axes.
func (n *Net[T]) boxGIoU(a, b T) T {
	o := n.o
	zero := o.Scalar(0)
	ax1, ay1, ax2, ay2 := n.index(a, -1, 0), n.index(a, -1, 1), n.index(a, -1, 2), n.index(a, -1, 3)
	bx1, by1, bx2, by2 := n.index(b, -1, 0), n.index(b, -1, 1), n.index(b, -1, 2), n.index(b, -1, 3)
	area := func(x1, y1, x2, y2 T) T {
		return o.Mul(o.Max(o.Sub(x2, x1), zero), o.Max(o.Sub(y2, y1), zero))
	}
	inter := area(o.Max(ax1, bx1), o.Max(ay1, by1), o.Min(ax2, bx2), o.Min(ay2, by2))
	union := o.Sub(o.Add(area(ax1, ay1, ax2, ay2), area(bx1, by1, bx2, by2)), inter)
	hull := area(o.Min(ax1, bx1), o.Min(ay1, by1), o.Max(ax2, bx2), o.Max(ay2, by2))
	eps := o.Scalar(1e-7)
	iou := o.Div(inter, o.Max(union, eps))
	return o.Sub(iou, o.Div(o.Sub(hull, union), o.Max(hull, eps)))
}

// cellWordLoss is Config.GrounderCellWords' dense perception loss: every
// cell of a labelled row's first image (cellW [B, P] 1 there) predicts,
// through "grounder.words" and the token embeddings, the words of the
// objects it holds (cellIDs [B, P, S] with cellIDW 1 in the filled slots):
// binary cross-entropy over the vocabulary, summed and divided by the
// slots. Zero when no row is labelled.
func (n *Net[T]) cellWordLoss(imgFirst, cellIDs, cellIDW, cellW T) T {
	o, c := n.o, n.c
	d := o.Shape(n.grid)
	k, p, ch := d[0], d[1]*d[2], d[3]
	z := n.dense(o.Reshape(n.grid, k, p, ch), "grounder.words", c.Width) // [K, P, W]
	z = o.Gather(z, imgFirst)                                            // [B, P, W]
	logits := o.Einsum("bpw,vw->bpv", z, n.embedTokens())                // [B, P, V]
	// A word is absent from almost every cell: start every logit at -5
	// (a learned offset per word on top), not at 0, where the sum over the
	// vocabulary would swamp the other losses.
	logits = o.Add(o.Shift(logits, -5), o.Reshape(o.Param("grounder.words.vocab_b", c.VocabSize), 1, 1, c.VocabSize))
	// BCE: sum_v softplus(z_v) - sum over the targets of z_t.
	softplus := o.Add(o.Max(logits, o.ZerosLike(logits)), o.Log1P(o.Exp(o.Neg(o.Abs(logits)))))
	all := o.ReduceSum(softplus, false, -1) // [B, P]
	b := o.Shape(cellIDs)[0]
	picked := o.GatherElems(o.Reshape(logits, b*p, c.VocabSize), o.Reshape(cellIDs, b*p, CellWords))
	pos := o.ReduceSum(o.Mul(o.Reshape(picked, b, p, CellWords), cellIDW), false, -1)
	per := o.Div(o.Sub(all, pos), o.Scalar(CellWords))
	den := o.Max(o.ReduceSum(cellW, false), o.Scalar(1))
	return o.Div(o.ReduceSum(o.Mul(per, cellW), false), den)
}
