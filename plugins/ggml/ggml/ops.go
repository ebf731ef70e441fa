//go:build ggml

package ggml

/*
#include "gm.h"
*/
import "C"

import (
	"slices"

	"github.com/groundmesh/groundmesh/model"
)

// Ops implements model.Ops over ggml graph nodes: every operation adds
// nodes to G; W holds the parameters. One goroutine at a time.
type Ops struct {
	G *Graph
	W *Weights
	// plain caches the float32 [in, out] form of dense weights read by
	// operations other than Dense, per graph (Reset clears it).
	plain map[*Tensor]*Tensor
}

var _ model.Ops[*Tensor] = (*Ops)(nil)

// Reset empties the graph for the next computation.
func (o *Ops) Reset() {
	o.G.Reset()
	clear(o.plain)
}

func (o *Ops) ctx() *C.struct_ggml_context { return o.G.ctx }

// wrap is t (contiguous, numel(dims) elements) viewed as dims.
func (o *Ops) wrap(op string, t *C.struct_ggml_tensor, dims []int, isInt bool) *Tensor {
	o.G.room(op)
	ne := ne4(dims)
	if C.ggml_nelements(t) != C.int64_t(numel(dims)) {
		fail(op, "%d elements for dims %v", int64(C.ggml_nelements(t)), dims)
	}
	r := C.ggml_reshape_4d(o.ctx(), t, C.int64_t(ne[0]), C.int64_t(ne[1]), C.int64_t(ne[2]), C.int64_t(ne[3]))
	return &Tensor{t: r, dims: slices.Clone(dims), isInt: isInt}
}

// as is x's ggml tensor reshaped to row-major dims (at most 4, same
// element count).
func (o *Ops) as(x *Tensor, dims ...int) *C.struct_ggml_tensor {
	o.G.room("reshape")
	if numel(dims) != numel(x.dims) {
		fail("reshape", "%v to %v", x.dims, dims)
	}
	ne := ne4(dims)
	return C.ggml_reshape_4d(o.ctx(), x.t, C.int64_t(ne[0]), C.int64_t(ne[1]), C.int64_t(ne[2]), C.int64_t(ne[3]))
}

// in is x as a float32 tensor in its logical layout: a dense weight
// transposed back (and dequantized), an integer tensor converted.
func (o *Ops) in(x *Tensor) *Tensor {
	if x.isInt {
		return o.ToFloat(x)
	}
	if !x.dense && C.gm_type(x.t) == C.GGML_TYPE_F32 {
		return x
	}
	// A dense weight, or a float16 or quantized one read by an operation
	// other than Dense or Gather: converted once per graph.
	if p, ok := o.plain[x]; ok {
		return p
	}
	t := x.t
	if C.gm_type(t) != C.GGML_TYPE_F32 {
		t = C.ggml_cast(o.ctx(), t, C.GGML_TYPE_F32)
	}
	if x.dense {
		// t's ne is [in, out]: its transpose, made contiguous, is the
		// row-major [in, out].
		t = C.ggml_cont(o.ctx(), C.ggml_transpose(o.ctx(), t))
	}
	p := o.wrap("weight", t, x.dims, false)
	if o.plain == nil {
		o.plain = map[*Tensor]*Tensor{}
	}
	o.plain[x] = p
	return p
}

func (o *Ops) Param(name string, shape ...int) *Tensor {
	p, ok := o.W.params[name]
	if !ok {
		fail("param", "no parameter %q", name)
	}
	if !slices.Equal(p.dims, shape) {
		fail("param", "parameter %q is %v, the definition reads %v", name, p.dims, shape)
	}
	return p
}

func (o *Ops) Shape(x *Tensor) []int { return slices.Clone(x.dims) }

func (o *Ops) Scalar(v float64) *Tensor { return o.G.Input([]float32{float32(v)}) }

func (o *Ops) Iota(axis int, dims ...int) *Tensor {
	axis = axisOf(axis, len(dims))
	v := make([]float32, numel(dims))
	inner := numel(dims[axis+1:])
	for i := range v {
		v[i] = float32(i / inner % dims[axis])
	}
	return o.G.Input(v, dims...)
}

func (o *Ops) LowerTri(n int) *Tensor {
	v := make([]float32, n*n)
	for i := range n {
		for j := 0; j <= i; j++ {
			v[i*n+j] = 1
		}
	}
	return o.G.Input(v, n, n)
}

func (o *Ops) ZerosLike(x *Tensor) *Tensor {
	return o.G.Input(make([]float32, numel(x.dims)), x.dims...)
}

func axisOf(axis, rank int) int {
	if axis < 0 {
		axis += rank
	}
	if axis < 0 || axis >= rank {
		fail("axis", "axis %d of a rank-%d tensor", axis, rank)
	}
	return axis
}

type binOp func(ctx *C.struct_ggml_context, a, b *C.struct_ggml_tensor) *C.struct_ggml_tensor

// binary broadcasts a and b (a scalar against anything; equal ranks with
// size-1 axes against any size) and applies f.
func (o *Ops) binary(name string, a, b *Tensor, f binOp, commutes bool) *Tensor {
	a, b = o.in(a), o.in(b)
	ad, bd := a.dims, b.dims
	switch {
	case numel(ad) == 1 && len(ad) < len(bd):
		ad = ones(len(bd))
	case numel(bd) == 1 && len(bd) < len(ad):
		bd = ones(len(ad))
	case len(ad) != len(bd):
		fail(name, "ranks differ: %v and %v", a.dims, b.dims)
	}
	out := make([]int, len(ad))
	for i := range ad {
		switch {
		case ad[i] == bd[i] || bd[i] == 1:
			out[i] = ad[i]
		case ad[i] == 1:
			out[i] = bd[i]
		default:
			fail(name, "dims %v and %v do not broadcast", a.dims, b.dims)
		}
	}
	// Merge neighbouring axes that broadcast alike, to at most four.
	var ga, gb, gout []int
	prev := -1
	for i := range out {
		if out[i] == 1 {
			continue
		}
		kind := 0
		if ad[i] == out[i] {
			kind |= 1
		}
		if bd[i] == out[i] {
			kind |= 2
		}
		if kind == prev {
			n := len(gout) - 1
			ga[n] *= ad[i]
			gb[n] *= bd[i]
			gout[n] *= out[i]
			continue
		}
		prev = kind
		ga, gb, gout = append(ga, ad[i]), append(gb, bd[i]), append(gout, out[i])
	}
	if len(gout) == 0 {
		ga, gb, gout = []int{1}, []int{1}, []int{1}
	}
	if len(gout) > 4 {
		fail(name, "dims %v and %v broadcast over more than four groups of axes", a.dims, b.dims)
	}
	o.G.room(name)
	ta, tb := o.as(a, ga...), o.as(b, gb...)
	fits := func(x []int) bool { return slices.Equal(x, gout) }
	var r *C.struct_ggml_tensor
	switch {
	case fits(ga):
		r = f(o.ctx(), ta, tb)
	case commutes && fits(gb):
		r = f(o.ctx(), tb, ta)
	default:
		tmpl := o.G.newTensor(C.GGML_TYPE_F32, gout)
		ta = C.ggml_repeat(o.ctx(), ta, tmpl)
		r = f(o.ctx(), ta, tb)
	}
	return o.wrap(name, r, out, false)
}

func ones(n int) []int {
	d := make([]int, n)
	for i := range d {
		d[i] = 1
	}
	return d
}

func add(c *C.struct_ggml_context, a, b *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_add(c, a, b)
}
func sub(c *C.struct_ggml_context, a, b *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_sub(c, a, b)
}
func mul(c *C.struct_ggml_context, a, b *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_mul(c, a, b)
}
func div(c *C.struct_ggml_context, a, b *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_div(c, a, b)
}

func (o *Ops) Add(a, b *Tensor) *Tensor { return o.binary("add", a, b, add, true) }
func (o *Ops) Sub(a, b *Tensor) *Tensor { return o.binary("sub", a, b, sub, false) }
func (o *Ops) Mul(a, b *Tensor) *Tensor { return o.binary("mul", a, b, mul, true) }
func (o *Ops) Div(a, b *Tensor) *Tensor { return o.binary("div", a, b, div, false) }

func (o *Ops) unary(name string, x *Tensor, f func(*C.struct_ggml_context, *C.struct_ggml_tensor) *C.struct_ggml_tensor) *Tensor {
	x = o.in(x)
	o.G.room(name)
	return o.wrap(name, f(o.ctx(), x.t), x.dims, false)
}

func relu(c *C.struct_ggml_context, x *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_relu(c, x)
}
func step(c *C.struct_ggml_context, x *C.struct_ggml_tensor) *C.struct_ggml_tensor {
	return C.ggml_step(c, x)
}

// Max is a + relu(b - a); Min is a - relu(a - b).
func (o *Ops) Max(a, b *Tensor) *Tensor {
	return o.Add(a, o.unary("relu", o.Sub(b, a), relu))
}
func (o *Ops) Min(a, b *Tensor) *Tensor {
	return o.Sub(a, o.unary("relu", o.Sub(a, b), relu))
}

// The comparisons are steps of differences (ggml's step is 1 where x > 0).
func (o *Ops) Greater(a, b *Tensor) *Tensor { return o.unary("step", o.Sub(a, b), step) }
func (o *Ops) Equal(a, b *Tensor) *Tensor {
	return o.oneMinus(o.unary("step", o.Abs(o.Sub(a, b)), step))
}
func (o *Ops) GreaterEq(a, b *Tensor) *Tensor { return o.oneMinus(o.unary("step", o.Sub(b, a), step)) }
func (o *Ops) LessEq(a, b *Tensor) *Tensor    { return o.oneMinus(o.unary("step", o.Sub(a, b), step)) }
func (o *Ops) oneMinus(x *Tensor) *Tensor     { return o.Shift(o.Neg(x), 1) }

func (o *Ops) Scale(x *Tensor, s float64) *Tensor {
	return o.unary("scale", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_scale(c, t, C.float(s))
	})
}

func (o *Ops) Shift(x *Tensor, s float64) *Tensor {
	return o.unary("shift", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_scale_bias(c, t, 1, C.float(s))
	})
}

func (o *Ops) Neg(x *Tensor) *Tensor {
	return o.unary("neg", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor { return C.ggml_neg(c, t) })
}
func (o *Ops) Abs(x *Tensor) *Tensor {
	return o.unary("abs", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor { return C.ggml_abs(c, t) })
}
func (o *Ops) Exp(x *Tensor) *Tensor {
	return o.unary("exp", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor { return C.ggml_exp(c, t) })
}
func (o *Ops) Log(x *Tensor) *Tensor {
	return o.unary("log", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor { return C.ggml_log(c, t) })
}
func (o *Ops) Log1P(x *Tensor) *Tensor { return o.Log(o.Shift(x, 1)) }
func (o *Ops) Sqrt(x *Tensor) *Tensor {
	return o.unary("sqrt", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_sqrt(c, t)
	})
}
func (o *Ops) Square(x *Tensor) *Tensor {
	return o.unary("sqr", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor { return C.ggml_sqr(c, t) })
}
func (o *Ops) Floor(x *Tensor) *Tensor {
	return o.unary("floor", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_floor(c, t)
	})
}
func (o *Ops) Clip(x *Tensor, lo, hi float64) *Tensor {
	return o.unary("clamp", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		// ggml_clamp works in place (a view of its input): copy first.
		return C.ggml_clamp(c, C.ggml_cont(c, t), C.float(lo), C.float(hi))
	})
}
func (o *Ops) Gelu(x *Tensor) *Tensor {
	return o.unary("gelu_erf", x, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor) *C.struct_ggml_tensor {
		return C.ggml_gelu_erf(c, t)
	})
}

// StopGradient is x: ggml computes no gradients here.
func (o *Ops) StopGradient(x *Tensor) *Tensor { return x }

func (o *Ops) ToFloat(x *Tensor) *Tensor {
	if !x.isInt {
		return x
	}
	o.G.room("to_float")
	return o.wrap("to_float", C.ggml_cast(o.ctx(), x.t, C.GGML_TYPE_F32), x.dims, false)
}

func (o *Ops) ToInt(x *Tensor) *Tensor {
	if x.isInt {
		return x
	}
	x = o.in(x)
	o.G.room("to_int")
	return o.wrap("to_int", C.ggml_cast(o.ctx(), x.t, C.GGML_TYPE_I32), x.dims, true)
}

func (o *Ops) Reshape(x *Tensor, dims ...int) *Tensor {
	if !x.isInt {
		x = o.in(x)
	}
	dims = slices.Clone(dims)
	if i := slices.Index(dims, -1); i >= 0 {
		rest := 1
		for j, d := range dims {
			if j != i {
				rest *= d
			}
		}
		if rest == 0 || numel(x.dims)%rest != 0 {
			fail("reshape", "%v to %v", x.dims, dims)
		}
		dims[i] = numel(x.dims) / rest
	}
	if numel(dims) != numel(x.dims) {
		fail("reshape", "%v to %v", x.dims, dims)
	}
	return &Tensor{t: o.as(x, dims...), dims: dims, isInt: x.isInt}
}

func (o *Ops) Transpose(x *Tensor, perm ...int) *Tensor {
	if !x.isInt {
		x = o.in(x)
	}
	r := len(x.dims)
	if len(perm) != r {
		fail("transpose", "perm %v of a rank-%d tensor", perm, r)
	}
	out := make([]int, r)
	for j, p := range perm {
		out[j] = x.dims[p]
	}
	// Drop size-1 axes, then merge input axes that stay neighbours.
	var keep []int // input axes kept, in output order
	for _, p := range perm {
		if x.dims[p] != 1 {
			keep = append(keep, p)
		}
	}
	type group struct{ first, size int }
	var groups []group // in output order
	for i, p := range keep {
		if i > 0 && p == keep[i-1]+1 {
			groups[len(groups)-1].size *= x.dims[p]
			continue
		}
		groups = append(groups, group{p, x.dims[p]})
	}
	order := make([]int, len(groups)) // groups sorted by input position
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return groups[a].first - groups[b].first })
	inDims := make([]int, len(groups))
	gperm := make([]int, len(groups)) // output j reads input group gperm[j]
	for k, gi := range order {
		inDims[k] = groups[gi].size
		gperm[gi] = k
	}
	m := len(groups)
	identity := true
	for j, p := range gperm {
		identity = identity && j == p
	}
	if identity {
		return o.Reshape(x, out...)
	}
	if m > 4 {
		// Split on the first output axis: each of its slices is a
		// transpose of one rank less, then stack them.
		xm := o.Reshape(x, inDims...)
		g0 := gperm[0]
		sub := make([]int, 0, m-1)
		for _, p := range gperm[1:] {
			if p > g0 {
				p--
			}
			sub = append(sub, p)
		}
		rest := slices.Delete(slices.Clone(inDims), g0, g0+1)
		var parts []*Tensor
		for k := range inDims[g0] {
			s := o.Reshape(o.Slice(xm, model.Range{Axis: g0, From: k, To: k + 1}), rest...)
			t := o.Transpose(s, sub...)
			parts = append(parts, o.Reshape(t, append([]int{1}, o.Shape(t)...)...))
		}
		return o.Reshape(o.Concat(0, parts...), out...)
	}
	// ggml_permute: source ggml axis a goes to position ax[a].
	ax := [4]C.int{0, 1, 2, 3}
	for j, i := range gperm {
		ax[m-1-i] = C.int(m - 1 - j)
	}
	o.G.room("transpose")
	t := C.ggml_permute(o.ctx(), o.as(x, inDims...), ax[0], ax[1], ax[2], ax[3])
	return o.wrap("transpose", C.ggml_cont(o.ctx(), t), out, x.isInt)
}

func (o *Ops) Slice(x *Tensor, ranges ...model.Range) *Tensor {
	if !x.isInt {
		x = o.in(x)
	}
	r := len(x.dims)
	dims := slices.Clone(x.dims)
	from, to, stride := make([]int, r), slices.Clone(x.dims), ones(r)
	for _, rg := range ranges {
		a := axisOf(rg.Axis, r)
		from[a], to[a] = rg.From, rg.To
		if rg.Stride > 1 {
			stride[a] = rg.Stride
		}
		if rg.From < 0 || rg.To > dims[a] || rg.From >= rg.To {
			fail("slice", "[%d, %d) of axis %d of %v", rg.From, rg.To, a, x.dims)
		}
	}
	out := make([]int, r)
	whole := true
	for i := range r {
		out[i] = (to[i] - from[i] + stride[i] - 1) / stride[i]
		whole = whole && out[i] == dims[i]
	}
	if whole {
		return x
	}
	// Merge an axis with the whole axis after it, to at most four.
	for len(dims) > 4 {
		merged := false
		for i := 0; i+1 < len(dims); i++ {
			if stride[i] == 1 && from[i+1] == 0 && to[i+1] == dims[i+1] && stride[i+1] == 1 {
				n := dims[i+1]
				dims[i] *= n
				from[i], to[i] = from[i]*n, to[i]*n
				dims = slices.Delete(dims, i+1, i+2)
				from, to, stride = slices.Delete(from, i+1, i+2), slices.Delete(to, i+1, i+2), slices.Delete(stride, i+1, i+2)
				merged = true
				break
			}
		}
		if !merged {
			fail("slice", "%v by %v: more than four axes after merging", x.dims, ranges)
		}
	}
	m := len(dims)
	if stride[m-1] != 1 {
		fail("slice", "a stride on the last axis (%v by %v)", x.dims, ranges)
	}
	es := C.size_t(4)
	st := make([]int, m) // elements
	acc := 1
	for i := m - 1; i >= 0; i-- {
		st[i] = acc
		acc *= dims[i]
	}
	var ne [4]C.int64_t
	var nb [4]C.size_t
	off := C.size_t(0)
	for i := range 4 {
		ne[i], nb[i] = 1, es
	}
	for i := range m {
		g := m - 1 - i
		ne[g] = C.int64_t((to[i] - from[i] + stride[i] - 1) / stride[i])
		nb[g] = C.size_t(st[i]*stride[i]) * es
		off += C.size_t(from[i]*st[i]) * es
	}
	for g := m; g < 4; g++ {
		nb[g] = nb[g-1] * C.size_t(ne[g-1])
	}
	o.G.room("slice")
	v := C.ggml_view_4d(o.ctx(), x.t, ne[0], ne[1], ne[2], ne[3], nb[1], nb[2], nb[3], off)
	return o.wrap("slice", C.ggml_cont(o.ctx(), v), out, x.isInt)
}

func (o *Ops) Concat(axis int, xs ...*Tensor) *Tensor {
	if len(xs) == 0 {
		fail("concat", "nothing to concatenate")
	}
	axis = axisOf(axis, len(xs[0].dims))
	isInt := xs[0].isInt
	out := slices.Clone(xs[0].dims)
	out[axis] = 0
	for _, x := range xs {
		if x.isInt != isInt {
			fail("concat", "integer and float tensors")
		}
		for i := range out {
			if i != axis && x.dims[i] != out[i] {
				fail("concat", "dims %v and %v along axis %d", xs[0].dims, x.dims, axis)
			}
		}
		out[axis] += x.dims[axis]
	}
	if len(xs) == 1 {
		return xs[0]
	}
	pre, post := numel(out[:axis]), numel(out[axis+1:])
	var acc *C.struct_ggml_tensor
	for _, x := range xs {
		if !x.isInt {
			x = o.in(x)
		}
		t := o.as(x, pre, x.dims[axis], post)
		if acc == nil {
			acc = t
			continue
		}
		o.G.room("concat")
		acc = C.ggml_concat(o.ctx(), acc, t, 1)
	}
	return o.wrap("concat", acc, out, isInt)
}

// reduce moves axes last, reduces them with f over rows of their size,
// and shapes the result.
func (o *Ops) reduce(name string, x *Tensor, keep bool, axes []int, f func(c *C.struct_ggml_context, t *C.struct_ggml_tensor, n int) *C.struct_ggml_tensor) *Tensor {
	x = o.in(x)
	r := len(x.dims)
	red := make([]bool, r)
	if len(axes) == 0 {
		for i := range red {
			red[i] = true
		}
	}
	for _, a := range axes {
		red[axisOf(a, r)] = true
	}
	var perm, kept, out []int
	n := 1
	for i := range r {
		if !red[i] {
			perm, kept = append(perm, i), append(kept, x.dims[i])
		}
	}
	for i := range r {
		if red[i] {
			perm = append(perm, i)
			n *= x.dims[i]
		}
	}
	for i := range r {
		switch {
		case !red[i]:
			out = append(out, x.dims[i])
		case keep:
			out = append(out, 1)
		}
	}
	xt := o.Transpose(x, perm...)
	rows := numel(kept)
	o.G.room(name)
	return o.wrap(name, f(o.ctx(), o.as(xt, rows, n), n), out, false)
}

func (o *Ops) ReduceSum(x *Tensor, keep bool, axes ...int) *Tensor {
	return o.reduce("sum", x, keep, axes, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor, _ int) *C.struct_ggml_tensor {
		return C.ggml_sum_rows(c, t)
	})
}

func (o *Ops) ReduceMax(x *Tensor, keep bool, axes ...int) *Tensor {
	return o.reduce("max", x, keep, axes, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor, n int) *C.struct_ggml_tensor {
		return C.ggml_pool_1d(c, t, C.GGML_OP_POOL_MAX, C.int(n), C.int(n), 0)
	})
}

func (o *Ops) ReduceMean(x *Tensor, keep bool, axes ...int) *Tensor {
	return o.reduce("mean", x, keep, axes, func(c *C.struct_ggml_context, t *C.struct_ggml_tensor, _ int) *C.struct_ggml_tensor {
		return C.ggml_mean(c, t)
	})
}

func (o *Ops) rows(x *Tensor) (int, int) {
	last := x.dims[len(x.dims)-1]
	return numel(x.dims) / last, last
}

func (o *Ops) Softmax(x *Tensor) *Tensor {
	x = o.in(x)
	rows, last := o.rows(x)
	o.G.room("soft_max")
	return o.wrap("soft_max", C.ggml_soft_max(o.ctx(), o.as(x, rows, last)), x.dims, false)
}

func (o *Ops) LogSoftmax(x *Tensor) *Tensor {
	x = o.in(x)
	sh := o.Sub(x, o.ReduceMax(x, true, -1))
	return o.Sub(sh, o.Log(o.ReduceSum(o.Exp(sh), true, -1)))
}

func (o *Ops) LayerNorm(x, w, b *Tensor) *Tensor {
	x = o.in(x)
	rows, last := o.rows(x)
	o.G.room("norm")
	t := C.ggml_norm(o.ctx(), o.as(x, rows, last), C.float(model.LayerNormEps))
	t = C.ggml_mul(o.ctx(), t, o.as(o.in(w), last))
	t = C.ggml_add(o.ctx(), t, o.as(o.in(b), last))
	return o.wrap("norm", t, x.dims, false)
}

func (o *Ops) Dense(x, w *Tensor, b ...*Tensor) *Tensor {
	x = o.in(x)
	rows, in := o.rows(x)
	if len(w.dims) != 2 || w.dims[0] != in {
		fail("dense", "x %v times w %v", x.dims, w.dims)
	}
	outW := w.dims[1]
	o.G.room("dense")
	var wt *C.struct_ggml_tensor // ne [in, out]
	if w.dense {
		wt = w.t
	} else {
		wt = C.ggml_cont(o.ctx(), C.ggml_transpose(o.ctx(), o.as(o.in(w), in, outW)))
	}
	y := C.ggml_mul_mat(o.ctx(), wt, o.as(x, rows, in)) // ne [out, rows]
	if len(b) > 0 {
		y = C.ggml_add(o.ctx(), y, o.as(o.in(b[0]), outW))
	}
	out := slices.Clone(x.dims)
	out[len(out)-1] = outW
	return o.wrap("dense", y, out, false)
}

// matmulT is a [batch, m, k] times b [batch, n, k] transposed: [batch, m, n].
func (o *Ops) matmulT(name string, a, b *Tensor) *Tensor {
	a, b = o.in(a), o.in(b)
	ra, rb := len(a.dims), len(b.dims)
	if ra < 2 || ra != rb || !slices.Equal(a.dims[:ra-2], b.dims[:rb-2]) || a.dims[ra-1] != b.dims[rb-1] {
		fail(name, "%v and %v", a.dims, b.dims)
	}
	m, k, n := a.dims[ra-2], a.dims[ra-1], b.dims[rb-2]
	batch := numel(a.dims[:ra-2])
	o.G.room(name)
	y := C.ggml_mul_mat(o.ctx(), o.as(b, batch, n, k), o.as(a, batch, m, k)) // ne [n, m, batch]
	out := append(slices.Clone(a.dims[:ra-1]), n)
	return o.wrap(name, y, out, false)
}

func (o *Ops) MatMulT(a, b *Tensor) *Tensor { return o.matmulT("mat_mul_t", a, b) }

func (o *Ops) MatMul(a, b *Tensor) *Tensor {
	r := len(b.dims)
	if r < 2 {
		fail("mat_mul", "%v and %v", a.dims, b.dims)
	}
	perm := make([]int, r)
	for i := range perm {
		perm[i] = i
	}
	perm[r-2], perm[r-1] = r-1, r-2
	return o.matmulT("mat_mul", a, o.Transpose(b, perm...))
}

// Conv3x3 is model.Conv3x3Columns over these operations.
func (o *Ops) Conv3x3(x, w, b *Tensor, stride int) *Tensor {
	return model.Conv3x3Columns[*Tensor](o, x, w, b, stride)
}

// Einsum is model.EinsumMatMul over these operations (one ggml matrix
// product between two permutations).
func (o *Ops) Einsum(spec string, a, b *Tensor) *Tensor {
	return model.EinsumMatMul[*Tensor](o, spec, a, b)
}

func (o *Ops) Gather(table, idx *Tensor) *Tensor {
	if !idx.isInt {
		idx = o.ToInt(idx)
	}
	n := table.dims[0]
	row := numel(table.dims[1:])
	var tt *C.struct_ggml_tensor
	if table.dense {
		tt = o.as(o.in(table), n, row)
	} else {
		tt = o.as(table, n, row) // any dtype: get_rows dequantizes
	}
	o.G.room("get_rows")
	y := C.ggml_get_rows(o.ctx(), tt, o.as(idx, numel(idx.dims)))
	return o.wrap("get_rows", y, append(slices.Clone(idx.dims), table.dims[1:]...), false)
}

func (o *Ops) GatherElems(x, idx *Tensor) *Tensor {
	x = o.in(x)
	if !idx.isInt {
		idx = o.ToInt(idx)
	}
	if len(x.dims) != 2 || len(idx.dims) != 2 || x.dims[0] != idx.dims[0] {
		fail("gather_elems", "x %v, idx %v", x.dims, idx.dims)
	}
	n, v, s := x.dims[0], x.dims[1], idx.dims[1]
	o.G.room("gather_elems")
	// Rows of one element, batched by row: ne [1, v, n] by [s, n].
	y := C.ggml_get_rows(o.ctx(), o.as(x, n, v, 1), o.as(idx, n, s))
	return o.wrap("gather_elems", y, []int{n, s}, false)
}

func (o *Ops) OneHot(idx *Tensor, n int) *Tensor {
	eye := make([]float32, n*n)
	for i := range n {
		eye[i*n+i] = 1
	}
	return o.Gather(o.G.Input(eye, n, n), idx)
}
