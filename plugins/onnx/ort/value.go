//go:build onnx

package ort

import (
	"fmt"
	"strings"

	onnxruntime "github.com/yalue/onnxruntime_go"
)

// DType is a Value's element type; its numbers are ONNX's
// TensorProto.DataType codes.
type DType int

// The element types Run takes and returns.
const (
	Float32 DType = 1 // ONNX FLOAT
	Int64   DType = 7 // ONNX INT64
)

func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case Int64:
		return "int64"
	}
	return fmt.Sprintf("DType(%d)", int(d))
}

// Value is a dense tensor in row-major order: its element type, its shape
// (empty for a scalar) and its data in F32 or I64, the one Type names,
// holding exactly the shape's number of elements.
type Value struct {
	Type  DType
	Shape []int64
	F32   []float32
	I64   []int64
}

// Float32Tensor is a float32 Value of the given shape over data (not
// copied).
func Float32Tensor(data []float32, shape ...int64) Value {
	return Value{Type: Float32, Shape: shape, F32: data}
}

// Int64Tensor is an int64 Value of the given shape over data (not copied).
func Int64Tensor(data []int64, shape ...int64) Value {
	return Value{Type: Int64, Shape: shape, I64: data}
}

// String is the type and shape, as "float32[2 3 16]".
func (v Value) String() string {
	return fmt.Sprintf("%s%v", v.Type, v.Shape)
}

// Len is the number of elements the shape holds.
func (v Value) Len() int64 {
	n := int64(1)
	for _, d := range v.Shape {
		n *= d
	}
	return n
}

// check reports a Value whose shape and data disagree.
func (v Value) check() error {
	for _, d := range v.Shape {
		if d < 0 {
			return fmt.Errorf("%v: negative dimension", v)
		}
	}
	var have int
	switch v.Type {
	case Float32:
		have = len(v.F32)
	case Int64:
		have = len(v.I64)
	default:
		return fmt.Errorf("element type %v: want float32 or int64", v.Type)
	}
	if int64(have) != v.Len() {
		return fmt.Errorf("%v holds %d elements but its data has %d", v, v.Len(), have)
	}
	return nil
}

// tensor makes an ORT value over v's data, which ORT reads in place.
func (v Value) tensor() (onnxruntime.Value, error) {
	if err := v.check(); err != nil {
		return nil, err
	}
	var (
		t   onnxruntime.Value
		err error
	)
	switch {
	case len(v.Shape) == 0 && v.Type == Float32:
		t, err = onnxruntime.NewScalar(v.F32[0])
	case len(v.Shape) == 0:
		t, err = onnxruntime.NewScalar(v.I64[0])
	case v.Type == Float32:
		t, err = onnxruntime.NewTensor(onnxruntime.NewShape(v.Shape...), v.F32)
	default:
		t, err = onnxruntime.NewTensor(onnxruntime.NewShape(v.Shape...), v.I64)
	}
	if err != nil {
		return nil, fmt.Errorf("make %v tensor: %w", v, err)
	}
	return t, nil
}

// fromORT takes an output's data and shape out of ORT's value; o is still
// to be destroyed by the caller (its data, copied to Go memory by
// onnxruntime_go, stays valid).
func fromORT(o onnxruntime.Value) (Value, error) {
	switch t := o.(type) {
	case *onnxruntime.Tensor[float32]:
		return Value{Type: Float32, Shape: []int64(t.GetShape().Clone()), F32: t.GetData()}, nil
	case *onnxruntime.Tensor[int64]:
		return Value{Type: Int64, Shape: []int64(t.GetShape().Clone()), I64: t.GetData()}, nil
	case nil:
		return Value{}, fmt.Errorf("no value")
	}
	if o.GetONNXType() == onnxruntime.ONNXTypeTensor {
		return Value{}, fmt.Errorf("element type %s: only float32 and int64 outputs are supported", elementName(onnxruntime.TensorElementDataType(o.DataType())))
	}
	return Value{}, fmt.Errorf("a %s: only tensors are supported", o.GetONNXType())
}

// elementName is ORT's element type name in Go's words: "float32", "int64",
// "bool".
func elementName(t onnxruntime.TensorElementDataType) string {
	switch t {
	case onnxruntime.TensorElementDataTypeFloat:
		return "float32"
	case onnxruntime.TensorElementDataTypeDouble:
		return "float64"
	}
	return strings.ToLower(strings.TrimPrefix(t.String(), "ONNX_TENSOR_ELEMENT_DATA_TYPE_"))
}
