//go:build libtorch

package torch

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/eager"
)

// pair builds the same float tensor for libtorch and for model/eager.
type pair struct {
	a  *Arena
	o  *Ops
	e  *eager.Ops
	rn *rand.Rand
}

func (p *pair) rand(dims ...int) (*Tensor, *eager.Tensor) {
	n := 1
	for _, d := range dims {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(p.rn.NormFloat64())
	}
	return p.a.FromFloats(v, dims, CPU, false), eager.New(append([]float32(nil), v...), dims...)
}

func (p *pair) ints(v []int32, dims ...int) (*Tensor, *eager.Tensor) {
	return p.a.FromInts(v, dims, CPU), eager.Ints(append([]int32(nil), v...), dims...)
}

func same(t *testing.T, name string, got *Tensor, want *eager.Tensor) {
	t.Helper()
	g, err := got.Floats()
	if err != nil {
		t.Fatal(err)
	}
	if len(g) != len(want.Data) {
		t.Fatalf("%s: %d values (%v), eager %d (%v)", name, len(g), got.Dims(), len(want.Data), want.Dims)
	}
	for i := range g {
		if d := math.Abs(float64(g[i] - want.Data[i])); d > 1e-4*(1+math.Abs(float64(want.Data[i]))) {
			t.Fatalf("%s: element %d is %v, eager %v", name, i, g[i], want.Data[i])
		}
	}
}

// TestTorchOpsMatchEager checks the operations one by one against model/eager,
// the plain-Go implementation of the same interface.
func TestTorchOpsMatchEager(t *testing.T) {
	a := NewArena()
	defer a.Close()
	p := &pair{a: a, o: &Ops{Arena: a}, e: &eager.Ops{}, rn: rand.New(rand.NewPCG(1, 2))}
	o, e := p.o, p.e
	x, ex := p.rand(2, 3, 4)
	y, ey := p.rand(2, 3, 4)
	row, erow := p.rand(1, 1, 4)
	w, ew := p.rand(4, 5)
	b, eb := p.rand(5)
	ln, eln := p.rand(4)
	same(t, "add broadcast", o.Add(x, row), e.Add(ex, erow))
	same(t, "sub", o.Sub(x, y), e.Sub(ex, ey))
	same(t, "mul", o.Mul(x, y), e.Mul(ex, ey))
	same(t, "max", o.Max(x, y), e.Max(ex, ey))
	same(t, "greater", o.Greater(x, y), e.Greater(ex, ey))
	same(t, "scale shift", o.Shift(o.Scale(x, 3), -1), e.Shift(e.Scale(ex, 3), -1))
	same(t, "gelu", o.Gelu(x), e.Gelu(ex))
	same(t, "exp log1p", o.Log1P(o.Exp(x)), e.Log1P(e.Exp(ex)))
	same(t, "clip", o.Clip(x, -0.5, 0.5), e.Clip(ex, -0.5, 0.5))
	same(t, "softmax", o.Softmax(x), e.Softmax(ex))
	same(t, "log_softmax", o.LogSoftmax(x), e.LogSoftmax(ex))
	same(t, "layer_norm", o.LayerNorm(x, ln, ln), e.LayerNorm(ex, eln, eln))
	same(t, "dense", o.Dense(x, w, b), e.Dense(ex, ew, eb))
	same(t, "matmul_t", o.MatMulT(x, y), e.MatMulT(ex, ey))
	img, eimg := p.rand(2, 6, 6, 3)
	kw, ekw := p.rand(3, 3, 3, 4)
	kb, ekb := p.rand(4)
	same(t, "conv3x3 stride 1", o.Conv3x3(img, kw, kb, 1), e.Conv3x3(eimg, ekw, ekb, 1))
	same(t, "conv3x3 stride 2", o.Conv3x3(img, kw, kb, 2), e.Conv3x3(eimg, ekw, ekb, 2))
	same(t, "einsum", o.Einsum("bij,bkj->bik", x, y), e.Einsum("bij,bkj->bik", ex, ey))
	same(t, "transpose", o.Transpose(x, 2, 0, 1), e.Transpose(ex, 2, 0, 1))
	same(t, "reshape", o.Reshape(x, 6, -1), e.Reshape(ex, 6, -1))
	r := model.Range{Axis: -1, From: 1, To: 4, Stride: 2}
	same(t, "slice", o.Slice(x, r), e.Slice(ex, r))
	same(t, "concat", o.Concat(1, x, y), e.Concat(1, ex, ey))
	same(t, "reduce_sum keep", o.ReduceSum(x, true, 0, 2), e.ReduceSum(ex, true, 0, 2))
	same(t, "reduce_max", o.ReduceMax(x, false, -1), e.ReduceMax(ex, false, -1))
	same(t, "reduce_mean all", o.ReduceMean(x, false), e.ReduceMean(ex, false))
	same(t, "iota", o.Iota(1, 2, 3, 4), e.Iota(1, 2, 3, 4))
	same(t, "lower_tri", o.LowerTri(4), e.LowerTri(4))
	idx, eidx := p.ints([]int32{2, 0, 1, 1}, 2, 2)
	table, etable := p.rand(3, 4)
	same(t, "gather", o.Gather(table, idx), e.Gather(etable, eidx))
	picks, epicks := p.ints([]int32{0, 3, 1, 2, 2, 0}, 3, 2)
	same(t, "gather_elems", o.GatherElems(table, picks), e.GatherElems(etable, epicks))
	same(t, "one_hot", o.OneHot(idx, 3), e.OneHot(eidx, 3))
	same(t, "to_int to_float", o.ToFloat(o.ToInt(o.Floor(o.Scale(x, 2)))), e.ToFloat(e.ToInt(e.Floor(e.Scale(ex, 2)))))
}

// TestTorchErrorsAreReturned: a libtorch failure inside an operation (here a
// product of mismatched shapes) comes back as an *Error naming the
// operation and libtorch's message, not as a crash, and the arena goes on.
func TestTorchErrorsAreReturned(t *testing.T) {
	a := NewArena()
	defer a.Close()
	o := &Ops{Arena: a}
	bad := func() (err error) {
		defer Recover(&err)
		x := a.FromFloats(make([]float32, 6), []int{2, 3}, CPU, false)
		o.MatMul(x, x)
		return nil
	}
	err := bad()
	var te *Error
	if !errors.As(err, &te) || te.Op != "matmul" || !strings.Contains(err.Error(), "shape") {
		t.Fatalf("mismatched matmul: %v, want a torch matmul error about shapes", err)
	}
	x := a.FromFloats([]float32{1, 2}, []int{2}, CPU, false)
	if v, err := Item(o.ReduceSum(x, false)); err != nil || v != 3 {
		t.Fatalf("after the error: sum = %v, %v", v, err)
	}
	if _, err := ParseDevice("tpu"); err == nil {
		t.Error("ParseDevice(tpu) accepted")
	}
}
