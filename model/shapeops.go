package model

import (
	"fmt"
	"slices"
	"strings"
)

// shape is a tensor known only by its dimensions: running the definition
// over shapes (shapeOps) lists the parameters it reads and checks that
// every operation's operands fit, with no arithmetic.
type shape struct{ dims []int }

// shapeOps implements Ops over shapes and records the parameters in the
// order the definition first reads them. Misfitting operands panic (a bug
// in the definition); Params turns that into a message.
type shapeOps struct {
	params []ParamSpec
	seen   map[string][]int
}

func (s *shapeOps) mk(dims ...int) *shape { return &shape{dims: slices.Clone(dims)} }

func (s *shapeOps) Param(name string, dims ...int) *shape {
	if prev, ok := s.seen[name]; ok {
		if !slices.Equal(prev, dims) {
			panic(fmt.Sprintf("parameter %q read as %v and as %v", name, prev, dims))
		}
		return s.mk(dims...)
	}
	if s.seen == nil {
		s.seen = map[string][]int{}
	}
	s.seen[name] = slices.Clone(dims)
	s.params = append(s.params, ParamSpec{Name: name, Shape: slices.Clone(dims)})
	return s.mk(dims...)
}

func (s *shapeOps) Shape(x *shape) []int               { return slices.Clone(x.dims) }
func (s *shapeOps) Scalar(float64) *shape              { return s.mk() }
func (s *shapeOps) Iota(_ int, dims ...int) *shape     { return s.mk(dims...) }
func (s *shapeOps) LowerTri(n int) *shape              { return s.mk(n, n) }
func (s *shapeOps) ZerosLike(x *shape) *shape          { return s.mk(x.dims...) }
func (s *shapeOps) Add(a, b *shape) *shape             { return s.broadcast("add", a, b) }
func (s *shapeOps) Sub(a, b *shape) *shape             { return s.broadcast("sub", a, b) }
func (s *shapeOps) Mul(a, b *shape) *shape             { return s.broadcast("mul", a, b) }
func (s *shapeOps) Div(a, b *shape) *shape             { return s.broadcast("div", a, b) }
func (s *shapeOps) Max(a, b *shape) *shape             { return s.broadcast("max", a, b) }
func (s *shapeOps) Min(a, b *shape) *shape             { return s.broadcast("min", a, b) }
func (s *shapeOps) Greater(a, b *shape) *shape         { return s.broadcast("greater", a, b) }
func (s *shapeOps) Equal(a, b *shape) *shape           { return s.broadcast("equal", a, b) }
func (s *shapeOps) GreaterEq(a, b *shape) *shape       { return s.broadcast("greater_eq", a, b) }
func (s *shapeOps) LessEq(a, b *shape) *shape          { return s.broadcast("less_eq", a, b) }
func (s *shapeOps) Scale(x *shape, _ float64) *shape   { return x }
func (s *shapeOps) Shift(x *shape, _ float64) *shape   { return x }
func (s *shapeOps) Neg(x *shape) *shape                { return x }
func (s *shapeOps) Abs(x *shape) *shape                { return x }
func (s *shapeOps) Exp(x *shape) *shape                { return x }
func (s *shapeOps) Log(x *shape) *shape                { return x }
func (s *shapeOps) Log1P(x *shape) *shape              { return x }
func (s *shapeOps) Sqrt(x *shape) *shape               { return x }
func (s *shapeOps) Square(x *shape) *shape             { return x }
func (s *shapeOps) Floor(x *shape) *shape              { return x }
func (s *shapeOps) Clip(x *shape, _, _ float64) *shape { return x }
func (s *shapeOps) Gelu(x *shape) *shape               { return x }
func (s *shapeOps) StopGradient(x *shape) *shape       { return x }
func (s *shapeOps) ToFloat(x *shape) *shape            { return x }
func (s *shapeOps) ToInt(x *shape) *shape              { return x }
func (s *shapeOps) Softmax(x *shape) *shape            { return x }
func (s *shapeOps) LogSoftmax(x *shape) *shape         { return x }

func (s *shapeOps) broadcast(op string, a, b *shape) *shape {
	switch {
	case len(a.dims) == 0:
		return b
	case len(b.dims) == 0:
		return a
	case len(a.dims) != len(b.dims):
		panic(fmt.Sprintf("%s of %v and %v: ranks differ", op, a.dims, b.dims))
	}
	out := make([]int, len(a.dims))
	for i := range out {
		switch x, y := a.dims[i], b.dims[i]; {
		case x == y || y == 1:
			out[i] = x
		case x == 1:
			out[i] = y
		default:
			panic(fmt.Sprintf("%s of %v and %v: axis %d does not broadcast", op, a.dims, b.dims, i))
		}
	}
	return s.mk(out...)
}

func axisOf(axis, rank int) int {
	if axis < 0 {
		axis += rank
	}
	if axis < 0 || axis >= rank {
		panic(fmt.Sprintf("axis out of range for rank %d", rank))
	}
	return axis
}

func (s *shapeOps) Reshape(x *shape, dims ...int) *shape {
	n, free, known := 1, -1, 1
	for _, d := range x.dims {
		n *= d
	}
	out := slices.Clone(dims)
	for i, d := range out {
		if d == -1 {
			free = i
		} else {
			known *= d
		}
	}
	if free >= 0 && known > 0 {
		out[free] = n / known
		known *= out[free]
	}
	if known != n {
		panic(fmt.Sprintf("reshape %v to %v", x.dims, dims))
	}
	return s.mk(out...)
}

func (s *shapeOps) Transpose(x *shape, perm ...int) *shape {
	if len(perm) != len(x.dims) {
		panic(fmt.Sprintf("transpose %v by %v", x.dims, perm))
	}
	out := make([]int, len(perm))
	for i, p := range perm {
		out[i] = x.dims[p]
	}
	return s.mk(out...)
}

func (s *shapeOps) Slice(x *shape, ranges ...Range) *shape {
	out := slices.Clone(x.dims)
	for _, r := range ranges {
		a := axisOf(r.Axis, len(out))
		st := max(r.Stride, 1)
		if r.From < 0 || r.To > x.dims[a] || r.From >= r.To {
			panic(fmt.Sprintf("slice [%d, %d) of axis %d of %v", r.From, r.To, a, x.dims))
		}
		out[a] = (r.To - r.From + st - 1) / st
	}
	return s.mk(out...)
}

func (s *shapeOps) Concat(axis int, xs ...*shape) *shape {
	out := slices.Clone(xs[0].dims)
	a := axisOf(axis, len(out))
	out[a] = 0
	for _, x := range xs {
		for i, d := range x.dims {
			if i != a && d != out[i] {
				panic(fmt.Sprintf("concat %v along %d: %v", xs[0].dims, a, x.dims))
			}
		}
		out[a] += x.dims[a]
	}
	return s.mk(out...)
}

func (s *shapeOps) reduce(x *shape, keep bool, axes []int) *shape {
	if len(axes) == 0 {
		if keep {
			out := slices.Clone(x.dims)
			for i := range out {
				out[i] = 1
			}
			return s.mk(out...)
		}
		return s.mk()
	}
	drop := map[int]bool{}
	for _, a := range axes {
		drop[axisOf(a, len(x.dims))] = true
	}
	var out []int
	for i, d := range x.dims {
		switch {
		case !drop[i]:
			out = append(out, d)
		case keep:
			out = append(out, 1)
		}
	}
	return s.mk(out...)
}

func (s *shapeOps) ReduceSum(x *shape, keep bool, axes ...int) *shape { return s.reduce(x, keep, axes) }
func (s *shapeOps) ReduceMax(x *shape, keep bool, axes ...int) *shape { return s.reduce(x, keep, axes) }
func (s *shapeOps) ReduceMean(x *shape, keep bool, axes ...int) *shape {
	return s.reduce(x, keep, axes)
}

func (s *shapeOps) LayerNorm(x, w, b *shape) *shape {
	last := x.dims[len(x.dims)-1]
	if !slices.Equal(w.dims, []int{last}) || !slices.Equal(b.dims, []int{last}) {
		panic(fmt.Sprintf("layer norm of %v with %v, %v", x.dims, w.dims, b.dims))
	}
	return x
}

func (s *shapeOps) Dense(x, w *shape, b ...*shape) *shape {
	if len(w.dims) != 2 || x.dims[len(x.dims)-1] != w.dims[0] {
		panic(fmt.Sprintf("dense of %v with %v", x.dims, w.dims))
	}
	if len(b) > 0 && !slices.Equal(b[0].dims, w.dims[1:]) {
		panic(fmt.Sprintf("dense bias %v for %v", b[0].dims, w.dims))
	}
	out := slices.Clone(x.dims)
	out[len(out)-1] = w.dims[1]
	return s.mk(out...)
}

func (s *shapeOps) Conv3x3(x, w, b *shape, stride int) *shape {
	if len(x.dims) != 4 || len(w.dims) != 4 || w.dims[0] != 3 || w.dims[1] != 3 || w.dims[2] != x.dims[3] ||
		!slices.Equal(b.dims, w.dims[3:]) || (stride != 1 && stride != 2) || x.dims[1] != x.dims[2] || stride == 2 && x.dims[1]%2 != 0 {
		panic(fmt.Sprintf("conv3x3 of %v with kernel %v, bias %v, stride %d", x.dims, w.dims, b.dims, stride))
	}
	return s.mk(x.dims[0], x.dims[1]/stride, x.dims[2]/stride, w.dims[3])
}

func (s *shapeOps) MatMul(a, b *shape) *shape {
	r := len(a.dims)
	if r < 2 || len(b.dims) != r || !slices.Equal(a.dims[:r-2], b.dims[:r-2]) || a.dims[r-1] != b.dims[r-2] {
		panic(fmt.Sprintf("matmul of %v and %v", a.dims, b.dims))
	}
	out := slices.Clone(a.dims)
	out[r-1] = b.dims[r-1]
	return s.mk(out...)
}

func (s *shapeOps) MatMulT(a, b *shape) *shape {
	r := len(b.dims)
	if r < 2 {
		panic(fmt.Sprintf("matmul of %v and the transpose of %v", a.dims, b.dims))
	}
	perm := make([]int, r)
	for i := range perm {
		perm[i] = i
	}
	perm[r-2], perm[r-1] = r-1, r-2
	return s.MatMul(a, s.Transpose(b, perm...))
}

func (s *shapeOps) Einsum(spec string, a, b *shape) *shape {
	in, outSpec, ok := strings.Cut(spec, "->")
	as, bs, ok2 := strings.Cut(in, ",")
	if !ok || !ok2 || len(as) != len(a.dims) || len(bs) != len(b.dims) {
		panic(fmt.Sprintf("einsum %q of %v and %v", spec, a.dims, b.dims))
	}
	size := map[rune]int{}
	for _, side := range []struct {
		letters string
		dims    []int
	}{{as, a.dims}, {bs, b.dims}} {
		for i, l := range side.letters {
			if d, seen := size[l]; seen && d != side.dims[i] {
				panic(fmt.Sprintf("einsum %q of %v and %v: %c is %d and %d", spec, a.dims, b.dims, l, d, side.dims[i]))
			}
			size[l] = side.dims[i]
		}
	}
	var out []int
	for _, l := range outSpec {
		out = append(out, size[l])
	}
	return s.mk(out...)
}

func (s *shapeOps) Gather(table, idx *shape) *shape {
	return s.mk(append(slices.Clone(idx.dims), table.dims[1:]...)...)
}

func (s *shapeOps) GatherElems(x, idx *shape) *shape {
	if len(x.dims) != 2 || len(idx.dims) != 2 || x.dims[0] != idx.dims[0] {
		panic(fmt.Sprintf("gather elements of %v by %v", x.dims, idx.dims))
	}
	return s.mk(idx.dims...)
}

func (s *shapeOps) OneHot(idx *shape, n int) *shape {
	return s.mk(append(slices.Clone(idx.dims), n)...)
}

// deriveParams runs a whole training step of c (every loss its options
// turn on) over shapes, and returns the parameters it reads.
func deriveParams(c Config) (params []ParamSpec, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("model config: the definition does not fit it: %v", r)
		}
	}()
	s := &shapeOps{}
	const b, k = 2, 2
	l := c.MaxSeq
	in := Inputs[*shape]{
		Tokens: s.mk(b, l), PatchIdx: s.mk(b, l), IsPatch: s.mk(b, l), Images: s.mk(k, c.ImageSize, c.ImageSize, 3),
		TextMask: s.mk(b, l), ImgRow: s.mk(k),
	}
	p := c.Patches()
	lb := Labels[*shape]{
		LossIdx: s.mk(4), LossTgt: s.mk(4), LossW: s.mk(4), PatchTgt: s.mk(b, l), PatchW: s.mk(b, l),
		PatchBox: s.mk(b, l, 4), PatchBoxW: s.mk(b, l), ImgFirst: s.mk(b), RefBox: s.mk(b, 4), RefW: s.mk(b),
		Exists: s.mk(b), ExistsW: s.mk(b), CellIDs: s.mk(b, p, CellWords), CellIDW: s.mk(b, p, CellWords), CellW: s.mk(b, p),
		NameImg: s.mk(b), NameIDs: s.mk(b, c.GrounderNameSlots), NameW: s.mk(b, c.GrounderNameSlots),
	}
	NewNet[*shape](s, c).TrainLosses(in, lb, false)
	return s.params, nil
}

// Dims is a tensor known only by its dimensions (ShapeOps).
type Dims = shape

// ShapeOps returns Ops over dimensions alone: each operation checks that
// its operands fit (panicking with the misfit when they do not) and
// returns its result's dimensions, computing nothing. An exporter that
// records the definition as a graph runs it over these for the shapes.
func ShapeOps() Ops[*Dims] { return &shapeOps{} }

// NewDims is a tensor of the given dimensions for ShapeOps.
func NewDims(dims ...int) *Dims { return &shape{dims: slices.Clone(dims)} }
