// Package eager implements model.Ops over plain Go float32 arrays,
// computed as each operation is called: the model's one definition
// (model.Net) then runs with no graph to build or compile, which is what
// decoding one token at a time with a KV cache wants. Integer tensors (token
// ids, indices) are held as whole float32 values.
package eager

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"

	"github.com/groundmesh/groundmesh/model"
)

// Tensor is a row-major float32 array.
type Tensor struct {
	Dims []int
	Data []float32
}

// New returns a tensor of dims over data (not copied).
func New(data []float32, dims ...int) *Tensor {
	if n := size(dims); n != len(data) {
		panic(fmt.Sprintf("eager: %d values for dims %v", len(data), dims))
	}
	return &Tensor{Dims: slices.Clone(dims), Data: data}
}

// Ints returns a tensor holding integer values.
func Ints(v []int32, dims ...int) *Tensor {
	d := make([]float32, len(v))
	for i, x := range v {
		d[i] = float32(x)
	}
	return New(d, dims...)
}

func size(dims []int) int {
	n := 1
	for _, d := range dims {
		n *= d
	}
	return n
}

func zeros(dims ...int) *Tensor {
	return &Tensor{Dims: slices.Clone(dims), Data: make([]float32, size(dims))}
}

// Ops are the operations, with the model's parameters by canonical name.
type Ops struct {
	Params map[string][]float32
}

var _ model.Ops[*Tensor] = (*Ops)(nil)

func (o *Ops) Param(name string, dims ...int) *Tensor {
	v, ok := o.Params[name]
	if !ok || len(v) != size(dims) {
		panic(fmt.Sprintf("eager: parameter %q missing or not of shape %v", name, dims))
	}
	return &Tensor{Dims: slices.Clone(dims), Data: v}
}

func (o *Ops) Shape(x *Tensor) []int    { return slices.Clone(x.Dims) }
func (o *Ops) Scalar(v float64) *Tensor { return &Tensor{Data: []float32{float32(v)}} }

func (o *Ops) Iota(axis int, dims ...int) *Tensor {
	t := zeros(dims...)
	axis = axisOf(axis, len(dims))
	inner := size(dims[axis+1:])
	for i := range t.Data {
		t.Data[i] = float32(i / inner % dims[axis])
	}
	return t
}

func (o *Ops) LowerTri(n int) *Tensor {
	t := zeros(n, n)
	for i := range n {
		for j := 0; j <= i; j++ {
			t.Data[i*n+j] = 1
		}
	}
	return t
}

func (o *Ops) ZerosLike(x *Tensor) *Tensor { return zeros(x.Dims...) }

func axisOf(axis, rank int) int {
	if axis < 0 {
		axis += rank
	}
	if axis < 0 || axis >= rank {
		panic(fmt.Sprintf("eager: axis out of range for rank %d", rank))
	}
	return axis
}

// binary applies f elementwise with broadcasting.
func binary(a, b *Tensor, f func(x, y float32) float32) *Tensor {
	switch {
	case len(b.Dims) == 0:
		out := zeros(a.Dims...)
		y := b.Data[0]
		for i, x := range a.Data {
			out.Data[i] = f(x, y)
		}
		return out
	case len(a.Dims) == 0:
		out := zeros(b.Dims...)
		x := a.Data[0]
		for i, y := range b.Data {
			out.Data[i] = f(x, y)
		}
		return out
	case slices.Equal(a.Dims, b.Dims):
		out := zeros(a.Dims...)
		for i, x := range a.Data {
			out.Data[i] = f(x, b.Data[i])
		}
		return out
	}
	r := len(a.Dims)
	if len(b.Dims) != r {
		panic(fmt.Sprintf("eager: binary op of %v and %v", a.Dims, b.Dims))
	}
	dims := make([]int, r)
	for i := range dims {
		switch {
		case a.Dims[i] == b.Dims[i] || b.Dims[i] == 1:
			dims[i] = a.Dims[i]
		case a.Dims[i] == 1:
			dims[i] = b.Dims[i]
		default:
			panic(fmt.Sprintf("eager: binary op of %v and %v", a.Dims, b.Dims))
		}
	}
	sa, sb := bstrides(a.Dims, dims), bstrides(b.Dims, dims)
	out := zeros(dims...)
	// The innermost run of axes along which each operand is either whole
	// or constant is one block: index arithmetic once per block.
	aFull, bFull := a.Dims[r-1] != 1 || dims[r-1] == 1, b.Dims[r-1] != 1 || dims[r-1] == 1
	inner := r
	n := 1
	for ax := r - 1; ax >= 0; ax-- {
		af, bf := a.Dims[ax] == dims[ax], b.Dims[ax] == dims[ax]
		if dims[ax] != 1 && (af != aFull || bf != bFull || a.Dims[ax] != dims[ax] && a.Dims[ax] != 1 || b.Dims[ax] != dims[ax] && b.Dims[ax] != 1) {
			break
		}
		inner = ax
		n *= dims[ax]
	}
	idx := make([]int, r)
	ia, ib := 0, 0
	for i := 0; i < len(out.Data); i += n {
		o := out.Data[i : i+n]
		switch {
		case aFull && bFull:
			av, bv := a.Data[ia:ia+n], b.Data[ib:ib+n]
			for j := range o {
				o[j] = f(av[j], bv[j])
			}
		case aFull:
			av, y := a.Data[ia:ia+n], b.Data[ib]
			for j := range o {
				o[j] = f(av[j], y)
			}
		case bFull:
			x, bv := a.Data[ia], b.Data[ib:ib+n]
			for j := range o {
				o[j] = f(x, bv[j])
			}
		default:
			v := f(a.Data[ia], b.Data[ib])
			for j := range o {
				o[j] = v
			}
		}
		for ax := inner - 1; ax >= 0; ax-- {
			idx[ax]++
			ia += sa[ax]
			ib += sb[ax]
			if idx[ax] < dims[ax] {
				break
			}
			ia -= sa[ax] * dims[ax]
			ib -= sb[ax] * dims[ax]
			idx[ax] = 0
		}
	}
	return out
}

// bstrides are the strides of dims read as out (0 on broadcast axes).
func bstrides(dims, out []int) []int {
	s := make([]int, len(dims))
	st := 1
	for i := len(dims) - 1; i >= 0; i-- {
		if dims[i] != 1 || out[i] == 1 {
			s[i] = st
		}
		st *= dims[i]
	}
	return s
}

func unary(x *Tensor, f func(float32) float32) *Tensor {
	out := zeros(x.Dims...)
	for i, v := range x.Data {
		out.Data[i] = f(v)
	}
	return out
}

func b2f(b bool) float32 {
	if b {
		return 1
	}
	return 0
}

func (o *Ops) Add(a, b *Tensor) *Tensor {
	return binary(a, b, func(x, y float32) float32 { return x + y })
}
func (o *Ops) Sub(a, b *Tensor) *Tensor {
	return binary(a, b, func(x, y float32) float32 { return x - y })
}
func (o *Ops) Mul(a, b *Tensor) *Tensor {
	return binary(a, b, func(x, y float32) float32 { return x * y })
}
func (o *Ops) Div(a, b *Tensor) *Tensor {
	return binary(a, b, func(x, y float32) float32 { return x / y })
}
func (o *Ops) Max(a, b *Tensor) *Tensor {
	return binary(a, b, func(x, y float32) float32 { return max(x, y) })
}
func (o *Ops) Min(a, b *Tensor) *Tensor {
	return binary(a, b, func(x, y float32) float32 { return min(x, y) })
}
func (o *Ops) Greater(a, b *Tensor) *Tensor {
	return binary(a, b, func(x, y float32) float32 { return b2f(x > y) })
}
func (o *Ops) Equal(a, b *Tensor) *Tensor {
	return binary(a, b, func(x, y float32) float32 { return b2f(x == y) })
}
func (o *Ops) GreaterEq(a, b *Tensor) *Tensor {
	return binary(a, b, func(x, y float32) float32 { return b2f(x >= y) })
}
func (o *Ops) LessEq(a, b *Tensor) *Tensor {
	return binary(a, b, func(x, y float32) float32 { return b2f(x <= y) })
}
func (o *Ops) Scale(x *Tensor, s float64) *Tensor {
	f := float32(s)
	return unary(x, func(v float32) float32 { return v * f })
}
func (o *Ops) Shift(x *Tensor, s float64) *Tensor {
	f := float32(s)
	return unary(x, func(v float32) float32 { return v + f })
}
func (o *Ops) Neg(x *Tensor) *Tensor { return unary(x, func(v float32) float32 { return -v }) }
func (o *Ops) Abs(x *Tensor) *Tensor {
	return unary(x, func(v float32) float32 { return float32(math.Abs(float64(v))) })
}
func (o *Ops) Exp(x *Tensor) *Tensor {
	return unary(x, func(v float32) float32 { return float32(math.Exp(float64(v))) })
}
func (o *Ops) Log(x *Tensor) *Tensor {
	return unary(x, func(v float32) float32 { return float32(math.Log(float64(v))) })
}
func (o *Ops) Log1P(x *Tensor) *Tensor {
	return unary(x, func(v float32) float32 { return float32(math.Log1p(float64(v))) })
}
func (o *Ops) Sqrt(x *Tensor) *Tensor {
	return unary(x, func(v float32) float32 { return float32(math.Sqrt(float64(v))) })
}
func (o *Ops) Square(x *Tensor) *Tensor { return unary(x, func(v float32) float32 { return v * v }) }
func (o *Ops) Floor(x *Tensor) *Tensor {
	return unary(x, func(v float32) float32 { return float32(math.Floor(float64(v))) })
}
func (o *Ops) Clip(x *Tensor, lo, hi float64) *Tensor {
	l, h := float32(lo), float32(hi)
	return unary(x, func(v float32) float32 { return min(max(v, l), h) })
}
func (o *Ops) Gelu(x *Tensor) *Tensor {
	out := zeros(x.Dims...)
	copy(out.Data, x.Data)
	Gelu(out.Data)
	return out
}
func (o *Ops) StopGradient(x *Tensor) *Tensor { return x }
func (o *Ops) ToFloat(x *Tensor) *Tensor      { return x }
func (o *Ops) ToInt(x *Tensor) *Tensor        { return x }

// Gelu applies the exact GELU in place.
func Gelu(x []float32) {
	for i, v := range x {
		x[i] = float32(0.5 * float64(v) * (1 + math.Erf(float64(v)/math.Sqrt2)))
	}
}

func (o *Ops) Reshape(x *Tensor, dims ...int) *Tensor {
	d := slices.Clone(dims)
	free, known := -1, 1
	for i, v := range d {
		if v == -1 {
			free = i
		} else {
			known *= v
		}
	}
	if free >= 0 {
		d[free] = len(x.Data) / known
	}
	if size(d) != len(x.Data) {
		panic(fmt.Sprintf("eager: reshape %v to %v", x.Dims, dims))
	}
	return &Tensor{Dims: d, Data: x.Data}
}

func strides(dims []int) []int {
	s := make([]int, len(dims))
	st := 1
	for i := len(dims) - 1; i >= 0; i-- {
		s[i] = st
		st *= dims[i]
	}
	return s
}

// gatherStrided copies the elements of x at base + sum(idx[a]*st[a]) over
// the index space dims into a new tensor of dims.
func gatherStrided(x []float32, base int, st, dims []int) *Tensor {
	out := zeros(dims...)
	r := len(dims)
	if r == 0 {
		out.Data[0] = x[base]
		return out
	}
	idx := make([]int, r)
	off := base
	last := r - 1
	n := dims[last]
	for i := 0; i < len(out.Data); i += n {
		if st[last] == 1 {
			copy(out.Data[i:i+n], x[off:off+n])
		} else {
			for j := range n {
				out.Data[i+j] = x[off+j*st[last]]
			}
		}
		for ax := last - 1; ax >= 0; ax-- {
			idx[ax]++
			off += st[ax]
			if idx[ax] < dims[ax] {
				break
			}
			off -= st[ax] * dims[ax]
			idx[ax] = 0
		}
	}
	return out
}

func (o *Ops) Transpose(x *Tensor, perm ...int) *Tensor {
	// Moving only axes of size 1 keeps the order of the elements: a view.
	var kept []int
	for _, p := range perm {
		if x.Dims[p] != 1 {
			kept = append(kept, p)
		}
	}
	if slices.IsSorted(kept) {
		dims := make([]int, len(perm))
		for i, p := range perm {
			dims[i] = x.Dims[p]
		}
		return &Tensor{Dims: dims, Data: x.Data}
	}
	st := strides(x.Dims)
	dims := make([]int, len(perm))
	pst := make([]int, len(perm))
	for i, p := range perm {
		dims[i], pst[i] = x.Dims[p], st[p]
	}
	return gatherStrided(x.Data, 0, pst, dims)
}

func (o *Ops) Slice(x *Tensor, ranges ...model.Range) *Tensor {
	st := strides(x.Dims)
	dims := slices.Clone(x.Dims)
	sst := slices.Clone(st)
	base := 0
	for _, r := range ranges {
		a := axisOf(r.Axis, len(dims))
		step := max(r.Stride, 1)
		dims[a] = (r.To - r.From + step - 1) / step
		sst[a] = st[a] * step
		base += r.From * st[a]
	}
	// A slice of one contiguous run (every axis before the first cut one of
	// size 1, every axis after it whole) is a view: tensors are never
	// written after they are made.
	first := -1
	for a := range dims {
		if dims[a] != x.Dims[a] {
			first = a
			break
		}
	}
	contiguous := first >= 0
	for a := range dims {
		switch {
		case !contiguous:
		case a < first && dims[a] != 1:
			contiguous = false
		case a == first && dims[a] > 1 && sst[a] != st[a]:
			contiguous = false
		case a > first && dims[a] != x.Dims[a]:
			contiguous = false
		}
	}
	if contiguous {
		return &Tensor{Dims: dims, Data: x.Data[base : base+size(dims)]}
	}
	return gatherStrided(x.Data, base, sst, dims)
}

func (o *Ops) Concat(axis int, xs ...*Tensor) *Tensor {
	axis = axisOf(axis, len(xs[0].Dims))
	dims := slices.Clone(xs[0].Dims)
	dims[axis] = 0
	for _, x := range xs {
		dims[axis] += x.Dims[axis]
	}
	out := zeros(dims...)
	outer := size(dims[:axis])
	inner := size(dims[axis+1:])
	at := 0
	for o := range outer {
		for _, x := range xs {
			n := x.Dims[axis] * inner
			copy(out.Data[at:at+n], x.Data[o*n:(o+1)*n])
			at += n
		}
	}
	return out
}

// reduce folds the given axes (all when none) with f from init.
func reduce(x *Tensor, keep bool, axes []int, init float32, f func(acc, v float32) float32) *Tensor {
	r := len(x.Dims)
	drop := make([]bool, r)
	if len(axes) == 0 {
		for i := range drop {
			drop[i] = true
		}
	}
	for _, a := range axes {
		drop[axisOf(a, r)] = true
	}
	var outDims, keptDims []int
	for i, d := range x.Dims {
		if drop[i] {
			keptDims = append(keptDims, 1)
		} else {
			outDims = append(outDims, d)
			keptDims = append(keptDims, d)
		}
	}
	out := zeros(keptDims...)
	for i := range out.Data {
		out.Data[i] = init
	}
	os := bstrides(keptDims, x.Dims)
	idx := make([]int, r)
	oi := 0
	for _, v := range x.Data {
		out.Data[oi] = f(out.Data[oi], v)
		for ax := r - 1; ax >= 0; ax-- {
			idx[ax]++
			oi += os[ax]
			if idx[ax] < x.Dims[ax] {
				break
			}
			oi -= os[ax] * x.Dims[ax]
			idx[ax] = 0
		}
	}
	if !keep {
		out.Dims = outDims
		if outDims == nil {
			out.Dims = []int{}
		}
	}
	return out
}

func (o *Ops) ReduceSum(x *Tensor, keep bool, axes ...int) *Tensor {
	return reduce(x, keep, axes, 0, func(a, v float32) float32 { return a + v })
}
func (o *Ops) ReduceMax(x *Tensor, keep bool, axes ...int) *Tensor {
	return reduce(x, keep, axes, float32(math.Inf(-1)), func(a, v float32) float32 { return max(a, v) })
}
func (o *Ops) ReduceMean(x *Tensor, keep bool, axes ...int) *Tensor {
	s := o.ReduceSum(x, keep, axes...)
	return o.Scale(s, float64(len(s.Data))/float64(len(x.Data)))
}

func rowMax(row []float32) float32 {
	mx := float32(math.Inf(-1))
	for _, v := range row {
		mx = max(mx, v)
	}
	return mx
}

func (o *Ops) Softmax(x *Tensor) *Tensor {
	out := zeros(x.Dims...)
	n := x.Dims[len(x.Dims)-1]
	for r := 0; r < len(x.Data); r += n {
		row, dst := x.Data[r:r+n], out.Data[r:r+n]
		mx := rowMax(row)
		var sum float32
		for i, v := range row {
			e := float32(math.Exp(float64(v - mx)))
			dst[i] = e
			sum += e
		}
		for i := range dst {
			dst[i] /= sum
		}
	}
	return out
}

func (o *Ops) LogSoftmax(x *Tensor) *Tensor {
	out := zeros(x.Dims...)
	n := x.Dims[len(x.Dims)-1]
	for r := 0; r < len(x.Data); r += n {
		row, dst := x.Data[r:r+n], out.Data[r:r+n]
		mx := rowMax(row)
		var sum float64
		for _, v := range row {
			sum += math.Exp(float64(v - mx))
		}
		lse := mx + float32(math.Log(sum))
		for i, v := range row {
			dst[i] = v - lse
		}
	}
	return out
}

func (o *Ops) LayerNorm(x, w, b *Tensor) *Tensor {
	n := x.Dims[len(x.Dims)-1]
	out := zeros(x.Dims...)
	LayerNorm(out.Data, x.Data, len(x.Data)/n, n, w.Data, b.Data)
	return out
}

// LayerNorm normalizes each row of x [rows, width] into out.
func LayerNorm(out, x []float32, rows, width int, g, b []float32) {
	for t := range rows {
		xr := x[t*width : (t+1)*width]
		var mu float32
		for _, v := range xr {
			mu += v
		}
		mu /= float32(width)
		var va float32
		for _, v := range xr {
			d := v - mu
			va += d * d
		}
		va /= float32(width)
		inv := float32(1 / math.Sqrt(float64(va)+model.LayerNormEps))
		o := out[t*width : (t+1)*width]
		for i, v := range xr {
			o[i] = (v-mu)*inv*g[i] + b[i]
		}
	}
}

// Linear computes out[t] = x[t]·w + b for rows t of x [rows, in]; w is
// [in, out], b may be nil. out must hold rows*outDim values. A product of
// at least parallelMACs multiply-adds is split by rows over GOMAXPROCS
// goroutines (each row's sums are the same either way, so the result does
// not depend on the split).
func Linear(out, x []float32, rows, in int, w, b []float32, outDim int) {
	workers := min(runtime.GOMAXPROCS(0), rows/4)
	if workers < 2 || rows*in*outDim < parallelMACs {
		linearRows(out, x, rows, in, w, b, outDim)
		return
	}
	// Chunks of a multiple of four rows, the unit linearRows shares a
	// weight load over.
	per := (rows/workers + 3) &^ 3
	var wg sync.WaitGroup
	for lo := 0; lo < rows; lo += per {
		n := min(per, rows-lo)
		wg.Go(func() {
			linearRows(out[lo*outDim:(lo+n)*outDim], x[lo*in:(lo+n)*in], n, in, w, b, outDim)
		})
	}
	wg.Wait()
}

// parallelMACs is the size of product from which Linear uses more than
// one goroutine: below it, starting them costs more than they save.
const parallelMACs = 1 << 18

// linearRows is Linear on the calling goroutine.
func linearRows(out, x []float32, rows, in int, w, b []float32, outDim int) {
	// Four rows at a time share each load of a weight row.
	t := 0
	for ; t+4 <= rows; t += 4 {
		o0 := out[t*outDim : (t+1)*outDim]
		o1 := out[(t+1)*outDim : (t+2)*outDim]
		o2 := out[(t+2)*outDim : (t+3)*outDim]
		o3 := out[(t+3)*outDim : (t+4)*outDim]
		for _, o := range [][]float32{o0, o1, o2, o3} {
			if b != nil {
				copy(o, b)
			} else {
				clear(o)
			}
		}
		for k := range in {
			x0, x1, x2, x3 := x[t*in+k], x[(t+1)*in+k], x[(t+2)*in+k], x[(t+3)*in+k]
			wr := w[k*outDim : (k+1)*outDim]
			o0, o1, o2, o3 := o0[:len(wr)], o1[:len(wr)], o2[:len(wr)], o3[:len(wr)]
			for j, wv := range wr {
				o0[j] += x0 * wv
				o1[j] += x1 * wv
				o2[j] += x2 * wv
				o3[j] += x3 * wv
			}
		}
	}
	for ; t < rows; t++ {
		o := out[t*outDim : (t+1)*outDim]
		if b != nil {
			copy(o, b)
		} else {
			clear(o)
		}
		xr := x[t*in : (t+1)*in]
		for k, xv := range xr {
			if xv == 0 {
				continue
			}
			wr := w[k*outDim : (k+1)*outDim]
			for j, wv := range wr {
				o[j] += xv * wv
			}
		}
	}
}

func (o *Ops) Dense(x, w *Tensor, b ...*Tensor) *Tensor {
	in, outDim := w.Dims[0], w.Dims[1]
	dims := slices.Clone(x.Dims)
	dims[len(dims)-1] = outDim
	out := zeros(dims...)
	var bias []float32
	if len(b) > 0 {
		bias = b[0].Data
	}
	Linear(out.Data, x.Data, len(x.Data)/in, in, w.Data, bias, outDim)
	return out
}

func (o *Ops) MatMul(a, b *Tensor) *Tensor {
	r := len(a.Dims)
	m, k, n := a.Dims[r-2], a.Dims[r-1], b.Dims[r-1]
	dims := slices.Clone(a.Dims)
	dims[r-1] = n
	out := zeros(dims...)
	batch := size(a.Dims[:r-2])
	for i := range batch {
		Linear(out.Data[i*m*n:(i+1)*m*n], a.Data[i*m*k:(i+1)*m*k], m, k, b.Data[i*k*n:(i+1)*k*n], nil, n)
	}
	return out
}

func (o *Ops) Conv3x3(x, w, b *Tensor, stride int) *Tensor {
	return model.Conv3x3Columns[*Tensor](o, x, w, b, stride)
}

func (o *Ops) MatMulT(a, b *Tensor) *Tensor {
	r := len(a.Dims)
	m, k, n := a.Dims[r-2], a.Dims[r-1], b.Dims[r-2]
	dims := slices.Clone(a.Dims)
	dims[r-1] = n
	out := zeros(dims...)
	for bi := range size(a.Dims[:r-2]) {
		ab, bb, ob := a.Data[bi*m*k:(bi+1)*m*k], b.Data[bi*n*k:(bi+1)*n*k], out.Data[bi*m*n:(bi+1)*m*n]
		for i := range m {
			ar := ab[i*k : (i+1)*k]
			for j := range n {
				br := bb[j*k : (j+1)*k]
				br = br[:len(ar)]
				var s float32
				for t, v := range ar {
					s += v * br[t]
				}
				ob[i*n+j] = s
			}
		}
	}
	return out
}

// Einsum is model.EinsumMatMul over these operations.
func (o *Ops) Einsum(spec string, a, b *Tensor) *Tensor {
	return model.EinsumMatMul[*Tensor](o, spec, a, b)
}

func (o *Ops) Gather(table, idx *Tensor) *Tensor {
	row := size(table.Dims[1:])
	out := zeros(append(slices.Clone(idx.Dims), table.Dims[1:]...)...)
	for i, v := range idx.Data {
		r := int(v)
		copy(out.Data[i*row:(i+1)*row], table.Data[r*row:(r+1)*row])
	}
	return out
}

func (o *Ops) GatherElems(x, idx *Tensor) *Tensor {
	v, s := x.Dims[1], idx.Dims[1]
	out := zeros(idx.Dims...)
	for i, id := range idx.Data {
		out.Data[i] = x.Data[i/s*v+int(id)]
	}
	return out
}

func (o *Ops) OneHot(idx *Tensor, n int) *Tensor {
	out := zeros(append(slices.Clone(idx.Dims), n)...)
	for i, v := range idx.Data {
		out.Data[i*n+int(v)] = 1
	}
	return out
}
