package onnx

import (
	"fmt"
	"slices"

	"github.com/groundmesh/groundmesh/model"
)

// T is a tensor of a traced graph: the call that made it, its
// dimensions in this trace and whether it holds integers.
type T struct {
	id    int
	dims  []int
	isInt bool
}

// Dims are t's dimensions in the trace that made it.
func (t *T) Dims() []int { return slices.Clone(t.dims) }

// call is one recorded operation: its operands (by the id of the call
// that made them), its integer and float arguments (which may depend on
// the graph's dynamic axes), a string argument, and its result's
// dimensions.
type call struct {
	op     string
	name   string
	args   []int
	ints   []int
	floats []float64
	str    string
	dims   []int
	isInt  bool
}

// Tracer records the model's definition as a graph: it implements
// model.Ops over T, computing only shapes (model.ShapeOps). Export runs
// a graph's Build once for each point of a grid of its dynamic axes'
// sizes and fits every size-dependent argument as a polynomial of them.
type Tracer struct {
	calls []call
	shape model.Ops[*model.Dims]
	syms  map[string]int
	err   error
}

var _ model.Ops[*T] = (*Tracer)(nil)

// Sym returns the size of the named dynamic axis in this trace.
func (tr *Tracer) Sym(name string) int {
	v, ok := tr.syms[name]
	if !ok {
		panic(fmt.Sprintf("onnx export: no dynamic axis %q declared", name))
	}
	return v
}

// Input is a graph input of the given dimensions (computed from Sym).
func (tr *Tracer) Input(name string, isInt bool, dims ...int) *T {
	return tr.add(call{op: "Input", name: name, ints: slices.Clone(dims), dims: slices.Clone(dims), isInt: isInt})
}

// Placeholder is a tensor of the given dimensions that must not reach an
// output: it stands for what a graph takes in some other way (the
// positions a cache already holds).
func (tr *Tracer) Placeholder(isInt bool, dims ...int) *T {
	return tr.add(call{op: "Placeholder", ints: slices.Clone(dims), dims: slices.Clone(dims), isInt: isInt})
}

func (tr *Tracer) add(c call) *T {
	tr.calls = append(tr.calls, c)
	return &T{id: len(tr.calls) - 1, dims: c.dims, isInt: c.isInt}
}

func ids(xs ...*T) []int {
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = x.id
	}
	return out
}

func dimsOf(xs ...*T) []*model.Dims {
	out := make([]*model.Dims, len(xs))
	for i, x := range xs {
		out[i] = model.NewDims(x.dims...)
	}
	return out
}

// op records an operation on xs whose result has the dimensions d.
func (tr *Tracer) op(name string, d *model.Dims, isInt bool, ints []int, floats []float64, xs ...*T) *T {
	return tr.add(call{op: name, args: ids(xs...), ints: ints, floats: floats, dims: tr.shape.Shape(d), isInt: isInt})
}

func (tr *Tracer) unary(name string, x *T) *T {
	return tr.op(name, model.NewDims(x.dims...), false, nil, nil, x)
}

func (tr *Tracer) binary(name string, a, b *T, f func(a, b *model.Dims) *model.Dims) *T {
	d := dimsOf(a, b)
	return tr.op(name, f(d[0], d[1]), false, nil, nil, a, b)
}

func (tr *Tracer) Param(name string, shape ...int) *T {
	return tr.add(call{op: "Param", name: name, ints: slices.Clone(shape), dims: slices.Clone(shape)})
}
func (tr *Tracer) Shape(x *T) []int { return slices.Clone(x.dims) }
func (tr *Tracer) Scalar(v float64) *T {
	return tr.add(call{op: "Scalar", floats: []float64{v}, dims: []int{}})
}
func (tr *Tracer) Iota(axis int, dims ...int) *T {
	return tr.add(call{op: "Iota", ints: append([]int{axis}, dims...), dims: slices.Clone(dims)})
}
func (tr *Tracer) LowerTri(n int) *T {
	return tr.add(call{op: "LowerTri", ints: []int{n}, dims: []int{n, n}})
}
func (tr *Tracer) ZerosLike(x *T) *T { return tr.unary("ZerosLike", x) }

func (tr *Tracer) Add(a, b *T) *T       { return tr.binary("Add", a, b, tr.shape.Add) }
func (tr *Tracer) Sub(a, b *T) *T       { return tr.binary("Sub", a, b, tr.shape.Sub) }
func (tr *Tracer) Mul(a, b *T) *T       { return tr.binary("Mul", a, b, tr.shape.Mul) }
func (tr *Tracer) Div(a, b *T) *T       { return tr.binary("Div", a, b, tr.shape.Div) }
func (tr *Tracer) Max(a, b *T) *T       { return tr.binary("Max", a, b, tr.shape.Max) }
func (tr *Tracer) Min(a, b *T) *T       { return tr.binary("Min", a, b, tr.shape.Min) }
func (tr *Tracer) Greater(a, b *T) *T   { return tr.binary("Greater", a, b, tr.shape.Greater) }
func (tr *Tracer) Equal(a, b *T) *T     { return tr.binary("Equal", a, b, tr.shape.Equal) }
func (tr *Tracer) GreaterEq(a, b *T) *T { return tr.binary("GreaterOrEqual", a, b, tr.shape.GreaterEq) }
func (tr *Tracer) LessEq(a, b *T) *T    { return tr.binary("LessOrEqual", a, b, tr.shape.LessEq) }

func (tr *Tracer) Scale(x *T, s float64) *T {
	return tr.op("Scale", model.NewDims(x.dims...), false, nil, []float64{s}, x)
}
func (tr *Tracer) Shift(x *T, s float64) *T {
	return tr.op("Shift", model.NewDims(x.dims...), false, nil, []float64{s}, x)
}
func (tr *Tracer) Neg(x *T) *T          { return tr.unary("Neg", x) }
func (tr *Tracer) Abs(x *T) *T          { return tr.unary("Abs", x) }
func (tr *Tracer) Exp(x *T) *T          { return tr.unary("Exp", x) }
func (tr *Tracer) Log(x *T) *T          { return tr.unary("Log", x) }
func (tr *Tracer) Log1P(x *T) *T        { return tr.unary("Log1P", x) }
func (tr *Tracer) Sqrt(x *T) *T         { return tr.unary("Sqrt", x) }
func (tr *Tracer) Square(x *T) *T       { return tr.unary("Square", x) }
func (tr *Tracer) Floor(x *T) *T        { return tr.unary("Floor", x) }
func (tr *Tracer) Gelu(x *T) *T         { return tr.unary("Gelu", x) }
func (tr *Tracer) StopGradient(x *T) *T { return x }
func (tr *Tracer) Clip(x *T, lo, hi float64) *T {
	return tr.op("Clip", model.NewDims(x.dims...), false, nil, []float64{lo, hi}, x)
}
func (tr *Tracer) ToFloat(x *T) *T {
	return tr.op("ToFloat", model.NewDims(x.dims...), false, nil, nil, x)
}
func (tr *Tracer) ToInt(x *T) *T { return tr.op("ToInt", model.NewDims(x.dims...), true, nil, nil, x) }

func (tr *Tracer) Reshape(x *T, dims ...int) *T {
	return tr.op("Reshape", tr.shape.Reshape(model.NewDims(x.dims...), dims...), x.isInt, slices.Clone(dims), nil, x)
}
func (tr *Tracer) Transpose(x *T, perm ...int) *T {
	return tr.op("Transpose", tr.shape.Transpose(model.NewDims(x.dims...), perm...), x.isInt, slices.Clone(perm), nil, x)
}
func (tr *Tracer) Slice(x *T, ranges ...model.Range) *T {
	var ints []int
	for _, r := range ranges {
		ints = append(ints, r.Axis, r.From, r.To, r.Stride)
	}
	return tr.op("Slice", tr.shape.Slice(model.NewDims(x.dims...), ranges...), x.isInt, ints, nil, x)
}
func (tr *Tracer) Concat(axis int, xs ...*T) *T {
	return tr.op("Concat", tr.shape.Concat(axis, dimsOf(xs...)...), xs[0].isInt, []int{axis}, nil, xs...)
}

func (tr *Tracer) reduce(name string, f func(*model.Dims, bool, ...int) *model.Dims, x *T, keep bool, axes []int) *T {
	k := 0
	if keep {
		k = 1
	}
	return tr.op(name, f(model.NewDims(x.dims...), keep, axes...), false, append([]int{k}, axes...), nil, x)
}
func (tr *Tracer) ReduceSum(x *T, keep bool, axes ...int) *T {
	return tr.reduce("ReduceSum", tr.shape.ReduceSum, x, keep, axes)
}
func (tr *Tracer) ReduceMax(x *T, keep bool, axes ...int) *T {
	return tr.reduce("ReduceMax", tr.shape.ReduceMax, x, keep, axes)
}
func (tr *Tracer) ReduceMean(x *T, keep bool, axes ...int) *T {
	return tr.reduce("ReduceMean", tr.shape.ReduceMean, x, keep, axes)
}
func (tr *Tracer) Softmax(x *T) *T    { return tr.unary("Softmax", x) }
func (tr *Tracer) LogSoftmax(x *T) *T { return tr.unary("LogSoftmax", x) }
func (tr *Tracer) LayerNorm(x, w, b *T) *T {
	d := dimsOf(x, w, b)
	return tr.op("LayerNorm", tr.shape.LayerNorm(d[0], d[1], d[2]), false, nil, nil, x, w, b)
}
func (tr *Tracer) Dense(x, w *T, b ...*T) *T {
	d := dimsOf(append([]*T{x, w}, b...)...)
	return tr.op("Dense", tr.shape.Dense(d[0], d[1], d[2:]...), false, nil, nil, append([]*T{x, w}, b...)...)
}
func (tr *Tracer) MatMul(a, b *T) *T  { return tr.binary("MatMul", a, b, tr.shape.MatMul) }
func (tr *Tracer) MatMulT(a, b *T) *T { return tr.binary("MatMulT", a, b, tr.shape.MatMulT) }
func (tr *Tracer) Conv3x3(x, w, b *T, stride int) *T {
	d := dimsOf(x, w, b)
	return tr.op("Conv3x3", tr.shape.Conv3x3(d[0], d[1], d[2], stride), false, []int{stride}, nil, x, w, b)
}
func (tr *Tracer) Einsum(spec string, a, b *T) *T {
	d := dimsOf(a, b)
	t := tr.op("Einsum", tr.shape.Einsum(spec, d[0], d[1]), false, nil, nil, a, b)
	tr.calls[t.id].str = spec
	return t
}
func (tr *Tracer) Gather(table, idx *T) *T {
	d := dimsOf(table, idx)
	return tr.op("Gather", tr.shape.Gather(d[0], d[1]), table.isInt, nil, nil, table, idx)
}
func (tr *Tracer) GatherElems(x, idx *T) *T {
	d := dimsOf(x, idx)
	return tr.op("GatherElements", tr.shape.GatherElems(d[0], d[1]), x.isInt, nil, nil, x, idx)
}
func (tr *Tracer) OneHot(idx *T, n int) *T {
	return tr.op("OneHot", tr.shape.OneHot(model.NewDims(idx.dims...), n), false, []int{n}, nil, idx)
}

var _ model.RecurrentOps[*T] = (*Tracer)(nil)

// GRU records the GRU as one operation (an ONNX GRU node), so that the
// graph does not unroll it over the text's length.
func (tr *Tracer) GRU(x, mask, wx, bx, wh, bh *T, backward bool) *T {
	back := 0
	if backward {
		back = 1
	}
	return tr.add(call{op: "GRU", args: ids(x, mask, wx, bx, wh, bh), ints: []int{back}, dims: []int{x.dims[0], wh.dims[0]}})
}
