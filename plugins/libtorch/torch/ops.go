//go:build libtorch

package torch

/*
#include <stdlib.h>
#include "gmtorch.h"
*/
import "C"

import (
	"fmt"
	"slices"
	"unsafe"

	"github.com/groundmesh/groundmesh/model"
)

// Ops implements model.Ops over libtorch tensors. Every tensor an
// operation makes belongs to Arena; Params are the model's parameters by
// canonical name, owned by the caller. An Ops runs on one goroutine at a
// time. A libtorch failure panics with *Error (see Recover).
type Ops struct {
	Arena  *Arena
	Params map[string]*Tensor
	Device Device
}

var (
	_ model.Ops[*Tensor]          = (*Ops)(nil)
	_ model.RecurrentOps[*Tensor] = (*Ops)(nil)
)

func (o *Ops) take(op string) *Tensor { return o.Arena.take(op) }
func (o *Ops) out() *C.gmt_out        { return o.Arena.out }

func (o *Ops) Param(name string, shape ...int) *Tensor {
	p, ok := o.Params[name]
	if !ok {
		panic(&Error{Op: "param", Msg: fmt.Sprintf("no parameter %q", name)})
	}
	if !slices.Equal(p.dims, shape) {
		panic(&Error{Op: "param", Msg: fmt.Sprintf("parameter %q is %v, the definition reads %v", name, p.dims, shape)})
	}
	return p
}

func (o *Ops) Shape(x *Tensor) []int { return slices.Clone(x.dims) }

func (o *Ops) Scalar(v float64) *Tensor {
	C.gmt_scalar(o.out(), C.double(v), C.int(o.Device))
	return o.take("scalar")
}

func (o *Ops) Iota(axis int, dims ...int) *Tensor {
	d := i64s(dims)
	C.gmt_iota(o.out(), C.int(axisOf(axis, len(dims))), ptr(d), C.int(len(d)), C.int(o.Device))
	return o.take("iota")
}

func (o *Ops) LowerTri(n int) *Tensor {
	C.gmt_lower_tri(o.out(), C.int64_t(n), C.int(o.Device))
	return o.take("lower_tri")
}

func (o *Ops) unary(op C.int, name string, x *Tensor) *Tensor {
	C.gmt_unary(o.out(), op, x.h)
	return o.take(name)
}

func (o *Ops) binary(op C.int, name string, a, b *Tensor) *Tensor {
	C.gmt_binary(o.out(), op, a.h, b.h)
	return o.take(name)
}

func (o *Ops) ZerosLike(x *Tensor) *Tensor { return o.unary(C.GMT_ZEROS_LIKE, "zeros_like", x) }
func (o *Ops) Add(a, b *Tensor) *Tensor    { return o.binary(C.GMT_ADD, "add", a, b) }
func (o *Ops) Sub(a, b *Tensor) *Tensor    { return o.binary(C.GMT_SUB, "sub", a, b) }
func (o *Ops) Mul(a, b *Tensor) *Tensor    { return o.binary(C.GMT_MUL, "mul", a, b) }
func (o *Ops) Div(a, b *Tensor) *Tensor    { return o.binary(C.GMT_DIV, "div", a, b) }
func (o *Ops) Max(a, b *Tensor) *Tensor    { return o.binary(C.GMT_MAX, "max", a, b) }
func (o *Ops) Min(a, b *Tensor) *Tensor    { return o.binary(C.GMT_MIN, "min", a, b) }
func (o *Ops) Greater(a, b *Tensor) *Tensor {
	return o.binary(C.GMT_GT, "greater", a, b)
}
func (o *Ops) Equal(a, b *Tensor) *Tensor { return o.binary(C.GMT_EQ, "equal", a, b) }
func (o *Ops) GreaterEq(a, b *Tensor) *Tensor {
	return o.binary(C.GMT_GE, "greater_eq", a, b)
}
func (o *Ops) LessEq(a, b *Tensor) *Tensor { return o.binary(C.GMT_LE, "less_eq", a, b) }

func (o *Ops) Scale(x *Tensor, s float64) *Tensor {
	C.gmt_affine(o.out(), x.h, C.double(s), 0)
	return o.take("scale")
}

func (o *Ops) Shift(x *Tensor, s float64) *Tensor {
	C.gmt_affine(o.out(), x.h, 1, C.double(s))
	return o.take("shift")
}

func (o *Ops) Neg(x *Tensor) *Tensor          { return o.unary(C.GMT_NEG, "neg", x) }
func (o *Ops) Abs(x *Tensor) *Tensor          { return o.unary(C.GMT_ABS, "abs", x) }
func (o *Ops) Exp(x *Tensor) *Tensor          { return o.unary(C.GMT_EXP, "exp", x) }
func (o *Ops) Log(x *Tensor) *Tensor          { return o.unary(C.GMT_LOG, "log", x) }
func (o *Ops) Log1P(x *Tensor) *Tensor        { return o.unary(C.GMT_LOG1P, "log1p", x) }
func (o *Ops) Sqrt(x *Tensor) *Tensor         { return o.unary(C.GMT_SQRT, "sqrt", x) }
func (o *Ops) Square(x *Tensor) *Tensor       { return o.unary(C.GMT_SQUARE, "square", x) }
func (o *Ops) Floor(x *Tensor) *Tensor        { return o.unary(C.GMT_FLOOR, "floor", x) }
func (o *Ops) Gelu(x *Tensor) *Tensor         { return o.unary(C.GMT_GELU, "gelu", x) }
func (o *Ops) StopGradient(x *Tensor) *Tensor { return o.unary(C.GMT_DETACH, "stop_gradient", x) }
func (o *Ops) ToFloat(x *Tensor) *Tensor      { return o.unary(C.GMT_TO_FLOAT, "to_float", x) }
func (o *Ops) ToInt(x *Tensor) *Tensor        { return o.unary(C.GMT_TO_INT, "to_int", x) }
func (o *Ops) Softmax(x *Tensor) *Tensor      { return o.unary(C.GMT_SOFTMAX, "softmax", x) }
func (o *Ops) LogSoftmax(x *Tensor) *Tensor   { return o.unary(C.GMT_LOG_SOFTMAX, "log_softmax", x) }

func (o *Ops) Clip(x *Tensor, lo, hi float64) *Tensor {
	C.gmt_clip(o.out(), x.h, C.double(lo), C.double(hi))
	return o.take("clip")
}

func (o *Ops) Reshape(x *Tensor, dims ...int) *Tensor {
	d := i64s(dims)
	C.gmt_reshape(o.out(), x.h, ptr(d), C.int(len(d)))
	return o.take("reshape")
}

func (o *Ops) Transpose(x *Tensor, perm ...int) *Tensor {
	p := i64s(perm)
	C.gmt_permute(o.out(), x.h, ptr(p), C.int(len(p)))
	return o.take("transpose")
}

func (o *Ops) Slice(x *Tensor, ranges ...model.Range) *Tensor {
	for _, r := range ranges {
		C.gmt_slice(o.out(), x.h, C.int(axisOf(r.Axis, len(x.dims))), C.int64_t(r.From), C.int64_t(r.To), C.int64_t(max(r.Stride, 1)))
		x = o.take("slice")
	}
	return x
}

func (o *Ops) Concat(axis int, xs ...*Tensor) *Tensor {
	hs := make([]C.gmt_t, len(xs))
	for i, x := range xs {
		hs[i] = x.h
	}
	C.gmt_cat(o.out(), &hs[0], C.int(len(hs)), C.int(axisOf(axis, len(xs[0].dims))))
	return o.take("concat")
}

func (o *Ops) reduce(op C.int, name string, x *Tensor, keep bool, axes []int) *Tensor {
	ax := make([]C.int64_t, len(axes))
	for i, a := range axes {
		ax[i] = C.int64_t(axisOf(a, len(x.dims)))
	}
	k := C.int(0)
	if keep {
		k = 1
	}
	C.gmt_reduce(o.out(), op, x.h, ptr(ax), C.int(len(ax)), k)
	return o.take(name)
}

func (o *Ops) ReduceSum(x *Tensor, keep bool, axes ...int) *Tensor {
	return o.reduce(C.GMT_SUM, "reduce_sum", x, keep, axes)
}
func (o *Ops) ReduceMax(x *Tensor, keep bool, axes ...int) *Tensor {
	return o.reduce(C.GMT_AMAX, "reduce_max", x, keep, axes)
}
func (o *Ops) ReduceMean(x *Tensor, keep bool, axes ...int) *Tensor {
	return o.reduce(C.GMT_MEAN, "reduce_mean", x, keep, axes)
}

func (o *Ops) LayerNorm(x, w, b *Tensor) *Tensor {
	C.gmt_layer_norm(o.out(), x.h, w.h, b.h, C.double(model.LayerNormEps))
	return o.take("layer_norm")
}

func (o *Ops) Dense(x, w *Tensor, b ...*Tensor) *Tensor {
	var bh C.gmt_t
	if len(b) > 0 {
		bh = b[0].h
	}
	C.gmt_dense(o.out(), x.h, w.h, bh)
	return o.take("dense")
}

// Conv3x3 is libtorch's convolution over the channels-last layout (its
// NCHW view of the NHWC tensor), with its own gradient: one kernel call
// instead of the column form's nine slices, concatenation and product.
func (o *Ops) Conv3x3(x, w, b *Tensor, stride int) *Tensor {
	C.gmt_conv3x3(o.out(), x.h, w.h, b.h, C.int(stride))
	return o.take("conv3x3")
}

// GRU is model.RecurrentOps.GRU: the recurrence runs inside the shim,
// so a step costs ATen's dispatch of its operations and no cgo calls.
func (o *Ops) GRU(x, mask, wx, bx, wh, bh *Tensor, backward bool) *Tensor {
	bw := C.int(0)
	if backward {
		bw = 1
	}
	C.gmt_gru(o.out(), x.h, mask.h, wx.h, bx.h, wh.h, bh.h, bw)
	return o.take("gru")
}

func (o *Ops) MatMul(a, b *Tensor) *Tensor {
	C.gmt_matmul(o.out(), a.h, b.h, 0)
	return o.take("matmul")
}

func (o *Ops) MatMulT(a, b *Tensor) *Tensor {
	C.gmt_matmul(o.out(), a.h, b.h, 1)
	return o.take("matmul_t")
}

func (o *Ops) Einsum(spec string, a, b *Tensor) *Tensor {
	cs := C.CString(spec)
	defer C.free(unsafe.Pointer(cs))
	C.gmt_einsum(o.out(), cs, a.h, b.h)
	return o.take("einsum " + spec)
}

func (o *Ops) Gather(table, idx *Tensor) *Tensor {
	C.gmt_index_rows(o.out(), table.h, idx.h)
	return o.take("gather")
}

func (o *Ops) GatherElems(x, idx *Tensor) *Tensor {
	C.gmt_gather_elems(o.out(), x.h, idx.h)
	return o.take("gather_elems")
}

func (o *Ops) OneHot(idx *Tensor, n int) *Tensor {
	C.gmt_one_hot(o.out(), idx.h, C.int64_t(n))
	return o.take("one_hot")
}

// axisOf turns a negative axis into its index from the front.
func axisOf(axis, rank int) int {
	if axis < 0 {
		return axis + rank
	}
	return axis
}
