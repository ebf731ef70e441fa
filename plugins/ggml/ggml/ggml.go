//go:build ggml

// Package ggml runs the tinygrounder's one definition (model.Ops) on ggml,
// the tensor library of llama.cpp, through cgo: each call of the model
// adds a node to a ggml graph, and Graph.Compute allocates the graph's
// memory (ggml-alloc), uploads its inputs and computes it on ggml's CPU
// backend. Weights are held in float32, float16, q8_0 or q4_0
// (model.ServingDtype), dense weights transposed so that ggml's matrix
// product reads them as they are, quantized or not.
//
// ggml's sources come from the github.com/ollama/ollama Go module, which
// vendors them (MIT licence, ml/backend/ggml/ggml/LICENSE); its headers
// must be on the include path: the Makefile's ggml targets set
// CGO_CPPFLAGS from `go list -m`. Build tag: ggml.
package ggml

/*
#include "gm.h"
*/
import "C"

import (
	_ "github.com/ollama/ollama/ml/backend/ggml/ggml/src"
	_ "github.com/ollama/ollama/ml/backend/ggml/ggml/src/ggml-cpu"

	"fmt"
	"runtime"
	"slices"
	"unsafe"

	"github.com/groundmesh/groundmesh/model"
)

// Error is a failure inside an operation (a shape ggml cannot take, a
// graph past its size); operations panic with it and Recover turns it
// into an error.
type Error struct {
	Op, Msg string
}

func (e *Error) Error() string { return fmt.Sprintf("ggml %s: %s", e.Op, e.Msg) }

func fail(op, format string, args ...any) {
	panic(&Error{Op: op, Msg: fmt.Sprintf(format, args...)})
}

// Recover stores a panic with *Error in *err; other panics go on.
func Recover(err *error) {
	if r := recover(); r != nil {
		if e, ok := r.(*Error); ok {
			*err = e
			return
		}
		panic(r)
	}
}

// Tensor is a node of a graph (or a weight): a contiguous ggml tensor
// whose logical dims, in row-major order and of any rank, are dims (ggml
// holds at most 4, innermost first).
type Tensor struct {
	t     *C.struct_ggml_tensor
	dims  []int
	isInt bool
	// dense marks a dense weight held transposed ([out, in], in ggml's
	// ne order [in, out]) and maybe quantized: only Dense reads it as it
	// is; other operations read its float32 [in, out] form (Ops.in).
	dense bool
	f32   []float32 // an input's data, uploaded once allocated
	i32   []int32
}

// Dims returns the tensor's logical dims.
func (t *Tensor) Dims() []int { return slices.Clone(t.dims) }

func numel(dims []int) int {
	n := 1
	for _, d := range dims {
		n *= d
	}
	return n
}

// ne4 is ggml's [ne0..ne3] of row-major dims, the leading dims merged
// past four.
func ne4(dims []int) [4]int64 {
	ne := [4]int64{1, 1, 1, 1}
	r := len(dims)
	if r > 4 {
		lead := numel(dims[:r-3])
		dims = append([]int{lead}, dims[r-3:]...)
		r = 4
	}
	for i := range r {
		ne[i] = int64(dims[r-1-i])
	}
	return ne
}

// Threads is the number of threads a graph computes with (0: one).
var defaultThreads = 1

// SetThreads sets the threads of graphs made afterwards.
func SetThreads(n int) {
	if n > 0 {
		defaultThreads = n
	}
}

// Threads is the number of threads a new graph computes with.
func Threads() int { return defaultThreads }

// Weights are a model's parameters on the CPU backend, read only, shared
// by every graph that computes with them.
type Weights struct {
	ctx    *C.struct_ggml_context
	buf    C.ggml_backend_buffer_t
	params map[string]*Tensor
	// Bytes is the size of the weights as held.
	Bytes int64
}

// Param is one parameter to upload: its name, shape and float32 values.
type Param struct {
	Name  string
	Shape []int
	Data  []float32
}

// NewWeights uploads params, each held as model.ServingDtype says for
// dtype (dense weights transposed).
func NewWeights(params []Param, dtype string) (_ *Weights, err error) {
	if _, err := model.GGMLType(dtype); err != nil {
		return nil, err
	}
	mem := C.size_t(len(params)+8) * C.ggml_tensor_overhead()
	ctx := C.gm_init(mem)
	if ctx == nil {
		return nil, fmt.Errorf("ggml: cannot make a context of %d bytes", mem)
	}
	w := &Weights{ctx: ctx, params: map[string]*Tensor{}}
	type upload struct {
		t    *C.struct_ggml_tensor
		data []byte
	}
	var ups []upload
	for _, p := range params {
		if len(p.Data) != numel(p.Shape) {
			C.ggml_free(ctx)
			return nil, fmt.Errorf("ggml: parameter %s has %d values, its shape %v holds %d", p.Name, len(p.Data), p.Shape, numel(p.Shape))
		}
		sd := model.ServingDtype(dtype, p.Name, p.Shape)
		typ, _ := model.GGMLType(sd)
		data, dims := p.Data, p.Shape
		dense := model.DenseWeight(p.Name, p.Shape)
		if dense {
			data = model.Transpose2D(p.Data, p.Shape[0], p.Shape[1])
			dims = []int{p.Shape[1], p.Shape[0]}
		}
		enc, err := model.Quantize(sd, data, dims[len(dims)-1])
		if err != nil {
			C.ggml_free(ctx)
			return nil, fmt.Errorf("ggml: parameter %s: %w", p.Name, err)
		}
		ne := ne4(dims)
		t := C.ggml_new_tensor(ctx, C.enum_ggml_type(typ), 4, (*C.int64_t)(unsafe.Pointer(&ne[0])))
		name := C.CString(p.Name)
		C.ggml_set_name(t, name)
		C.free(unsafe.Pointer(name))
		w.params[p.Name] = &Tensor{t: t, dims: slices.Clone(p.Shape), dense: dense}
		ups = append(ups, upload{t, enc})
		w.Bytes += int64(len(enc))
	}
	if len(params) == 0 {
		return w, nil
	}
	w.buf = C.ggml_backend_alloc_ctx_tensors_from_buft(ctx, C.ggml_backend_cpu_buffer_type())
	if w.buf == nil {
		C.ggml_free(ctx)
		return nil, fmt.Errorf("ggml: cannot allocate %d bytes of weights", w.Bytes)
	}
	for _, u := range ups {
		if C.size_t(len(u.data)) != C.ggml_nbytes(u.t) {
			w.Close()
			return nil, fmt.Errorf("ggml: %d bytes encoded for a tensor of %d", len(u.data), C.ggml_nbytes(u.t))
		}
		C.ggml_backend_tensor_set(u.t, unsafe.Pointer(&u.data[0]), 0, C.size_t(len(u.data)))
	}
	return w, nil
}

// Close frees the weights.
func (w *Weights) Close() {
	if w.buf != nil {
		C.ggml_backend_buffer_free(w.buf)
		w.buf = nil
	}
	if w.ctx != nil {
		C.ggml_free(w.ctx)
		w.ctx = nil
	}
}

// graphNodes bounds a graph's nodes and tensors.
const graphNodes = 1 << 15

// Graph collects one computation's nodes. It is used by one goroutine at
// a time; Reset empties it for the next computation, keeping its memory.
type Graph struct {
	ctx     *C.struct_ggml_context
	mem     C.size_t
	galloc  C.ggml_gallocr_t
	backend C.ggml_backend_t
	inputs  []*Tensor
	threads int
}

// NewGraph makes an empty graph computing with Threads() threads.
func NewGraph() (*Graph, error) {
	g := &Graph{threads: defaultThreads}
	g.mem = C.ggml_tensor_overhead()*graphNodes + C.ggml_graph_overhead_custom(graphNodes, false)
	if g.ctx = C.gm_init(g.mem); g.ctx == nil {
		return nil, fmt.Errorf("ggml: cannot make a graph context of %d bytes", g.mem)
	}
	if g.backend = C.ggml_backend_cpu_init(); g.backend == nil {
		C.ggml_free(g.ctx)
		return nil, fmt.Errorf("ggml: cannot start the CPU backend")
	}
	C.ggml_backend_cpu_set_n_threads(g.backend, C.int(g.threads))
	g.galloc = C.ggml_gallocr_new(C.ggml_backend_get_default_buffer_type(g.backend))
	return g, nil
}

// Reset forgets the graph's nodes (tensors made on it are invalid after).
func (g *Graph) Reset() {
	C.ggml_reset(g.ctx)
	g.inputs = g.inputs[:0]
}

// Close frees the graph.
func (g *Graph) Close() {
	if g.ctx == nil {
		return
	}
	C.ggml_gallocr_free(g.galloc)
	C.ggml_backend_free(g.backend)
	C.ggml_free(g.ctx)
	g.ctx = nil
}

func (g *Graph) room(op string) {
	// Each operation makes a few tensors; keep the graph's own
	// bookkeeping (allocated at Compute) clear of them.
	need := 16*C.ggml_tensor_overhead() + C.ggml_graph_overhead_custom(graphNodes, false)
	if C.ggml_used_mem(g.ctx)+need > g.mem {
		fail(op, "the graph is past %d tensors", graphNodes)
	}
}

func (g *Graph) newTensor(typ C.enum_ggml_type, dims []int) *C.struct_ggml_tensor {
	g.room("new tensor")
	ne := ne4(dims)
	return C.ggml_new_tensor(g.ctx, typ, 4, (*C.int64_t)(unsafe.Pointer(&ne[0])))
}

// Input is a float32 input of dims holding data (kept, not copied, until
// Compute uploads it).
func (g *Graph) Input(data []float32, dims ...int) *Tensor {
	if len(data) != numel(dims) {
		fail("input", "%d values for dims %v", len(data), dims)
	}
	t := &Tensor{t: g.newTensor(C.GGML_TYPE_F32, dims), dims: slices.Clone(dims), f32: data}
	C.ggml_set_input(t.t)
	g.inputs = append(g.inputs, t)
	return t
}

// InputInts is an integer input of dims holding data.
func (g *Graph) InputInts(data []int32, dims ...int) *Tensor {
	if len(data) != numel(dims) {
		fail("input", "%d values for dims %v", len(data), dims)
	}
	t := &Tensor{t: g.newTensor(C.GGML_TYPE_I32, dims), dims: slices.Clone(dims), isInt: true, i32: data}
	C.ggml_set_input(t.t)
	g.inputs = append(g.inputs, t)
	return t
}

func markOutput(t *C.struct_ggml_tensor) {
	for ; t != nil; t = C.gm_view_src(t) {
		C.ggml_set_output(t)
	}
}

// Compute computes outs and returns their values (integers converted to
// float32), each in row-major order of its dims.
func (g *Graph) Compute(outs ...*Tensor) (_ [][]float32, err error) {
	defer Recover(&err)
	if len(outs) == 0 {
		return nil, nil
	}
	g.room("compute")
	gf := C.ggml_new_graph_custom(g.ctx, graphNodes, false)
	for _, o := range outs {
		markOutput(o.t)
		C.ggml_build_forward_expand(gf, o.t)
	}
	if !C.ggml_gallocr_alloc_graph(g.galloc, gf) {
		return nil, &Error{Op: "compute", Msg: "cannot allocate the graph's memory"}
	}
	for _, in := range g.inputs {
		if C.gm_allocated(in.t) == 0 {
			continue // not read by this graph
		}
		switch {
		case in.isInt && len(in.i32) > 0:
			C.ggml_backend_tensor_set(in.t, unsafe.Pointer(&in.i32[0]), 0, C.size_t(4*len(in.i32)))
		case len(in.f32) > 0:
			C.ggml_backend_tensor_set(in.t, unsafe.Pointer(&in.f32[0]), 0, C.size_t(4*len(in.f32)))
		}
		runtime.KeepAlive(in)
	}
	if st := C.ggml_backend_graph_compute(g.backend, gf); st != C.GGML_STATUS_SUCCESS {
		return nil, &Error{Op: "compute", Msg: fmt.Sprintf("status %d", int(st))}
	}
	res := make([][]float32, len(outs))
	for i, o := range outs {
		n := numel(o.dims)
		res[i] = make([]float32, n)
		if n == 0 {
			continue
		}
		switch C.gm_type(o.t) {
		case C.GGML_TYPE_F32:
			C.ggml_backend_tensor_get(o.t, unsafe.Pointer(&res[i][0]), 0, C.size_t(4*n))
		case C.GGML_TYPE_I32:
			v := make([]int32, n)
			C.ggml_backend_tensor_get(o.t, unsafe.Pointer(&v[0]), 0, C.size_t(4*n))
			for j, x := range v {
				res[i][j] = float32(x)
			}
		default:
			return nil, &Error{Op: "compute", Msg: fmt.Sprintf("output %d has ggml type %d", i, C.gm_type(o.t))}
		}
	}
	return res, nil
}
