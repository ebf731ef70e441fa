package onnx

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/groundmesh/groundmesh/model"
)

// Graph is one computation to export: its dynamic axes and Build, which
// runs the definition on a Tracer (declaring inputs with Tracer.Input,
// their sizes from Tracer.Sym) and returns the outputs and their names.
// Build must make the same operations in every trace; only sizes may
// differ.
type Graph struct {
	Name  string
	Syms  []Sym
	Build func(tr *Tracer) (names []string, outs []*T)
}

// IO is a graph input or output as the exported file declares it: its
// element type ("float32" or "int64") and dimensions, each a size or a
// dynamic axis' expression ("L", "N*16").
type IO struct {
	Name  string   `json:"name"`
	Type  string   `json:"type"`
	Dims  []string `json:"dims"`
	shape []poly
}

// Exported is one graph as an ONNX model.
type Exported struct {
	Name    string `json:"name"`
	Inputs  []IO   `json:"inputs"`
	Outputs []IO   `json:"outputs"`
	Nodes   int    `json:"nodes"`
	// SHA256 is the hash of Model, the ONNX file's bytes.
	SHA256 string `json:"sha256"`
	Model  []byte `json:"-"`
}

// trace is one run of Build.
type trace struct {
	calls []call
	names []string
	outs  []int
}

func runTrace(g Graph, syms map[string]int) (tc trace, err error) {
	tr := &Tracer{shape: model.ShapeOps(), syms: syms}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("onnx export %s at sizes %v: %v", g.Name, syms, r)
		}
	}()
	names, outs := g.Build(tr)
	if len(names) != len(outs) {
		return tc, fmt.Errorf("onnx export %s: %d output names for %d outputs", g.Name, len(names), len(outs))
	}
	tc = trace{calls: tr.calls, names: names}
	for _, o := range outs {
		tc.outs = append(tc.outs, o.id)
	}
	return tc, nil
}

// sameStructure checks that trace b made the operations a did.
func sameStructure(g string, a, b trace) error {
	if len(a.calls) != len(b.calls) {
		return fmt.Errorf("onnx export %s: %d operations at one size, %d at another: the definition branches on a size", g, len(a.calls), len(b.calls))
	}
	for i := range a.calls {
		x, y := &a.calls[i], &b.calls[i]
		if x.op != y.op || x.name != y.name || x.str != y.str || x.isInt != y.isInt || !slices.Equal(x.args, y.args) ||
			len(x.ints) != len(y.ints) || len(x.floats) != len(y.floats) || len(x.dims) != len(y.dims) {
			return fmt.Errorf("onnx export %s: operation %d is %s at one size and %s at another: the definition branches on a size", g, i, x.op, y.op)
		}
	}
	if !slices.Equal(a.names, b.names) || !slices.Equal(a.outs, b.outs) {
		return fmt.Errorf("onnx export %s: the outputs (%v) come from different operations at different sizes: the definition branches on a size", g, a.names)
	}
	return nil
}

// Export traces g over the grid of its dynamic axes and writes it as an
// ONNX model (IRVersion, opset Opset) with weights (every parameter the
// graph reads, by name) as initializers, in float32 or, with dtype f16,
// float16 cast to float32 as they are read. meta goes into the model's
// metadata_props.
func Export(g Graph, weights map[string][]float32, dtype string, meta [][2]string) (*Exported, error) {
	if dtype != model.DtypeF32 && dtype != model.DtypeF16 {
		return nil, fmt.Errorf("onnx export: dtype %q: an ONNX export holds its weights in %s or %s", dtype, model.DtypeF32, model.DtypeF16)
	}
	pts := gridPoints(g.Syms)
	traces := make([]trace, len(pts))
	for i, p := range pts {
		syms := map[string]int{}
		for j, s := range g.Syms {
			syms[s.Name] = p[j]
		}
		tc, err := runTrace(g, syms)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			if err := sameStructure(g.Name, traces[0], tc); err != nil {
				return nil, err
			}
		}
		traces[i] = tc
	}
	e := &emitter{g: &graph{name: g.Name, meta: meta}, syms: g.Syms, traces: traces, calls: traces[0].calls,
		weights: weights, dtype: dtype, consts: map[string]string{}, names: map[int]string{}, polys: map[string]string{}}
	if err := e.run(); err != nil {
		return nil, fmt.Errorf("onnx export %s: %w", g.Name, err)
	}
	out := &Exported{Name: g.Name, Nodes: len(e.g.nodes), Model: e.g.encode()}
	sum := sha256.Sum256(out.Model)
	out.SHA256 = hex.EncodeToString(sum[:])
	for _, vi := range e.g.inputs {
		out.Inputs = append(out.Inputs, ioOf(vi))
	}
	for _, vi := range e.g.outputs {
		out.Outputs = append(out.Outputs, ioOf(vi))
	}
	return out, nil
}

func ioOf(vi valueInfo) IO {
	io := IO{Name: vi.name, Type: "float32"}
	if vi.dtype == typeInt64 {
		io.Type = "int64"
	}
	for _, d := range vi.dims {
		if d.param != "" {
			io.Dims = append(io.Dims, d.param)
		} else {
			io.Dims = append(io.Dims, strconv.Itoa(d.size))
		}
	}
	return io
}

type emitter struct {
	g       *graph
	syms    []Sym
	traces  []trace
	calls   []call
	weights map[string][]float32
	dtype   string
	// names are the emitted tensors' names by call id; consts and polys
	// the constants and size expressions emitted so far.
	names  map[int]string
	consts map[string]string
	polys  map[string]string
	symSrc []string
	params map[string]bool
	// n and nconst number the nodes' outputs ("nN") and the constants
	// ("cN").
	n, nconst int
}

// values lists one argument of call ci across the traces.
func (e *emitter) values(ci int, f func(c *call) int64) []int64 {
	out := make([]int64, len(e.traces))
	for i, t := range e.traces {
		out[i] = f(&t.calls[ci])
	}
	return out
}

func (e *emitter) intPoly(ci, j int) (poly, error) {
	p, err := fit(e.syms, e.values(ci, func(c *call) int64 { return int64(c.ints[j]) }))
	if err != nil {
		return nil, fmt.Errorf("operation %d (%s), argument %d: %w", ci, e.calls[ci].op, j, err)
	}
	return p, nil
}

func (e *emitter) dimPoly(ci, j int) (poly, error) {
	p, err := fit(e.syms, e.values(ci, func(c *call) int64 { return int64(c.dims[j]) }))
	if err != nil {
		return nil, fmt.Errorf("operation %d (%s), axis %d: %w", ci, e.calls[ci].op, j, err)
	}
	return p, nil
}

func (e *emitter) tmp() string {
	e.n++
	return "n" + strconv.Itoa(e.n)
}

func (e *emitter) node(op string, inputs []string, attrs ...attr) string {
	out := e.tmp()
	e.g.nodes = append(e.g.nodes, &node{op: op, name: out, inputs: inputs, outputs: []string{out}, attrs: attrs})
	return out
}

func (e *emitter) initializer(t *tensor) string {
	e.g.initializers = append(e.g.initializers, t)
	return t.name
}

// constant adds the initializer mk makes under a fresh name, once per key:
// constants of up to 64 values are shared, larger ones (a static iota
// table) are not looked up.
func (e *emitter) constant(key string, size int, mk func(name string) *tensor) string {
	shared := size <= 64
	if n, ok := e.consts[key]; ok && shared {
		return n
	}
	e.nconst++
	n := e.initializer(mk("c" + strconv.Itoa(e.nconst)))
	if shared {
		e.consts[key] = n
	}
	return n
}

func (e *emitter) constI64(dims []int, vals ...int64) string {
	return e.constant(fmt.Sprint("i", dims, vals), len(vals), func(name string) *tensor { return int64Tensor(name, dims, vals) })
}

func (e *emitter) constF32(dims []int, vals ...float32) string {
	return e.constant(fmt.Sprint("f", dims, vals), len(vals), func(name string) *tensor { return floatTensor(name, dims, vals) })
}

// vec1 is a one-element int64 tensor [1] holding p.
func (e *emitter) vec1(p poly) (string, error) {
	if c, ok := p.constant(); ok {
		return e.constI64([]int{1}, c), nil
	}
	key := p.String(e.syms)
	if n, ok := e.polys[key]; ok {
		return n, nil
	}
	var sum string
	for _, t := range p {
		var prod string
		for a, ex := range t.exp {
			for range ex {
				if e.symSrc[a] == "" {
					return "", fmt.Errorf("dynamic axis %s is no input's axis", e.syms[a].Name)
				}
				if prod == "" {
					prod = e.symSrc[a]
				} else {
					prod = e.node("Mul", []string{prod, e.symSrc[a]})
				}
			}
		}
		switch {
		case prod == "":
			prod = e.constI64([]int{1}, t.coef)
		case t.coef != 1:
			prod = e.node("Mul", []string{prod, e.constI64([]int{1}, t.coef)})
		}
		if sum == "" {
			sum = prod
		} else {
			sum = e.node("Add", []string{sum, prod})
		}
	}
	e.polys[key] = sum
	return sum, nil
}

// vec is the int64 vector of polys ps.
func (e *emitter) vec(ps []poly) (string, error) {
	vals := make([]int64, len(ps))
	static := true
	for i, p := range ps {
		c, ok := p.constant()
		vals[i], static = c, static && ok
	}
	if static {
		return e.constI64([]int{len(ps)}, vals...), nil
	}
	parts := make([]string, len(ps))
	for i, p := range ps {
		var err error
		if parts[i], err = e.vec1(p); err != nil {
			return "", err
		}
	}
	return e.node("Concat", parts, intAttr("axis", 0)), nil
}

// intArgs fits arguments js of call ci.
func (e *emitter) intArgs(ci int, js ...int) ([]poly, error) {
	out := make([]poly, len(js))
	for i, j := range js {
		var err error
		if out[i], err = e.intPoly(ci, j); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// scalarF is a float32 scalar holding float argument j of call ci, which
// may be a size (a whole number fitting a polynomial of the axes).
func (e *emitter) scalarF(ci, j int) (string, error) {
	vals := make([]float64, len(e.traces))
	same := true
	for i, t := range e.traces {
		vals[i] = t.calls[ci].floats[j]
		same = same && vals[i] == vals[0]
	}
	if same {
		return e.constF32([]int{}, float32(vals[0])), nil
	}
	iv := make([]int64, len(vals))
	for i, v := range vals {
		if v != math.Trunc(v) {
			return "", fmt.Errorf("operation %d (%s): argument %v changes with the sizes and is not a whole number", ci, e.calls[ci].op, vals)
		}
		iv[i] = int64(v)
	}
	p, err := fit(e.syms, iv)
	if err != nil {
		return "", fmt.Errorf("operation %d (%s): %w", ci, e.calls[ci].op, err)
	}
	v, err := e.vec1(p)
	if err != nil {
		return "", err
	}
	return e.scalar(e.node("Cast", []string{v}, intAttr("to", typeFloat))), nil
}

// scalar reshapes a one-element tensor to rank 0.
func (e *emitter) scalar(x string) string {
	return e.node("Reshape", []string{x, e.constI64([]int{0})})
}

// reach marks the calls the outputs read.
func (e *emitter) reach() []bool {
	live := make([]bool, len(e.calls))
	stack := slices.Clone(e.traces[0].outs)
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if live[i] {
			continue
		}
		live[i] = true
		stack = append(stack, e.calls[i].args...)
	}
	return live
}

func (e *emitter) run() error {
	live := e.reach()
	e.params = map[string]bool{}
	e.symSrc = make([]string, len(e.syms))
	// Inputs first: their declared shapes, and the source of each
	// dynamic axis (the first input axis that is a multiple of it).
	for ci, c := range e.calls {
		if !live[ci] {
			continue
		}
		switch c.op {
		case "Placeholder":
			return errors.New("a placeholder reaches the outputs")
		case "Input":
		default:
			continue
		}
		vi := valueInfo{name: c.name, dtype: typeFloat}
		if c.isInt {
			vi.dtype = typeInt64
		}
		for j := range c.dims {
			p, err := e.dimPoly(ci, j)
			if err != nil {
				return err
			}
			if v, ok := p.constant(); ok {
				vi.dims = append(vi.dims, dim{size: int(v)})
				continue
			}
			vi.dims = append(vi.dims, dim{param: p.String(e.syms)})
			if s, k, ok := p.single(); ok && e.symSrc[s] == "" {
				shape := e.node("Shape", []string{c.name})
				src := e.node("Gather", []string{shape, e.constI64([]int{1}, int64(j))}, intAttr("axis", 0))
				if k != 1 {
					src = e.node("Div", []string{src, e.constI64([]int{1}, k)})
				}
				e.symSrc[s] = src
			}
		}
		e.g.inputs = append(e.g.inputs, vi)
		e.names[ci] = c.name
	}
	for ci := range e.calls {
		if !live[ci] || e.calls[ci].op == "Input" {
			continue
		}
		if err := e.emit(ci); err != nil {
			return err
		}
	}
	outNames := map[string]bool{}
	for i, ci := range e.traces[0].outs {
		name := e.traces[0].names[i]
		if outNames[name] {
			return fmt.Errorf("output %q named twice", name)
		}
		outNames[name] = true
		e.g.nodes = append(e.g.nodes, &node{op: "Identity", name: name, inputs: []string{e.names[ci]}, outputs: []string{name}})
		vi := valueInfo{name: name, dtype: typeFloat}
		if e.calls[ci].isInt {
			vi.dtype = typeInt64
		}
		for j := range e.calls[ci].dims {
			p, err := e.dimPoly(ci, j)
			if err != nil {
				return err
			}
			if v, ok := p.constant(); ok {
				vi.dims = append(vi.dims, dim{size: int(v)})
			} else {
				vi.dims = append(vi.dims, dim{param: p.String(e.syms)})
			}
		}
		e.g.outputs = append(e.g.outputs, vi)
	}
	return nil
}

func (e *emitter) param(ci int) error {
	c := &e.calls[ci]
	for j := range c.ints {
		if p, err := e.intPoly(ci, j); err != nil {
			return err
		} else if _, ok := p.constant(); !ok {
			return fmt.Errorf("parameter %q: its shape changes with the sizes", c.name)
		}
	}
	if e.params[c.name] {
		e.names[ci] = c.name
		return nil
	}
	w, ok := e.weights[c.name]
	if !ok {
		return fmt.Errorf("no weights for parameter %q", c.name)
	}
	n := 1
	for _, d := range c.dims {
		n *= d
	}
	if len(w) != n {
		return fmt.Errorf("parameter %q has %d values, its shape %v holds %d", c.name, len(w), c.dims, n)
	}
	e.params[c.name] = true
	e.names[ci] = c.name
	if e.dtype == model.DtypeF16 {
		raw, err := model.Quantize(model.DtypeF16, w, max(1, c.dims[len(c.dims)-1]))
		if err != nil {
			return fmt.Errorf("parameter %q: %w", c.name, err)
		}
		e.initializer(&tensor{name: c.name + ".f16", dims: c.dims, dtype: typeFloat16, raw: raw})
		e.g.nodes = append(e.g.nodes, &node{op: "Cast", name: c.name, inputs: []string{c.name + ".f16"}, outputs: []string{c.name}, attrs: []attr{intAttr("to", typeFloat)}})
		return nil
	}
	e.initializer(floatTensor(c.name, c.dims, w))
	return nil
}

func (e *emitter) emit(ci int) error {
	c := &e.calls[ci]
	in := make([]string, len(c.args))
	for i, a := range c.args {
		n, ok := e.names[a]
		if !ok {
			return fmt.Errorf("operation %d (%s) reads operation %d, not emitted", ci, c.op, a)
		}
		in[i] = n
	}
	var out string
	var err error
	switch c.op {
	case "Param":
		return e.param(ci)
	case "Scalar":
		out, err = e.scalarF(ci, 0)
	case "Iota":
		out, err = e.iota(ci)
	case "LowerTri":
		out, err = e.lowerTri(ci)
	case "ZerosLike":
		out = e.node("ConstantOfShape", []string{e.node("Shape", in)})
	case "Add", "Sub", "Mul", "Div", "Max", "Min", "MatMul":
		out = e.node(c.op, in)
	case "Greater", "Equal", "GreaterOrEqual", "LessOrEqual":
		out = e.node("Cast", []string{e.node(c.op, in)}, intAttr("to", typeFloat))
	case "Scale", "Shift":
		var s string
		if s, err = e.scalarF(ci, 0); err == nil {
			op := map[string]string{"Scale": "Mul", "Shift": "Add"}[c.op]
			out = e.node(op, []string{in[0], s})
		}
	case "Neg", "Abs", "Exp", "Log", "Sqrt", "Floor", "Softmax", "LogSoftmax":
		if c.op == "Softmax" || c.op == "LogSoftmax" {
			out = e.node(c.op, in, intAttr("axis", -1))
		} else {
			out = e.node(c.op, in)
		}
	case "Log1P":
		out = e.node("Log", []string{e.node("Add", []string{in[0], e.constF32([]int{}, 1)})})
	case "Square":
		out = e.node("Mul", []string{in[0], in[0]})
	case "Gelu":
		// x * (1 + erf(x / sqrt 2)) / 2, the exact GELU.
		erf := e.node("Erf", []string{e.node("Mul", []string{in[0], e.constF32([]int{}, float32(1/math.Sqrt2))})})
		out = e.node("Mul", []string{e.node("Mul", []string{in[0], e.constF32([]int{}, 0.5)}), e.node("Add", []string{erf, e.constF32([]int{}, 1)})})
	case "Clip":
		var lo, hi string
		if lo, err = e.scalarF(ci, 0); err == nil {
			if hi, err = e.scalarF(ci, 1); err == nil {
				out = e.node("Clip", []string{in[0], lo, hi})
			}
		}
	case "ToFloat":
		out = e.node("Cast", in, intAttr("to", typeFloat))
	case "ToInt":
		out = e.node("Cast", in, intAttr("to", typeInt64))
	case "Reshape":
		var ps []poly
		if ps, err = e.intArgs(ci, seq(len(c.ints))...); err == nil {
			var shape string
			if shape, err = e.vec(ps); err == nil {
				out = e.node("Reshape", []string{in[0], shape})
			}
		}
	case "Transpose":
		out = e.node("Transpose", in, intsAttr("perm", c.ints...))
	case "Slice":
		out, err = e.slice(ci, in[0])
	case "Concat":
		out = e.node("Concat", in, intAttr("axis", c.ints[0]))
	case "ReduceSum", "ReduceMax", "ReduceMean":
		keep := intAttr("keepdims", c.ints[0])
		axes := c.ints[1:]
		switch {
		case len(axes) == 0:
			out = e.node(c.op, in, keep)
		case c.op == "ReduceSum":
			a := make([]int64, len(axes))
			for i, x := range axes {
				a[i] = int64(x)
			}
			out = e.node(c.op, []string{in[0], e.constI64([]int{len(a)}, a...)}, keep)
		default:
			out = e.node(c.op, in, keep, intsAttr("axes", axes...))
		}
	case "LayerNorm":
		out = e.node("LayerNormalization", in, intAttr("axis", -1), floatAttr("epsilon", model.LayerNormEps))
	case "Dense":
		out = e.node("MatMul", in[:2])
		if len(in) > 2 {
			out = e.node("Add", []string{out, in[2]})
		}
	case "MatMulT":
		r := len(e.calls[c.args[1]].dims)
		perm := seq(r)
		perm[r-2], perm[r-1] = r-1, r-2
		out = e.node("MatMul", []string{in[0], e.node("Transpose", in[1:2], intsAttr("perm", perm...))})
	case "Conv3x3":
		s := c.ints[0]
		x := e.node("Transpose", in[:1], intsAttr("perm", 0, 3, 1, 2))
		w := e.node("Transpose", in[1:2], intsAttr("perm", 3, 2, 0, 1))
		y := e.node("Conv", []string{x, w, in[2]}, intsAttr("kernel_shape", 3, 3), intsAttr("pads", 1, 1, 1, 1), intsAttr("strides", s, s))
		out = e.node("Transpose", []string{y}, intsAttr("perm", 0, 2, 3, 1))
	case "GRU":
		out = e.gru(ci, in)
	case "Einsum":
		out = e.node("Einsum", in, attr{name: "equation", typ: attrString, s: c.str})
	case "Gather":
		out = e.node("Gather", in, intAttr("axis", 0))
	case "GatherElements":
		out = e.node("GatherElements", in, intAttr("axis", 1))
	case "OneHot":
		out = e.node("OneHot", []string{in[0], e.constI64([]int{}, int64(c.ints[0])), e.constF32([]int{2}, 0, 1)}, intAttr("axis", -1))
	default:
		return fmt.Errorf("operation %d: %s has no ONNX form", ci, c.op)
	}
	if err != nil {
		return err
	}
	e.names[ci] = out
	return nil
}

// gru emits Tracer.GRU as ONNX's GRU (linear_before_reset 1: the reset
// gate scales the state's product with its bias, as model.RecurrentOps
// says), its weights transposed to ONNX's [directions, 3H, in] and each
// row's length the sum of its mask; it returns the last state [B, H].
func (e *emitter) gru(ci int, in []string) string {
	c := &e.calls[ci]
	h := c.dims[1]
	dir := "forward"
	if c.ints[0] == 1 {
		dir = "reverse"
	}
	zero := e.constI64([]int{1}, 0)
	x := e.node("Transpose", in[:1], intsAttr("perm", 1, 0, 2)) // [L, B, W]
	w := e.node("Unsqueeze", []string{e.node("Transpose", in[2:3], intsAttr("perm", 1, 0)), zero})
	r := e.node("Unsqueeze", []string{e.node("Transpose", in[4:5], intsAttr("perm", 1, 0)), zero})
	b := e.node("Unsqueeze", []string{e.node("Concat", []string{in[3], in[5]}, intAttr("axis", 0)), zero})
	lens := e.node("Cast", []string{e.node("ReduceSum", []string{in[1], e.constI64([]int{1}, 1)}, intAttr("keepdims", 0))}, intAttr("to", typeInt32))
	y, yh := e.tmp(), e.tmp()
	e.g.nodes = append(e.g.nodes, &node{op: "GRU", name: yh, inputs: []string{x, w, r, b, lens}, outputs: []string{y, yh},
		attrs: []attr{intAttr("hidden_size", h), intAttr("linear_before_reset", 1), {name: "direction", typ: attrString, s: dir}}})
	return e.node("Squeeze", []string{yh, zero}) // [1, B, H] -> [B, H]
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

func (e *emitter) slice(ci int, x string) (string, error) {
	c := &e.calls[ci]
	nr := len(c.ints) / 4
	var starts, ends []poly
	axes := make([]int64, nr)
	steps := make([]int64, nr)
	for r := range nr {
		ps, err := e.intArgs(ci, 4*r, 4*r+1, 4*r+2, 4*r+3)
		if err != nil {
			return "", err
		}
		a, ok1 := ps[0].constant()
		s, ok2 := ps[3].constant()
		if !ok1 || !ok2 {
			return "", fmt.Errorf("operation %d (Slice): its axis or stride changes with the sizes", ci)
		}
		axes[r], steps[r] = a, max(s, 1)
		starts, ends = append(starts, ps[1]), append(ends, ps[2])
	}
	st, err := e.vec(starts)
	if err != nil {
		return "", err
	}
	en, err := e.vec(ends)
	if err != nil {
		return "", err
	}
	return e.node("Slice", []string{x, st, en, e.constI64([]int{nr}, axes...), e.constI64([]int{nr}, steps...)}), nil
}

// sizeF is a float32 scalar holding size p.
func (e *emitter) sizeF(p poly) (string, error) {
	if c, ok := p.constant(); ok {
		return e.constF32([]int{}, float32(c)), nil
	}
	v, err := e.vec1(p)
	if err != nil {
		return "", err
	}
	return e.scalar(e.node("Cast", []string{v}, intAttr("to", typeFloat))), nil
}

func (e *emitter) iota(ci int) (string, error) {
	c := &e.calls[ci]
	axis := c.ints[0]
	dims, err := e.intArgs(ci, seq(len(c.ints))[1:]...)
	if err != nil {
		return "", err
	}
	if axis < 0 {
		axis += len(dims)
	}
	static := true
	for _, p := range dims {
		_, ok := p.constant()
		static = static && ok
	}
	if static {
		d := c.ints[1:]
		n := 1
		for _, x := range d {
			n *= x
		}
		vals := make([]float32, n)
		inner := 1
		for _, x := range d[axis+1:] {
			inner *= x
		}
		for i := range vals {
			vals[i] = float32((i / inner) % d[axis])
		}
		return e.constF32(d, vals...), nil
	}
	n, err := e.sizeF(dims[axis])
	if err != nil {
		return "", err
	}
	r := e.node("Range", []string{e.constF32([]int{}, 0), n, e.constF32([]int{}, 1)})
	ones := make([]poly, len(dims))
	for i := range ones {
		ones[i] = poly{{coef: 1, exp: make([]int, len(e.syms))}}
	}
	ones[axis] = poly{{coef: -1, exp: make([]int, len(e.syms))}}
	shape1, err := e.vec(ones)
	if err != nil {
		return "", err
	}
	full, err := e.vec(dims)
	if err != nil {
		return "", err
	}
	return e.node("Expand", []string{e.node("Reshape", []string{r, shape1}), full}), nil
}

func (e *emitter) lowerTri(ci int) (string, error) {
	c := &e.calls[ci]
	ps, err := e.intArgs(ci, 0)
	if err != nil {
		return "", err
	}
	if _, ok := ps[0].constant(); ok {
		n := c.ints[0]
		vals := make([]float32, n*n)
		for r := range n {
			for k := 0; k <= r; k++ {
				vals[r*n+k] = 1
			}
		}
		return e.constF32([]int{n, n}, vals...), nil
	}
	n, err := e.sizeF(ps[0])
	if err != nil {
		return "", err
	}
	r := e.node("Range", []string{e.constF32([]int{}, 0), n, e.constF32([]int{}, 1)})
	rows := e.node("Reshape", []string{r, e.constI64([]int{2}, -1, 1)})
	cols := e.node("Reshape", []string{r, e.constI64([]int{2}, 1, -1)})
	return e.node("Cast", []string{e.node("GreaterOrEqual", []string{rows, cols})}, intAttr("to", typeFloat)), nil
}
