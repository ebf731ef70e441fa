package gomlx

import (
	"fmt"
	"slices"

	gomlxcompute "github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/ml/layers/activation"
	"github.com/gomlx/gomlx/ml/nn"

	"github.com/groundmesh/groundmesh/model"
)

// ops implements model.Ops over GoMLX graph nodes: the model's one
// definition (model.Net) builds the training step, whose gradient GoMLX
// derives, and the grounder's inference graph.
type ops struct {
	g      *graph.Graph
	params map[string]*graph.Node
}

var _ model.Ops[*graph.Node] = (*ops)(nil)

// newOps returns the operations of g, whose parameters are params by
// canonical name.
func newOps(g *graph.Graph, params map[string]*graph.Node) *ops {
	return &ops{g: g, params: params}
}

func (o *ops) Param(name string, shape ...int) *graph.Node {
	p, ok := o.params[name]
	if !ok {
		panic(fmt.Sprintf("gomlx: the graph has no parameter %q", name))
	}
	if !slices.Equal(p.Shape().Dimensions, shape) {
		panic(fmt.Sprintf("gomlx: parameter %q is %v, the definition reads %v", name, p.Shape().Dimensions, shape))
	}
	return p
}

func (o *ops) Shape(x *graph.Node) []int { return slices.Clone(x.Shape().Dimensions) }
func (o *ops) Scalar(v float64) *graph.Node {
	return graph.Scalar(o.g, dtypes.Float32, v)
}
func (o *ops) Iota(axis int, dims ...int) *graph.Node {
	return graph.Iota(o.g, shapes.Make(dtypes.Float32, dims...), axis)
}
func (o *ops) LowerTri(n int) *graph.Node {
	return graph.ConvertDType(graph.LowerTriangular(o.g, n), dtypes.Float32)
}
func (o *ops) ZerosLike(x *graph.Node) *graph.Node { return graph.ZerosLike(x) }
func (o *ops) Add(a, b *graph.Node) *graph.Node    { return graph.Add(a, b) }
func (o *ops) Sub(a, b *graph.Node) *graph.Node    { return graph.Sub(a, b) }
func (o *ops) Mul(a, b *graph.Node) *graph.Node    { return graph.Mul(a, b) }
func (o *ops) Div(a, b *graph.Node) *graph.Node    { return graph.Div(a, b) }
func (o *ops) Max(a, b *graph.Node) *graph.Node    { return graph.Max(a, b) }
func (o *ops) Min(a, b *graph.Node) *graph.Node    { return graph.Min(a, b) }
func f32(x *graph.Node) *graph.Node                { return graph.ConvertDType(x, dtypes.Float32) }
func (o *ops) Greater(a, b *graph.Node) *graph.Node {
	return f32(graph.GreaterThan(a, b))
}
func (o *ops) Equal(a, b *graph.Node) *graph.Node { return f32(graph.Equal(a, b)) }
func (o *ops) GreaterEq(a, b *graph.Node) *graph.Node {
	return f32(graph.GreaterOrEqual(a, b))
}
func (o *ops) LessEq(a, b *graph.Node) *graph.Node { return f32(graph.LessOrEqual(a, b)) }
func (o *ops) Scale(x *graph.Node, s float64) *graph.Node {
	return graph.MulScalar(x, s)
}
func (o *ops) Shift(x *graph.Node, s float64) *graph.Node {
	return graph.AddScalar(x, s)
}
func (o *ops) Neg(x *graph.Node) *graph.Node   { return graph.Neg(x) }
func (o *ops) Abs(x *graph.Node) *graph.Node   { return graph.Abs(x) }
func (o *ops) Exp(x *graph.Node) *graph.Node   { return graph.Exp(x) }
func (o *ops) Log(x *graph.Node) *graph.Node   { return graph.Log(x) }
func (o *ops) Log1P(x *graph.Node) *graph.Node { return graph.Log1P(x) }
func (o *ops) Sqrt(x *graph.Node) *graph.Node  { return graph.Sqrt(x) }
func (o *ops) Square(x *graph.Node) *graph.Node {
	return graph.Square(x)
}
func (o *ops) Floor(x *graph.Node) *graph.Node { return graph.Floor(x) }
func (o *ops) Clip(x *graph.Node, lo, hi float64) *graph.Node {
	return graph.ClipScalar(x, lo, hi)
}
func (o *ops) Gelu(x *graph.Node) *graph.Node { return activation.Gelu(x) }
func (o *ops) StopGradient(x *graph.Node) *graph.Node {
	return graph.StopGradient(x)
}
func (o *ops) ToFloat(x *graph.Node) *graph.Node { return f32(x) }
func (o *ops) ToInt(x *graph.Node) *graph.Node {
	return graph.ConvertDType(x, dtypes.Int32)
}
func (o *ops) Reshape(x *graph.Node, dims ...int) *graph.Node {
	return graph.Reshape(x, dims...)
}
func (o *ops) Transpose(x *graph.Node, perm ...int) *graph.Node {
	return graph.TransposeAllAxes(x, perm...)
}

func (o *ops) Slice(x *graph.Node, ranges ...model.Range) *graph.Node {
	rank := x.Rank()
	specs := make([]graph.SliceAxisSpec, rank)
	for i := range specs {
		specs[i] = graph.AxisRange()
	}
	for _, r := range ranges {
		a := r.Axis
		if a < 0 {
			a += rank
		}
		s := graph.AxisRange(r.From, r.To)
		if r.Stride > 1 {
			s = s.Stride(r.Stride)
		}
		specs[a] = s
	}
	return graph.Slice(x, specs...)
}

func (o *ops) Concat(axis int, xs ...*graph.Node) *graph.Node {
	return graph.Concatenate(xs, axis)
}

func (o *ops) reduce(x *graph.Node, keep bool, axes []int, fn func(*graph.Node, ...int) *graph.Node) *graph.Node {
	if keep {
		if len(axes) == 0 {
			axes = make([]int, x.Rank())
			for i := range axes {
				axes[i] = i
			}
		}
		return graph.ReduceAndKeep(x, fn, axes...)
	}
	return fn(x, axes...)
}

func (o *ops) ReduceSum(x *graph.Node, keep bool, axes ...int) *graph.Node {
	return o.reduce(x, keep, axes, graph.ReduceSum)
}
func (o *ops) ReduceMax(x *graph.Node, keep bool, axes ...int) *graph.Node {
	return o.reduce(x, keep, axes, graph.ReduceMax)
}
func (o *ops) ReduceMean(x *graph.Node, keep bool, axes ...int) *graph.Node {
	return o.reduce(x, keep, axes, graph.ReduceMean)
}
func (o *ops) Softmax(x *graph.Node) *graph.Node    { return graph.Softmax(x, -1) }
func (o *ops) LogSoftmax(x *graph.Node) *graph.Node { return graph.LogSoftmax(x, -1) }
func (o *ops) LayerNorm(x, w, b *graph.Node) *graph.Node {
	return nn.LayerNorm(x, []int{-1}, model.LayerNormEps, w, b, nil)
}

func (o *ops) Dense(x, w *graph.Node, b ...*graph.Node) *graph.Node {
	var bias *graph.Node
	if len(b) > 0 {
		bias = b[0]
	}
	return nn.Dense(x, w, bias, gomlxcompute.DenseLayoutInputOutputs)
}

func (o *ops) MatMul(a, b *graph.Node) *graph.Node {
	r := a.Rank()
	batch := make([]int, r-2)
	for i := range batch {
		batch[i] = i
	}
	return graph.DotGeneral(a, []int{r - 1}, batch, b, []int{r - 2}, batch)
}

// MatMulT transposes b explicitly: the Go backend's small-matmul kernels
// run a right-hand side laid out contracting axis first several times
// faster than the contracting-last layout.
// Conv3x3 is the column form: on GoMLX's Go backend it runs (with its
// gradient) faster than the generic convolution.
func (o *ops) Conv3x3(x, w, b *graph.Node, stride int) *graph.Node {
	return model.Conv3x3Columns[*graph.Node](o, x, w, b, stride)
}

func (o *ops) MatMulT(a, b *graph.Node) *graph.Node {
	r := b.Rank()
	perm := make([]int, r)
	for i := range perm {
		perm[i] = i
	}
	perm[r-2], perm[r-1] = r-1, r-2
	return o.MatMul(a, graph.TransposeAllAxes(b, perm...))
}

func (o *ops) Einsum(spec string, a, b *graph.Node) *graph.Node { return graph.Einsum(spec, a, b) }

func (o *ops) Gather(table, idx *graph.Node) *graph.Node {
	return graph.Gather(table, graph.InsertAxes(idx, -1))
}

func (o *ops) GatherElems(x, idx *graph.Node) *graph.Node {
	d := idx.Shape().Dimensions
	n, s := d[0], d[1]
	rows := graph.Reshape(graph.Iota(o.g, shapes.Make(dtypes.Int32, n, s), 0), n, s, 1)
	return graph.Gather(x, graph.Concatenate([]*graph.Node{rows, graph.Reshape(idx, n, s, 1)}, -1))
}

func (o *ops) OneHot(idx *graph.Node, n int) *graph.Node {
	return graph.OneHot(idx, n, dtypes.Float32)
}
