package eager

import (
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"

	"github.com/groundmesh/groundmesh/model"
)

func seq(dims ...int) *Tensor {
	t := zeros(dims...)
	for i := range t.Data {
		t.Data[i] = float32(i%7) - 2.5 + float32(i)/100
	}
	return t
}

func close(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if math.Abs(float64(got[i]-want[i])) > 1e-4*(1+math.Abs(float64(want[i]))) {
			t.Fatalf("%s[%d] = %v, want %v", what, i, got[i], want[i])
		}
	}
}

// TestEinsumMatchesLoops checks every einsum form the model uses against
// plain loops.
func TestEinsumMatchesLoops(t *testing.T) {
	o := &Ops{}
	a, b := seq(2, 3, 4), seq(5, 4)
	got := o.Einsum("blw,qw->bql", a, b)
	want := make([]float32, 2*5*3)
	for bi := range 2 {
		for q := range 5 {
			for l := range 3 {
				var s float32
				for w := range 4 {
					s += a.Data[(bi*3+l)*4+w] * b.Data[q*4+w]
				}
				want[(bi*5+q)*3+l] = s
			}
		}
	}
	if !slices.Equal(got.Dims, []int{2, 5, 3}) {
		t.Fatalf("dims %v", got.Dims)
	}
	close(t, "blw,qw->bql", got.Data, want)

	tri, x := o.LowerTri(3), seq(2, 3, 4)
	got = o.Einsum("ij,bjw->biw", tri, x)
	want = make([]float32, 2*3*4)
	for bi := range 2 {
		for i := range 3 {
			for j := 0; j <= i; j++ {
				for w := range 4 {
					want[(bi*3+i)*4+w] += x.Data[(bi*3+j)*4+w]
				}
			}
		}
	}
	close(t, "ij,bjw->biw", got.Data, want)

	k, q := seq(2, 6, 4), seq(2, 4)
	got = o.Einsum("kpd,kd->kp", k, q)
	want = make([]float32, 2*6)
	for ki := range 2 {
		for p := range 6 {
			for d := range 4 {
				want[ki*6+p] += k.Data[(ki*6+p)*4+d] * q.Data[ki*4+d]
			}
		}
	}
	close(t, "kpd,kd->kp", got.Data, want)
}

// TestShapesAndBroadcast checks broadcasting, reductions, slices with a
// stride, transposes and concatenation.
func TestShapesAndBroadcast(t *testing.T) {
	o := &Ops{}
	a, b := seq(2, 3, 4), seq(2, 1, 4)
	s := o.Add(a, b)
	for i := range 2 {
		for j := range 3 {
			for k := range 4 {
				if s.Data[(i*3+j)*4+k] != a.Data[(i*3+j)*4+k]+b.Data[i*4+k] {
					t.Fatalf("broadcast add at %d %d %d", i, j, k)
				}
			}
		}
	}
	r := o.ReduceSum(a, true, 1)
	if !slices.Equal(r.Dims, []int{2, 1, 4}) || r.Data[5] != a.Data[1*12+1]+a.Data[1*12+5]+a.Data[1*12+9] {
		t.Fatalf("reduce keep: %v %v", r.Dims, r.Data)
	}
	if all := o.ReduceSum(a, false); len(all.Dims) != 0 || len(all.Data) != 1 {
		t.Fatalf("reduce all: %v", all.Dims)
	}
	sl := o.Slice(seq(1, 7, 7, 1), model.Range{Axis: 1, From: 1, To: 6, Stride: 2}, model.Range{Axis: 2, From: 0, To: 6, Stride: 2})
	if !slices.Equal(sl.Dims, []int{1, 3, 3, 1}) || sl.Data[4] != seq(1, 7, 7, 1).Data[3*7+2] {
		t.Fatalf("strided slice %v %v", sl.Dims, sl.Data)
	}
	tr := o.Transpose(a, 2, 0, 1)
	if !slices.Equal(tr.Dims, []int{4, 2, 3}) || tr.Data[(3*2+1)*3+2] != a.Data[(1*3+2)*4+3] {
		t.Fatalf("transpose %v", tr.Dims)
	}
	c := o.Concat(1, a, b)
	if !slices.Equal(c.Dims, []int{2, 4, 4}) || c.Data[1*16+3*4+2] != b.Data[1*4+2] {
		t.Fatalf("concat %v", c.Dims)
	}
	g := o.GatherElems(seq(2, 5), Ints([]int32{4, 0, 1, 3}, 2, 2))
	if g.Data[3] != seq(2, 5).Data[5+3] {
		t.Fatalf("gather elements %v", g.Data)
	}
}

// TestBroadcastMatchesNaive compares the blocked broadcast with an
// element-by-element one on the shapes the model uses.
func TestBroadcastMatchesNaive(t *testing.T) {
	o := &Ops{}
	for _, c := range [][2][]int{
		{{1, 2, 5, 5}, {1, 1, 5, 5}}, {{2, 3, 4}, {2, 3, 1}}, {{2, 1, 4}, {2, 3, 1}}, {{1, 3, 1}, {2, 1, 4}},
		{{3, 4}, {1, 4}}, {{2, 3, 4}, {1, 3, 4}}, {{2, 1, 1, 3}, {2, 1, 1, 3}}, {{1, 4, 1, 2}, {3, 1, 5, 1}},
	} {
		a, b := seq(c[0]...), seq(c[1]...)
		for i := range b.Data {
			b.Data[i] *= 3
		}
		got := o.Sub(a, b)
		dims := make([]int, len(c[0]))
		for i := range dims {
			dims[i] = max(c[0][i], c[1][i])
		}
		sa, sb := bstrides(a.Dims, dims), bstrides(b.Dims, dims)
		idx := make([]int, len(dims))
		for i := range size(dims) {
			rem := i
			for ax := len(dims) - 1; ax >= 0; ax-- {
				idx[ax] = rem % dims[ax]
				rem /= dims[ax]
			}
			ia, ib := 0, 0
			for ax := range dims {
				ia += idx[ax] * sa[ax]
				ib += idx[ax] * sb[ax]
			}
			if want := a.Data[ia] - b.Data[ib]; got.Data[i] != want {
				t.Fatalf("%v - %v at %v: %v, want %v", c[0], c[1], idx, got.Data[i], want)
			}
		}
	}
}

// TestLinearParallelSameAsSerial checks that Linear split over goroutines
// gives bit for bit what one goroutine gives, for row counts that do and
// do not divide into the chunks.
func TestLinearParallelSameAsSerial(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(3))
	rng := rand.New(rand.NewPCG(1, 2))
	for _, rows := range []int{64, 71, 13} {
		in, outDim := 96, 256 // 71 rows: 1.7M multiply-adds, over parallelMACs
		x, w, b := make([]float32, rows*in), make([]float32, in*outDim), make([]float32, outDim)
		for _, s := range [][]float32{x, w, b} {
			for i := range s {
				s[i] = float32(rng.NormFloat64())
			}
		}
		got, want := make([]float32, rows*outDim), make([]float32, rows*outDim)
		Linear(got, x, rows, in, w, b, outDim)
		linearRows(want, x, rows, in, w, b, outDim)
		if !slices.Equal(got, want) {
			t.Fatalf("%d rows: the parallel product differs from the serial one", rows)
		}
	}
}
