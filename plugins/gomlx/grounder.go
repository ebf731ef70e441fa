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

// Config.Grounder's parts of the graph: the sentence vector, the
// CoordConv tower with FiLM, the pointer-and-box head and its loss (see
// model.Config.Grounder for the architecture).

// Loss weights inside the grounder's loss (DETR's L1 : GIoU balance), and
// the width in cells of the Gaussian the pointer is trained against.
const (
	grounderL1Weight   = 5
	grounderGIoUWeight = 2
	grounderSigma      = 0.75
)

// grounderIn are the grounder's batch inputs (trainBatch's textMask,
// imgRow and imgFirst).
type grounderIn struct {
	textMask *graph.Node // [B, T] float32, T <= L
	imgRow   *graph.Node // [K] int32
}

// sentence is the sentence vector [B, Width] of each row: the text
// positions textMask [B, T] marks, embedded, through one bidirectional
// block over them and GrounderQueries attention pools. Only the first T
// positions of tokens [B, L] are read: the marked text comes first, and an
// unmarked position takes no part (its key is masked and it is not
// pooled), so T only has to cover the longest marked text.
func (n *netGraph) sentence(tokens, textMask *graph.Node) *graph.Node {
	c := n.cfg
	l := textMask.Shape().Dimensions[1]
	tokens = graph.SliceAxis(tokens, 1, graph.AxisRange(0, l))
	b, w := tokens.Shape().Dimensions[0], c.Width
	x := graph.Gather(n.p["embed.tokens"], graph.InsertAxes(tokens, -1)) // [B, L, W]
	x = graph.Add(x, graph.InsertAxes(graph.SliceAxis(n.p["grounder.text.pos"], 0, graph.AxisRange(0, l)), 0))
	off := graph.MulScalar(graph.OneMinus(textMask), maskedScore) // [B, L]: 0 on text
	x = n.block(x, "grounder.text.block", graph.Reshape(off, b, 1, 1, l))
	scores := graph.Einsum("blw,qw->bql", x, n.p["grounder.text.query"])
	scores = graph.Add(graph.MulScalar(scores, 1/math.Sqrt(float64(w))), graph.InsertAxes(off, 1))
	pooled := graph.Einsum("bql,blw->bqw", graph.Softmax(scores, -1), x)
	pooled = graph.Reshape(pooled, b, c.GrounderQueries*w)
	return n.layerNorm(n.dense(pooled, "grounder.text.proj"), "grounder.text.ln")
}

// instanceNorm normalizes x [K, S, S, C] per image and channel over the
// S*S cells to zero mean and unit variance.
func instanceNorm(x *graph.Node) *graph.Node {
	xc := graph.Sub(x, graph.ReduceAndKeep(x, graph.ReduceMean, 1, 2))
	v := graph.ReduceAndKeep(graph.Square(xc), graph.ReduceMean, 1, 2)
	return graph.Div(xc, graph.Sqrt(graph.AddScalar(v, layerNormEps)))
}

// coordChannels returns [k, s, s, 2]: each cell's centre x and y in -1..1.
func coordChannels(g *graph.Graph, k, s int) *graph.Node {
	iy := graph.Iota(g, shapes.Make(dtypes.Float32, k, s, s, 1), 1)
	ix := graph.Iota(g, shapes.Make(dtypes.Float32, k, s, s, 1), 2)
	norm := func(v *graph.Node) *graph.Node {
		return graph.AddScalar(graph.MulScalar(v, 2/float64(s)), 1/float64(s)-1)
	}
	return graph.Concatenate([]*graph.Node{norm(ix), norm(iy)}, -1)
}

// conv3x3 is a 3x3 convolution of x [K, S, S, in] with kernel w [3, 3,
// in, out] (HWIO), zero padding 1 and the given stride (1 or 2), plus b: nine
// (strided) slices of the padded input side by side times the kernel as a
// [9*in, out] matrix, which the Go backend runs, with its gradient, faster
// than its generic convolution.
func conv3x3(x, w, b *graph.Node, stride int) *graph.Node {
	dims := x.Shape().Dimensions
	s, in := dims[1], dims[3]
	xp := x
	for axis := 1; axis <= 2; axis++ { // zero padding; the graph has no gradient for Pad
		edge := graph.ZerosLike(graph.SliceAxis(xp, axis, graph.AxisElem(0)))
		xp = graph.Concatenate([]*graph.Node{edge, xp, edge}, axis)
	}
	cols := make([]*graph.Node, 0, 9)
	for ky := range 3 {
		for kx := range 3 {
			if stride == 2 {
				cols = append(cols, graph.Slice(xp, graph.AxisRange(),
					graph.AxisRange(ky, ky+s-1).Stride(2), graph.AxisRange(kx, kx+s-1).Stride(2), graph.AxisRange()))
			} else {
				cols = append(cols, graph.Slice(xp, graph.AxisRange(), graph.AxisRange(ky, ky+s), graph.AxisRange(kx, kx+s), graph.AxisRange()))
			}
		}
	}
	out := w.Shape().Dimensions[3]
	return nn.Dense(graph.Concatenate(cols, -1), graph.Reshape(w, 9*in, out), b, gomlxcompute.DenseLayoutInputOutputs)
}

// tower is the CoordConv tower over normalized images [K, S, S, 3], each
// modulated by its row's sentence vector sImg [K, Width]; it returns the
// grid [K, G, G, VisionWidth].
func (n *netGraph) tower(images, sImg *graph.Node) *graph.Node {
	g := images.Graph()
	k := images.Shape().Dimensions[0]
	strides, chans := n.cfg.GrounderConvs()
	half := images.Shape().Dimensions[1] / 2
	x := graph.Reshape(images, k, half, 2, half, 2, 3)
	x = graph.Reshape(graph.Transpose(x, 2, 3), k, half, half, 12) // 2x2 space to depth
	for i, stride := range strides {
		s := x.Shape().Dimensions[1]
		in := graph.Concatenate([]*graph.Node{x, coordChannels(g, k, s)}, -1)
		prefix := fmt.Sprintf("grounder.conv.%d", i)
		// Config.GrounderNorm's instance norm, not a per-cell norm over
		// channels: that wiped out how strongly a cell responds (object or
		// background); on the scene probe it did no better than none
		// (Acc@0.5 0.207 against 0.252), where the instance norm did
		// (docs/experiments.md).
		y := conv3x3(in, n.p[prefix+".w"], n.p[prefix+".b"], stride)
		if n.cfg.GrounderNorm {
			y = instanceNorm(y)
		}
		film := n.dense(sImg, fmt.Sprintf("grounder.film.%d", i)) // [K, 2C]
		scale := graph.Reshape(graph.SliceAxis(film, -1, graph.AxisRange(0, chans[i])), k, 1, 1, chans[i])
		shift := graph.Reshape(graph.SliceAxis(film, -1, graph.AxisRange(chans[i], 2*chans[i])), k, 1, 1, chans[i])
		y = activation.Gelu(graph.Add(graph.Mul(y, graph.OnePlus(scale)), shift))
		if stride == 1 {
			y = graph.Add(x, y)
		}
		x = y
	}
	if c := n.cfg; c.GrounderGridDepth > 0 {
		s, ch := x.Shape().Dimensions[1], x.Shape().Dimensions[3]
		x = graph.Reshape(x, k, s*s, ch)
		for i := range c.GrounderGridDepth {
			x = n.block(x, fmt.Sprintf("grounder.grid.blocks.%d", i), nil)
		}
		x = graph.Reshape(x, k, s, s, ch)
	}
	return x
}

// head is the pointer-and-box head over grids [K, G, G, C]: pointer
// logits [K, P] and each cell's box [K, P, 4] (x1, y1, x2, y2 in the padded
// square, the cell's centre minus and plus the predicted distances).
func (n *netGraph) head(grid *graph.Node) (logits, boxes *graph.Node) {
	g := grid.Graph()
	dims := grid.Shape().Dimensions
	k, s, ch := dims[0], dims[1], dims[3]
	x := graph.Concatenate([]*graph.Node{grid, coordChannels(g, k, s)}, -1)
	x = n.dense(activation.Gelu(n.dense(x, "grounder.head.fc1")), "grounder.head.out") // [K, G, G, 5]
	x = graph.Reshape(x, k, s*s, 5)
	logits = graph.Squeeze(graph.SliceAxis(x, -1, graph.AxisElem(0)), -1)
	// Matching: each cell's key against the sentence's query, so that a
	// cell scores by how well what it shows matches the words.
	q := nn.Dense(n.sImg, n.p["grounder.match.q.w"], nil, gomlxcompute.DenseLayoutInputOutputs)                            // [K, D]
	key := nn.Dense(graph.Reshape(grid, k, s*s, ch), n.p["grounder.match.k.w"], nil, gomlxcompute.DenseLayoutInputOutputs) // [K, P, D]
	d := q.Shape().Dimensions[1]
	logits = graph.Add(logits, graph.MulScalar(graph.Einsum("kpd,kd->kp", key, q), 1/math.Sqrt(float64(d))))
	// l, t, r, b: a cell's width times exp(z), FCOS style (one cell each
	// side at initialization), clipped to stay finite.
	dist := graph.MulScalar(graph.Exp(graph.ClipScalar(graph.SliceAxis(x, -1, graph.AxisRange(1, 5)), -4, 3)), 1/float64(s))
	centre := graph.Reshape(graph.DivScalar(graph.AddScalar(coordChannels(g, 1, s), 1), 2), 1, s*s, 2) // 0..1
	cx := graph.SliceAxis(centre, -1, graph.AxisElem(0))
	cy := graph.SliceAxis(centre, -1, graph.AxisElem(1))
	part := func(i int) *graph.Node { return graph.SliceAxis(dist, -1, graph.AxisElem(i)) }
	boxes = graph.Concatenate([]*graph.Node{
		graph.Sub(cx, part(0)), graph.Sub(cy, part(1)), graph.Add(cx, part(2)), graph.Add(cy, part(3)),
	}, -1)
	return logits, boxes
}

// grounderLoss is Config.Grounder's loss over the rows with a referent
// (refW [B] 1 there): cross-entropy of the pointer over the first image's
// cells (imgFirst [B]) against a Gaussian around the cell that holds the
// referent's centre (refBox [B, 4]), plus the L1 and GIoU of the cells'
// boxes weighted by that Gaussian; plus, over the rows with an existence
// label (existsW [B] 1 there; exists [B] 1 present, 0 absent: REC
// referents and POPE probes), the binary cross-entropy of the pointer
// logits' log-sum-exp, so that the cells light up only for what is there.
// Zero when no row has a label.
func (n *netGraph) grounderLoss(logits, boxes, imgFirst, refBox, refW, exists, existsW *graph.Node) *graph.Node {
	g := logits.Graph()
	p := logits.Shape().Dimensions[1]
	s := int(math.Round(math.Sqrt(float64(p))))
	lg := graph.Gather(logits, graph.InsertAxes(imgFirst, -1)) // [B, P]
	bx := graph.Gather(boxes, graph.InsertAxes(imgFirst, -1))  // [B, P, 4]
	part := func(x *graph.Node, i int) *graph.Node { return graph.SliceAxis(x, -1, graph.AxisElem(i)) }
	// Target: a Gaussian in cell units around the box centre.
	gcx := graph.MulScalar(graph.DivScalar(graph.Add(part(refBox, 0), part(refBox, 2)), 2), float64(s)) // [B, 1]
	gcy := graph.MulScalar(graph.DivScalar(graph.Add(part(refBox, 1), part(refBox, 3)), 2), float64(s))
	idx := graph.Iota(g, shapes.Make(dtypes.Float32, 1, p), 1)
	cellY := graph.AddScalar(graph.Floor(graph.DivScalar(idx, float64(s))), 0.5)
	cellX := graph.AddScalar(graph.Sub(idx, graph.MulScalar(graph.Floor(graph.DivScalar(idx, float64(s))), float64(s))), 0.5)
	d2 := graph.Add(graph.Square(graph.Sub(cellX, gcx)), graph.Square(graph.Sub(cellY, gcy))) // [B, P]
	tgt := graph.Softmax(graph.MulScalar(d2, -1/(2*grounderSigma*grounderSigma)), -1)
	ce := graph.Neg(graph.ReduceSum(graph.Mul(tgt, graph.LogSoftmax(lg, -1)), -1)) // [B]
	gt := graph.InsertAxes(refBox, 1)                                              // [B, 1, 4]
	l1 := graph.ReduceSum(graph.Abs(graph.Sub(bx, gt)), -1)                        // [B, P]
	giou := boxGIoU(bx, gt)                                                        // [B, P]
	reg := graph.ReduceSum(graph.Mul(tgt, graph.Add(graph.MulScalar(l1, grounderL1Weight), graph.MulScalar(graph.OneMinus(giou), grounderGIoUWeight))), -1)
	per := graph.Add(ce, reg)
	den := graph.Max(graph.ReduceAllSum(refW), graph.Scalar(g, dtypes.Float32, 1))
	loss := graph.Div(graph.ReduceAllSum(graph.Mul(per, refW)), den)
	// Existence: BCE with logits z = logsumexp(cells) - log(P), stably.
	mx := graph.StopGradient(graph.ReduceAndKeep(lg, graph.ReduceMax, -1))
	z := graph.Add(graph.Squeeze(mx, -1), graph.Log(graph.ReduceSum(graph.Exp(graph.Sub(lg, mx)), -1)))
	z = graph.AddScalar(z, -math.Log(float64(p)))
	bce := graph.Add(graph.Sub(graph.Max(z, graph.ZerosLike(z)), graph.Mul(z, exists)), graph.Log1P(graph.Exp(graph.Neg(graph.Abs(z)))))
	eden := graph.Max(graph.ReduceAllSum(existsW), graph.Scalar(g, dtypes.Float32, 1))
	return graph.Add(loss, graph.Div(graph.ReduceAllSum(graph.Mul(bce, existsW)), eden))
}

// fullGrounderLoss is grounderLoss on the head over n.grid, plus
// cellWordLoss with Config.GrounderCellWords; labels are the batch's
// exists, existsW, cellIDs, cellIDW and cellW inputs in that order.
func (n *netGraph) fullGrounderLoss(imgFirst, refBox, refW *graph.Node, labels []*graph.Node) *graph.Node {
	logits, boxes := n.head(n.grid)
	loss := n.grounderLoss(logits, boxes, imgFirst, refBox, refW, labels[0], labels[1])
	if n.cfg.GrounderCellWords {
		loss = graph.Add(loss, n.cellWordLoss(imgFirst, labels[2], labels[3], labels[4]))
	}
	return loss
}

// boxGIoU is the generalized IoU of boxes a and b [..., 4] (x1, y1, x2,
// y2; broadcast), over the leading axes.
func boxGIoU(a, b *graph.Node) *graph.Node {
	part := func(x *graph.Node, i int) *graph.Node {
		return graph.Squeeze(graph.SliceAxis(x, -1, graph.AxisElem(i)), -1)
	}
	g := a.Graph()
	zero := graph.Scalar(g, dtypes.Float32, 0)
	ax1, ay1, ax2, ay2 := part(a, 0), part(a, 1), part(a, 2), part(a, 3)
	bx1, by1, bx2, by2 := part(b, 0), part(b, 1), part(b, 2), part(b, 3)
	area := func(x1, y1, x2, y2 *graph.Node) *graph.Node {
		return graph.Mul(graph.Max(graph.Sub(x2, x1), zero), graph.Max(graph.Sub(y2, y1), zero))
	}
	inter := area(graph.Max(ax1, bx1), graph.Max(ay1, by1), graph.Min(ax2, bx2), graph.Min(ay2, by2))
	union := graph.Sub(graph.Add(area(ax1, ay1, ax2, ay2), area(bx1, by1, bx2, by2)), inter)
	hull := area(graph.Min(ax1, bx1), graph.Min(ay1, by1), graph.Max(ax2, bx2), graph.Max(ay2, by2))
	eps := graph.Scalar(g, dtypes.Float32, 1e-7)
	iou := graph.Div(inter, graph.Max(union, eps))
	return graph.Sub(iou, graph.Div(graph.Sub(hull, union), graph.Max(hull, eps)))
}

// grounderFeatures runs the sentence encoder and the tower, leaves the
// grids in n.grid and returns the patch features [K*P, VisionWidth] the
// language model reads (after vision.ln_f, before the projector).
func (n *netGraph) grounderFeatures(tokens, images *graph.Node) *graph.Node {
	c := n.cfg
	s := n.sentence(tokens, n.gin.textMask)
	n.sImg = graph.Gather(s, graph.InsertAxes(n.gin.imgRow, -1))
	n.grid = n.tower(images, n.sImg)
	k := images.Shape().Dimensions[0]
	return n.layerNorm(graph.Reshape(n.grid, k*c.Patches(), c.VisionWidth), "vision.ln_f")
}

// cellWordLoss is Config.Grounder's dense perception loss: every cell of a
// labelled row's first image (cellW [B, P] 1 there) predicts, through
// "grounder.words" and the token embeddings, the words of the objects it
// holds (cellIDs [B, P, S] with cellIDW 1 in the filled slots): binary
// cross-entropy over the vocabulary, summed and divided by the slots. The
// tower then learns colour, shape, size and texture from every object of
// every image, not only from the referents the pointer is taught, and the
// words' embeddings, which the sentence encoder reads, meet the cells'
// features. Zero when no row is labelled.
func (n *netGraph) cellWordLoss(imgFirst, cellIDs, cellIDW, cellW *graph.Node) *graph.Node {
	g := cellW.Graph()
	dims := n.grid.Shape().Dimensions
	k, p, ch := dims[0], dims[1]*dims[2], dims[3]
	z := n.dense(graph.Reshape(n.grid, k, p, ch), "grounder.words") // [K, P, W]
	z = graph.Gather(z, graph.InsertAxes(imgFirst, -1))             // [B, P, W]
	logits := graph.Einsum("bpw,vw->bpv", z, n.p["embed.tokens"])   // [B, P, V]
	// A word is absent from almost every cell: start every logit at -5
	// (a learned offset per word on top), not at 0, where the sum over the
	// vocabulary would swamp the other losses.
	logits = graph.Add(graph.AddScalar(logits, -5), graph.Reshape(n.p["grounder.words.vocab_b"], 1, 1, -1))
	// BCE: sum_v softplus(z_v) - sum over the targets of z_t.
	softplus := graph.Add(graph.Max(logits, graph.ZerosLike(logits)), graph.Log1P(graph.Exp(graph.Neg(graph.Abs(logits)))))
	all := graph.ReduceSum(softplus, -1) // [B, P]
	b := cellIDs.Shape().Dimensions[0]
	flat := graph.Reshape(logits, b*p, -1)
	rows := graph.Reshape(graph.Iota(g, shapes.Make(dtypes.Int32, b*p, model.CellWords), 0), b*p, model.CellWords, 1)
	idx := graph.Concatenate([]*graph.Node{rows, graph.Reshape(cellIDs, b*p, model.CellWords, 1)}, -1)
	picked := graph.Reshape(graph.Gather(flat, idx), b, p, model.CellWords) // [B, P, S]
	pos := graph.ReduceSum(graph.Mul(picked, cellIDW), -1)
	per := graph.DivScalar(graph.Sub(all, pos), model.CellWords)
	den := graph.Max(graph.ReduceAllSum(cellW), graph.Scalar(g, dtypes.Float32, 1))
	return graph.Div(graph.ReduceAllSum(graph.Mul(per, cellW)), den)
}
