package onnx

import (
	"encoding/binary"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// The ONNX protobuf messages (onnx.proto3, IR version 8) this exporter
// writes and its reader checks, encoded field by field: the schema is
// small and stable, and a generated package would carry the whole of it.

// ONNX tensor element types (TensorProto.DataType).
const (
	typeFloat   = 1
	typeInt32   = 6
	typeInt64   = 7
	typeBool    = 9
	typeFloat16 = 10
)

// Attribute types (AttributeProto.AttributeType).
const (
	attrFloat  = 1
	attrInt    = 2
	attrFloats = 6
	attrInts   = 7
	attrString = 3
)

// IRVersion is the ONNX IR version written (ONNX 1.10 and later read it);
// Opset is the default domain's operator set version.
const (
	IRVersion = 8
	Opset     = 17
)

type pb struct{ b []byte }

func (p *pb) bytes(field protowire.Number, v []byte) {
	p.b = protowire.AppendTag(p.b, field, protowire.BytesType)
	p.b = protowire.AppendBytes(p.b, v)
}
func (p *pb) str(field protowire.Number, s string) { p.bytes(field, []byte(s)) }
func (p *pb) varint(field protowire.Number, v int64) {
	p.b = protowire.AppendTag(p.b, field, protowire.VarintType)
	p.b = protowire.AppendVarint(p.b, uint64(v))
}
func (p *pb) float(field protowire.Number, v float32) {
	p.b = protowire.AppendTag(p.b, field, protowire.Fixed32Type)
	p.b = protowire.AppendFixed32(p.b, math.Float32bits(v))
}
func (p *pb) packedVarints(field protowire.Number, vs []int64) {
	var q []byte
	for _, v := range vs {
		q = protowire.AppendVarint(q, uint64(v))
	}
	p.bytes(field, q)
}
func (p *pb) packedFloats(field protowire.Number, vs []float32) {
	var q []byte
	for _, v := range vs {
		q = protowire.AppendFixed32(q, math.Float32bits(v))
	}
	p.bytes(field, q)
}

// attr is one node attribute: an int, ints, a float or floats.
type attr struct {
	name   string
	typ    int
	i      int64
	f      float32
	ints   []int64
	floats []float32
	s      string
}

func intAttr(name string, v int) attr       { return attr{name: name, typ: attrInt, i: int64(v)} }
func floatAttr(name string, v float64) attr { return attr{name: name, typ: attrFloat, f: float32(v)} }
func intsAttr(name string, vs ...int) attr {
	a := attr{name: name, typ: attrInts}
	for _, v := range vs {
		a.ints = append(a.ints, int64(v))
	}
	return a
}

func (a attr) encode() []byte {
	var p pb
	p.str(1, a.name)
	switch a.typ {
	case attrFloat:
		p.float(2, a.f)
	case attrInt:
		p.varint(3, a.i)
	case attrInts:
		p.packedVarints(8, a.ints)
	case attrFloats:
		p.packedFloats(7, a.floats)
	case attrString:
		p.str(4, a.s)
	}
	p.varint(20, int64(a.typ))
	return p.b
}

// node is a NodeProto.
type node struct {
	op      string
	name    string
	inputs  []string
	outputs []string
	attrs   []attr
}

func (n *node) encode() []byte {
	var p pb
	for _, s := range n.inputs {
		p.str(1, s)
	}
	for _, s := range n.outputs {
		p.str(2, s)
	}
	p.str(3, n.name)
	p.str(4, n.op)
	for _, a := range n.attrs {
		p.bytes(5, a.encode())
	}
	return p.b
}

// tensor is a TensorProto: an initializer, with its data raw
// (little-endian).
type tensor struct {
	name  string
	dims  []int
	dtype int
	raw   []byte
}

func (t *tensor) encode() []byte {
	var p pb
	ds := make([]int64, len(t.dims))
	for i, d := range t.dims {
		ds[i] = int64(d)
	}
	if len(ds) > 0 {
		p.packedVarints(1, ds)
	}
	p.varint(2, int64(t.dtype))
	p.str(8, t.name)
	p.bytes(9, t.raw)
	return p.b
}

func floatTensor(name string, dims []int, v []float32) *tensor {
	raw := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(x))
	}
	return &tensor{name: name, dims: dims, dtype: typeFloat, raw: raw}
}

func int64Tensor(name string, dims []int, v []int64) *tensor {
	raw := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(x))
	}
	return &tensor{name: name, dims: dims, dtype: typeInt64, raw: raw}
}

// dim is one axis of a graph input's or output's declared shape: a size,
// or a symbolic name (a dynamic axis).
type dim struct {
	size  int
	param string
}

// valueInfo is a ValueInfoProto: a graph input's or output's name, type
// and shape.
type valueInfo struct {
	name  string
	dtype int
	dims  []dim
}

func (v *valueInfo) encode() []byte {
	var shape pb
	for _, d := range v.dims {
		var dp pb
		if d.param != "" {
			dp.str(2, d.param)
		} else {
			dp.varint(1, int64(d.size))
		}
		shape.bytes(1, dp.b)
	}
	var tt pb
	tt.varint(1, int64(v.dtype))
	tt.bytes(2, shape.b)
	var typ pb
	typ.bytes(1, tt.b)
	var p pb
	p.str(1, v.name)
	p.bytes(2, typ.b)
	return p.b
}

// graph is a GraphProto and the ModelProto around it.
type graph struct {
	name         string
	nodes        []*node
	initializers []*tensor
	inputs       []valueInfo
	outputs      []valueInfo
	doc          string
	meta         [][2]string
}

// encode returns the ModelProto.
func (g *graph) encode() []byte {
	var gp pb
	for _, n := range g.nodes {
		gp.bytes(1, n.encode())
	}
	gp.str(2, g.name)
	for _, t := range g.initializers {
		gp.bytes(5, t.encode())
	}
	if g.doc != "" {
		gp.str(10, g.doc)
	}
	for i := range g.inputs {
		gp.bytes(11, g.inputs[i].encode())
	}
	for i := range g.outputs {
		gp.bytes(12, g.outputs[i].encode())
	}
	var m pb
	m.varint(1, IRVersion)
	m.str(2, "groundmesh")
	m.str(3, "1")
	var opset pb
	opset.str(1, "")
	opset.varint(2, Opset)
	m.bytes(8, opset.b)
	m.bytes(7, gp.b)
	for _, kv := range g.meta {
		var e pb
		e.str(1, kv[0])
		e.str(2, kv[1])
		m.bytes(14, e.b)
	}
	return m.b
}

// fields walks the protobuf message b, calling f with each field's
// number, wire type and value (bytes for length-delimited fields, the
// varint or fixed value otherwise).
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error) error {
	for len(b) > 0 {
		num, typ, k := protowire.ConsumeTag(b)
		if k < 0 {
			return fmt.Errorf("corrupt protobuf: %w", protowire.ParseError(k))
		}
		b = b[k:]
		var v []byte
		var n uint64
		switch typ {
		case protowire.BytesType:
			v, k = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			n, k = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x uint32
			x, k = protowire.ConsumeFixed32(b)
			n = uint64(x)
		case protowire.Fixed64Type:
			n, k = protowire.ConsumeFixed64(b)
		default:
			k = protowire.ConsumeFieldValue(num, typ, b)
		}
		if k < 0 {
			return fmt.Errorf("corrupt protobuf (field %d): %w", num, protowire.ParseError(k))
		}
		b = b[k:]
		if err := f(num, typ, v, n); err != nil {
			return err
		}
	}
	return nil
}
