//go:build ggml

package ggml_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/eager"
	"github.com/groundmesh/groundmesh/plugins/ggml/ggml"
)

// inputs makes a case's inputs on one backend.
type inputs[T any] struct {
	f func(dims ...int) T // random float32 of dims (the same values on both backends)
	i func(v []int32, dims ...int) T
}

type opCase[T any] func(o model.Ops[T], in inputs[T]) T

// run computes one case on model/eager (the reference) and on ggml and
// compares them.
func run(t *testing.T, name string, ref opCase[*eager.Tensor], got opCase[*ggml.Tensor], tol float64) {
	t.Helper()
	rs := rand.New(rand.NewPCG(7, 8))
	var vals [][]float32
	next := 0
	eo := &eager.Ops{}
	want := ref(eo, inputs[*eager.Tensor]{
		f: func(dims ...int) *eager.Tensor {
			v := make([]float32, n(dims))
			for i := range v {
				v[i] = float32(rs.NormFloat64())
			}
			vals = append(vals, v)
			return eager.New(v, dims...)
		},
		i: func(v []int32, dims ...int) *eager.Tensor { return eager.Ints(v, dims...) },
	})
	g, err := ggml.NewGraph()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	w, err := ggml.NewWeights(nil, model.DtypeF32)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	o := &ggml.Ops{G: g, W: w}
	var out [][]float32
	func() {
		defer ggml.Recover(&err)
		res := got(o, inputs[*ggml.Tensor]{
			f: func(dims ...int) *ggml.Tensor {
				v := vals[next]
				next++
				return g.Input(v, dims...)
			},
			i: func(v []int32, dims ...int) *ggml.Tensor { return g.InputInts(v, dims...) },
		})
		if d := res.Dims(); !equal(d, want.Dims) {
			t.Fatalf("%s: dims %v, want %v", name, d, want.Dims)
		}
		out, err = g.Compute(res)
	}()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	for i, v := range want.Data {
		if d := math.Abs(float64(out[0][i] - v)); d > tol*(1+math.Abs(float64(v))) || math.IsNaN(float64(out[0][i])) != math.IsNaN(float64(v)) {
			t.Fatalf("%s: element %d is %g, want %g", name, i, out[0][i], v)
		}
	}
}

func n(dims []int) int {
	p := 1
	for _, d := range dims {
		p *= d
	}
	return p
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestOps(t *testing.T) {
	type E = *eager.Tensor
	type G = *ggml.Tensor
	cases := []struct {
		name string
		e    opCase[E]
		g    opCase[G]
		tol  float64
	}{
		{"add broadcast both ways", addB[E], addB[G], 1e-6},
		{"sub and div broadcast", subDiv[E], subDiv[G], 1e-5},
		{"max min compare", maxMin[E], maxMin[G], 1e-6},
		{"unary", unaries[E], unaries[G], 1e-5},
		{"transpose rank 5", tr5[E], tr5[G], 0},
		{"transpose rank 6 space to depth", tr6[E], tr6[G], 0},
		{"slice strided", sliceStrided[E], sliceStrided[G], 0},
		{"slice rank 5", slice5[E], slice5[G], 0},
		{"concat", concat[E], concat[G], 0},
		{"reduce", reduces[E], reduces[G], 1e-5},
		{"softmax logsoftmax", softmaxes[E], softmaxes[G], 1e-5},
		{"layer norm dense", lnDense[E], lnDense[G], 1e-4},
		{"matmul", matmuls[E], matmuls[G], 1e-4},
		{"einsum", einsums[E], einsums[G], 1e-4},
		{"gather", gathers[E], gathers[G], 1e-6},
		{"conv3x3", convs[E], convs[G], 1e-4},
		{"iota lowertri scalar", consts[E], consts[G], 0},
		{"int round trip", ints[E], ints[G], 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { run(t, c.name, c.e, c.g, c.tol) })
	}
}

func addB[T any](o model.Ops[T], in inputs[T]) T {
	a, b := in.f(2, 1, 3), in.f(1, 4, 3)
	return o.Add(o.Add(a, b), o.Add(o.Scalar(2), a))
}

func subDiv[T any](o model.Ops[T], in inputs[T]) T {
	a, b := in.f(2, 1, 3), in.f(1, 4, 1)
	return o.Concat(0, o.Sub(a, b), o.Div(a, o.Add(o.Abs(b), o.Scalar(1))), o.Sub(o.Scalar(1), o.Mul(b, a)))
}

func maxMin[T any](o model.Ops[T], in inputs[T]) T {
	a, b := in.f(3, 5), in.f(3, 5)
	c := o.Floor(o.Scale(a, 2))
	return o.Concat(0, o.Max(a, b), o.Min(a, b), o.Greater(a, b), o.Equal(c, o.Floor(o.Scale(b, 2))), o.GreaterEq(c, o.Floor(b)), o.LessEq(c, o.Floor(b)), o.Equal(c, c))
}

func unaries[T any](o model.Ops[T], in inputs[T]) T {
	a := in.f(4, 6)
	pos := o.Shift(o.Abs(a), 0.1)
	return o.Concat(1, o.Neg(a), o.Exp(a), o.Log(pos), o.Log1P(pos), o.Sqrt(pos), o.Square(a), o.Floor(a), o.Clip(a, -0.5, 0.7), o.Gelu(a), o.Scale(a, 3), o.Shift(a, -2), o.StopGradient(a))
}

func tr5[T any](o model.Ops[T], in inputs[T]) T {
	return o.Transpose(in.f(2, 3, 3, 2, 4), 2, 0, 3, 1, 4)
}

func tr6[T any](o model.Ops[T], in inputs[T]) T {
	x := o.Reshape(in.f(2, 8, 8, 3), 2, 4, 2, 4, 2, 3)
	return o.Reshape(o.Transpose(x, 0, 1, 3, 2, 4, 5), 2, 4, 4, 12)
}

func sliceStrided[T any](o model.Ops[T], in inputs[T]) T {
	x := in.f(2, 6, 6, 3)
	return o.Slice(x, model.Range{Axis: 1, From: 1, To: 6, Stride: 2}, model.Range{Axis: 2, From: 0, To: 5, Stride: 2}, model.Range{Axis: 3, From: 1, To: 3})
}

func slice5[T any](o model.Ops[T], in inputs[T]) T {
	x := in.f(3, 2, 2, 3, 4)
	return o.Slice(x, model.Range{Axis: 0, From: 1, To: 2}, model.Range{Axis: -1, From: 1, To: 3})
}

func concat[T any](o model.Ops[T], in inputs[T]) T {
	return o.Concat(1, in.f(2, 1, 3), in.f(2, 4, 3), in.f(2, 2, 3))
}

func reduces[T any](o model.Ops[T], in inputs[T]) T {
	x := in.f(2, 3, 4)
	return o.Concat(1,
		o.Reshape(o.ReduceSum(x, false, 1), 1, 8), o.Reshape(o.ReduceMax(x, true, -1), 1, 6),
		o.Reshape(o.ReduceMean(x, true, 0, 2), 1, 3), o.Reshape(o.ReduceSum(x, false), 1, 1),
		o.Reshape(o.ReduceMax(x, false, 0, 1), 1, 4))
}

func softmaxes[T any](o model.Ops[T], in inputs[T]) T {
	x := o.Scale(in.f(3, 2, 7), 4)
	return o.Concat(0, o.Softmax(x), o.LogSoftmax(x))
}

func lnDense[T any](o model.Ops[T], in inputs[T]) T {
	x := in.f(2, 3, 8)
	y := o.LayerNorm(x, in.f(8), in.f(8))
	return o.Add(o.Dense(y, in.f(8, 5), in.f(5)), o.Dense(x, in.f(8, 5)))
}

func matmuls[T any](o model.Ops[T], in inputs[T]) T {
	a := in.f(2, 3, 4, 5)
	return o.Concat(-1, o.MatMul(a, in.f(2, 3, 5, 6)), o.MatMulT(a, in.f(2, 3, 2, 5)))
}

func einsums[T any](o model.Ops[T], in inputs[T]) T {
	x := in.f(2, 3, 4) // b l w
	q := in.f(5, 4)    // q w
	s := o.Einsum("blw,qw->bql", x, q)
	p := o.Einsum("bql,blw->bqw", o.Softmax(s), x)
	tri := o.LowerTri(3)
	m := o.Einsum("ij,bjw->biw", tri, x)
	c := o.Einsum("ij,bj->bi", tri, in.f(2, 3))
	v := o.Einsum("blw,w->bl", x, in.f(4))
	return o.Concat(1, o.Reshape(p, 2, 20), o.Reshape(m, 2, 12), c, v)
}

func gathers[T any](o model.Ops[T], in inputs[T]) T {
	table := in.f(6, 2, 3)
	g := o.Gather(table, in.i([]int32{5, 0, 2, 2, 1, 4}, 2, 3)) // [2, 3, 2, 3]
	e := o.GatherElems(in.f(3, 7), in.i([]int32{0, 6, 1, 2, 3, 3}, 3, 2))
	h := o.OneHot(in.i([]int32{1, 0, 3}, 3), 4)
	return o.Concat(1, o.Reshape(g, 2, 18), o.Reshape(e, 2, 3), o.Reshape(h, 2, 6))
}

func convs[T any](o model.Ops[T], in inputs[T]) T {
	x := in.f(2, 8, 8, 3)
	a := o.Conv3x3(x, in.f(3, 3, 3, 4), in.f(4), 1)
	b := o.Conv3x3(x, in.f(3, 3, 3, 4), in.f(4), 2)
	return o.Concat(1, o.Reshape(a, 2, 256), o.Reshape(b, 2, 64))
}

func consts[T any](o model.Ops[T], in inputs[T]) T {
	return o.Concat(0, o.Iota(1, 3, 4), o.Iota(0, 3, 4), o.Add(o.ZerosLike(in.f(3, 4)), o.Scalar(2)))
}

func ints[T any](o model.Ops[T], in inputs[T]) T {
	idx := in.i([]int32{3, 7, 12, 5}, 1, 4)
	pf := o.ToFloat(idx)
	np := o.Scalar(4)
	k := o.ToInt(o.Sub(pf, o.Mul(o.Floor(o.Div(pf, np)), np)))
	tok := o.Slice(in.i([]int32{1, 2, 3, 4, 5, 6}, 2, 3), model.Range{Axis: 1, From: 0, To: 2})
	return o.Concat(1, o.ToFloat(k), o.Reshape(o.ToFloat(tok), 1, 4))
}
