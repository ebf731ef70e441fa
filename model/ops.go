package model

// Ops are the tensor operations the tinygrounder is defined against
// (net.go), the way ollama defines each model once against its ml.Tensor
// interface: a compute backend implements them over its own tensor type T
// (a GoMLX graph node, which differentiates them for training; an eager
// array; a shape, which Config.Params derives the parameters from), and
// every architecture option is written once, in net.go.
//
// Tensors are float32 unless an operation says otherwise; integer tensors
// (token ids, indices) come in as inputs or from ToInt, and are read by
// Gather, GatherElems, OneHot, ToFloat and Slice. Axes may be negative (from the end).
// Binary operations broadcast: a scalar against anything, and axes of
// size 1 against any size (operands of equal rank).
type Ops[T any] interface {
	// Param returns the named parameter, which has the given shape. A
	// definition asks for each parameter where it first reads it; the
	// names and shapes asked for are the model's parameters (Params).
	Param(name string, shape ...int) T
	// Shape returns x's dimensions.
	Shape(x T) []int

	// Scalar is a float32 constant.
	Scalar(v float64) T
	// Iota is a float32 tensor of dims whose value is the index along axis.
	Iota(axis int, dims ...int) T
	// LowerTri is the float32 [n, n] matrix with 1 where column <= row.
	LowerTri(n int) T
	ZerosLike(x T) T

	Add(a, b T) T
	Sub(a, b T) T
	Mul(a, b T) T
	Div(a, b T) T
	Max(a, b T) T
	Min(a, b T) T
	// Greater, Equal, GreaterEq and LessEq are 1 where the comparison
	// holds and 0 elsewhere.
	Greater(a, b T) T
	Equal(a, b T) T
	GreaterEq(a, b T) T
	LessEq(a, b T) T
	// Scale is x*s; Shift is x+s.
	Scale(x T, s float64) T
	Shift(x T, s float64) T
	Neg(x T) T
	Abs(x T) T
	Exp(x T) T
	Log(x T) T
	Log1P(x T) T
	Sqrt(x T) T
	Square(x T) T
	Floor(x T) T
	Clip(x T, lo, hi float64) T
	// Gelu is the exact GELU, x * Φ(x) with the error function.
	Gelu(x T) T
	// StopGradient is x, through which training takes no gradient.
	StopGradient(x T) T
	// ToFloat converts an integer tensor to float32; ToInt converts a
	// float32 tensor of whole numbers to an integer one.
	ToFloat(x T) T
	ToInt(x T) T

	// Reshape keeps the elements in order; one dimension may be -1.
	Reshape(x T, dims ...int) T
	Transpose(x T, perm ...int) T
	// Slice keeps [from, to) of each axis a range names, every stride-th
	// (a stride of 0 means 1); other axes are kept whole.
	Slice(x T, ranges ...Range) T
	Concat(axis int, xs ...T) T

	// ReduceSum, ReduceMax and ReduceMean reduce the given axes (all of
	// them when none is given), keeping them as size 1 with keep.
	ReduceSum(x T, keep bool, axes ...int) T
	ReduceMax(x T, keep bool, axes ...int) T
	ReduceMean(x T, keep bool, axes ...int) T
	// Softmax and LogSoftmax are over the last axis.
	Softmax(x T) T
	LogSoftmax(x T) T
	// LayerNorm normalizes the last axis to zero mean and unit variance
	// (epsilon LayerNormEps), then scales by w and shifts by b.
	LayerNorm(x, w, b T) T

	// Dense is x [..., in] times w [in, out], plus b [out] when given:
	// [..., out].
	Dense(x, w T, b ...T) T
	// MatMul is the batched product of a [..., m, k] and b [..., k, n]
	// with equal leading dimensions: [..., m, n].
	MatMul(a, b T) T
	// MatMulT is MatMul of a and b with b's last two axes swapped: a [...,
	// m, k] times b [..., n, k] transposed: [..., m, n].
	MatMulT(a, b T) T
	// Conv3x3 is the 3x3 convolution of x [K, S, S, in] (channels last)
	// with kernel w [3, 3, in, out] (HWIO), zero padding 1 and stride 1
	// or 2, plus b [out]: [K, S/stride, S/stride, out] (S even for stride
	// 2). Conv3x3Columns computes it from the other operations, for a
	// backend without a faster one of its own.
	Conv3x3(x, w, b T, stride int) T
	// Einsum contracts two operands as the spec says ("bql,blw->bqw").
	Einsum(spec string, a, b T) T
	// Gather takes the rows of table [n, ...] that the integer tensor
	// idx [...] names: [idx..., table's trailing dims...].
	Gather(table, idx T) T
	// GatherElems picks from x [n, v] the elements the integer tensor idx
	// [n, s] names in each row: [n, s].
	GatherElems(x, idx T) T
	// OneHot is the float32 one-hot encoding [..., n] of integer idx [...].
	OneHot(idx T, n int) T
}

// RecurrentOps is an optional part of Ops for a backend that runs a GRU
// as one operation (an ONNX graph's GRU node) instead of the steps the
// definition otherwise writes with the other operations, one per
// position, which a graph exported for every text length cannot hold.
type RecurrentOps[T any] interface {
	// GRU runs a GRU over x [B, L, W] and returns its last state [B, H]:
	// input weights wx [W, 3H] and bias bx [3H], state weights wh [H, 3H]
	// and bias bh [3H], gates in the order update z, reset r, candidate n:
	// z = σ(x wz + bz + h uz + cz), r = σ(x wr + br + h ur + cr),
	// n = tanh(x wn + bn + r (h un + cn)), h' = (1 - z) n + z h, from
	// h = 0. mask [B, L] is 1 on each row's first positions and 0 after
	// them; the GRU reads the marked positions only, forward or (backward)
	// from the last marked one to the first.
	GRU(x, mask, wx, bx, wh, bh T, backward bool) T
}

// Range selects part of one axis (Ops.Slice).
type Range struct {
	Axis, From, To, Stride int
}

// LayerNormEps is the epsilon of every layer norm and instance norm.
const LayerNormEps = 1e-5

// Conv3x3Columns is Ops.Conv3x3 from the other operations: nine
// (strided) slices of the padded input side by side times the kernel as
// a [9*in, out] matrix (im2col), which runs with its gradient on any
// backend, and faster on GoMLX's Go backend than its generic
// convolution.
func Conv3x3Columns[T any](o Ops[T], x, w, b T, stride int) T {
	d := o.Shape(x)
	s, in := d[1], d[3]
	out := o.Shape(w)[3]
	xp := x
	for axis := 1; axis <= 2; axis++ { // zero padding
		edge := o.ZerosLike(o.Slice(xp, Range{Axis: axis, From: 0, To: 1}))
		xp = o.Concat(axis, edge, xp, edge)
	}
	cols := make([]T, 0, 9)
	for ky := range 3 {
		for kx := range 3 {
			if stride == 2 {
				cols = append(cols, o.Slice(xp, Range{Axis: 1, From: ky, To: ky + s - 1, Stride: 2}, Range{Axis: 2, From: kx, To: kx + s - 1, Stride: 2}))
			} else {
				cols = append(cols, o.Slice(xp, Range{Axis: 1, From: ky, To: ky + s}, Range{Axis: 2, From: kx, To: kx + s}))
			}
		}
	}
	return o.Dense(o.Concat(-1, cols...), o.Reshape(w, 9*in, out), b)
}
