//go:build libtorch

// Package torch is groundmesh's binding to libtorch through the gmtorch C
// shim (../shim): tensors on the CPU or a CUDA device, and model.Ops over
// them, so that the tinygrounder's one definition (model.Net) runs on
// libtorch for training (libtorch's autograd differentiates it) and for
// inference. It builds only with the libtorch build tag and cgo, against
// the shim built by `make -C plugins/libtorch/shim` (see the Makefile's
// libtorch targets).
package torch

/*
#cgo CFLAGS: -I${SRCDIR}/../shim
#cgo LDFLAGS: -L${SRCDIR}/../shim/build -lgmtorch -Wl,-rpath,${SRCDIR}/../shim/build
#include <stdlib.h>
#include "gmtorch.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"
)

// Device is where tensors live.
type Device int

const (
	CPU  Device = C.GMT_CPU
	CUDA Device = C.GMT_CUDA
)

// ParseDevice reads "cpu" (or "") and "cuda".
func ParseDevice(s string) (Device, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "cpu":
		return CPU, nil
	case "cuda", "gpu":
		if !CUDAAvailable() {
			return CPU, errors.New("torch: device cuda asked for, but this libtorch has no CUDA device (a CPU-only build, or no GPU)")
		}
		return CUDA, nil
	}
	return CPU, fmt.Errorf("torch: unknown device %q (cpu or cuda)", s)
}

func (d Device) String() string {
	if d == CUDA {
		return "cuda"
	}
	return "cpu"
}

// Version is libtorch's version, as the shim was built against it.
func Version() string { return C.GoString(C.gmt_version()) }

// SetThreads sets libtorch's intra-op threads (n > 0); libtorch's own
// default is the number of cores, which some builds lower to one.
func SetThreads(n int) { C.gmt_set_threads(C.int(n)) }

// SetBLASThreads sets OpenBLAS's threads (n > 0), the BLAS that Debian's
// libtorch runs matrix products on; false when the process has no
// OpenBLAS (a libtorch built on another BLAS).
func SetBLASThreads(n int) bool { return C.gmt_set_blas_threads(C.int(n)) == 1 }

// Threads is libtorch's intra-op thread count.
func Threads() int { return int(C.gmt_get_threads()) }

// CUDAAvailable reports whether libtorch sees a CUDA device.
func CUDAAvailable() bool { return C.gmt_cuda_available() != 0 }

// Tensor is a libtorch tensor handle and its shape. A tensor is freed by
// the Arena that made it.
type Tensor struct {
	h    C.gmt_t
	dims []int
}

// Dims returns the tensor's shape.
func (t *Tensor) Dims() []int { return t.dims }

// Size is the number of elements.
func (t *Tensor) Size() int {
	n := 1
	for _, d := range t.dims {
		n *= d
	}
	return n
}

// Floats copies the tensor to host memory as float32.
func (t *Tensor) Floats() ([]float32, error) {
	out := make([]float32, t.Size())
	if len(out) == 0 {
		return out, nil
	}
	var errbuf [C.GMT_ERR_LEN]C.char
	if C.gmt_to_f32(t.h, (*C.float)(unsafe.Pointer(&out[0])), C.int64_t(len(out)), &errbuf[0]) != 0 {
		return nil, fmt.Errorf("torch: read tensor: %s", C.GoString(&errbuf[0]))
	}
	return out, nil
}

// Arena owns the tensors made through it until Release: a training step
// or an inference call makes hundreds, freed together at its end.
type Arena struct {
	owned []C.gmt_t
	out   *C.gmt_out
}

// NewArena returns an empty arena.
func NewArena() *Arena {
	return &Arena{out: (*C.gmt_out)(C.calloc(1, C.size_t(unsafe.Sizeof(C.gmt_out{}))))}
}

// Release frees every tensor of the arena; the arena can be used again.
func (a *Arena) Release() {
	if len(a.owned) > 0 {
		C.gmt_free_many(&a.owned[0], C.int(len(a.owned)))
		a.owned = a.owned[:0]
	}
}

// Close releases the tensors and the arena itself.
func (a *Arena) Close() {
	a.Release()
	if a.out != nil {
		C.free(unsafe.Pointer(a.out))
		a.out = nil
	}
}

// Error is a libtorch failure inside an operation; Ops panic with it, and
// Recover turns the panic back into an error.
type Error struct {
	Op, Msg string
}

func (e *Error) Error() string { return "torch " + e.Op + ": " + e.Msg }

// Recover, deferred, turns an *Error panic into *err; other panics go on.
func Recover(err *error) {
	if r := recover(); r != nil {
		if e, ok := r.(*Error); ok {
			*err = e
			return
		}
		panic(r)
	}
}

// take reads a's result slot after an operation: the new tensor, owned by
// the arena when a is non-nil.
func (a *Arena) take(op string) *Tensor {
	o := a.out
	if o.t == nil {
		msg := C.GoString(&o.err[0])
		if msg == "" {
			msg = "no result"
		}
		panic(&Error{Op: op, Msg: msg})
	}
	dims := make([]int, int(o.rank))
	for i := range dims {
		dims[i] = int(o.dims[i])
	}
	t := &Tensor{h: o.t, dims: dims}
	a.owned = append(a.owned, o.t)
	return t
}

// KeepOnly frees every tensor of the arena but live (nil entries and
// tensors of other arenas are ignored): what a decode step leaves behind
// once its outputs are read, with live the cache it extends
// (model.Cache.Live).
func (a *Arena) KeepOnly(live []*Tensor) {
	keep := make(map[C.gmt_t]bool, len(live))
	for _, t := range live {
		if t != nil && t.h != nil {
			keep[t.h] = true
		}
	}
	var free, kept []C.gmt_t
	for _, h := range a.owned {
		if keep[h] {
			kept = append(kept, h)
		} else {
			free = append(free, h)
		}
	}
	if len(free) > 0 {
		C.gmt_free_many(&free[0], C.int(len(free)))
	}
	a.owned = kept
}

func i64s(xs []int) []C.int64_t {
	out := make([]C.int64_t, len(xs))
	for i, x := range xs {
		out[i] = C.int64_t(x)
	}
	return out
}

func ptr(xs []C.int64_t) *C.int64_t {
	if len(xs) == 0 {
		return nil
	}
	return &xs[0]
}

// FromFloats makes a float32 tensor of dims from data on device; with
// grad, training differentiates with respect to it.
func (a *Arena) FromFloats(data []float32, dims []int, dev Device, grad bool) *Tensor {
	d := i64s(dims)
	var p *C.float
	var one [1]float32
	if len(data) > 0 {
		p = (*C.float)(unsafe.Pointer(&data[0]))
	} else {
		p = (*C.float)(unsafe.Pointer(&one[0])) // an empty tensor still needs a pointer
	}
	g := C.int(0)
	if grad {
		g = 1
	}
	C.gmt_from_f32(a.out, p, ptr(d), C.int(len(d)), C.int(dev), g)
	return a.take("from_f32")
}

// FromInts makes an integer tensor (int64 inside) of dims from data.
func (a *Arena) FromInts(data []int32, dims []int, dev Device) *Tensor {
	d := i64s(dims)
	var one [1]int32
	p := (*C.int32_t)(unsafe.Pointer(&one[0]))
	if len(data) > 0 {
		p = (*C.int32_t)(unsafe.Pointer(&data[0]))
	}
	C.gmt_from_i32(a.out, p, ptr(d), C.int(len(d)), C.int(dev))
	return a.take("from_i32")
}

// Item reads a scalar (or one-element) tensor.
func Item(t *Tensor) (float32, error) {
	v, err := t.Floats()
	if err != nil {
		return 0, err
	}
	if len(v) != 1 {
		return 0, fmt.Errorf("torch: item of a tensor of %d elements", len(v))
	}
	return v[0], nil
}

// Backward accumulates the gradient of loss into the tensors made with grad.
func Backward(loss *Tensor) error {
	var errbuf [C.GMT_ERR_LEN]C.char
	if C.gmt_backward(loss.h, &errbuf[0]) != 0 {
		return &Error{Op: "backward", Msg: C.GoString(&errbuf[0])}
	}
	return nil
}

// AdamW hyperparameters of one step (see gmt_adamw in gmtorch.h).
type AdamW struct {
	LR, BC1, BC2, WeightDecay, Beta1, Beta2, Eps, Clip float64
}

// Step takes one AdamW step over params with moments m and v (decays[i]
// says whether params[i] takes weight decay), clears the gradients and
// returns their global norm before clipping.
func (h AdamW) Step(params, m, v []*Tensor, decays []bool) (float32, error) {
	n := len(params)
	if len(m) != n || len(v) != n || len(decays) != n {
		return 0, fmt.Errorf("torch: adamw: %d params, %d and %d moments, %d decay flags", n, len(m), len(v), len(decays))
	}
	if n == 0 {
		return 0, nil
	}
	hp := make([]C.gmt_t, 3*n) // handles are C pointers, which Go memory may hold
	dec := make([]C.int, n)
	for i := range n {
		hp[i], hp[n+i], hp[2*n+i] = params[i].h, m[i].h, v[i].h
		if decays[i] {
			dec[i] = 1
		}
	}
	var gnorm C.float
	var errbuf [C.GMT_ERR_LEN]C.char
	if C.gmt_adamw(&hp[0], &hp[n], &hp[2*n], &dec[0], C.int(n), C.double(h.LR), C.double(h.BC1), C.double(h.BC2),
		C.double(h.WeightDecay), C.double(h.Beta1), C.double(h.Beta2), C.double(h.Eps), C.double(h.Clip), &gnorm, &errbuf[0]) != 0 {
		return 0, &Error{Op: "adamw", Msg: C.GoString(&errbuf[0])}
	}
	return float32(gnorm), nil
}
