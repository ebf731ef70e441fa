package model

import (
	"bytes"
	"encoding/binary"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestSafetensorsRoundTrip(t *testing.T) {
	f32 := make([]byte, 4*6)
	for i := range 6 {
		binary.LittleEndian.PutUint32(f32[4*i:], math.Float32bits(float32(i)*0.5-1))
	}
	in := []Tensor{
		{Name: "tokens", DType: "I32", Shape: []int{2, 3}, Data: Int32Bytes([]int32{1, -2, 3, 4, 5, -1})},
		{Name: "w", DType: "F32", Shape: []int{3, 2}, Data: f32},
		{Name: "empty", DType: "U8", Shape: []int{0, 4, 4, 3}, Data: nil},
		{Name: "scalar", DType: "I64", Shape: nil, Data: make([]byte, 8)},
		{Name: "bytes", DType: "U8", Shape: []int{5}, Data: []byte{1, 2, 3, 4, 5}},
	}
	meta := map[string]string{"config_sha256": "abc", "synth_set": "s1"}
	var buf bytes.Buffer
	n, err := WriteSafetensors(&buf, in, meta)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("wrote %d, reported %d", buf.Len(), n)
	}
	hlen := binary.LittleEndian.Uint64(buf.Bytes())
	if hlen%8 != 0 {
		t.Fatalf("header length %d not 8-aligned", hlen)
	}
	out, gotMeta, err := ReadSafetensors(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) || gotMeta["config_sha256"] != "abc" || gotMeta["synth_set"] != "s1" {
		t.Fatalf("read %d tensors, meta %v", len(out), gotMeta)
	}
	for i := range in {
		a, b := in[i], out[i]
		if a.Name != b.Name || a.DType != b.DType || !slices.Equal(a.Shape, b.Shape) && len(a.Shape)+len(b.Shape) > 0 || !bytes.Equal(a.Data, b.Data) {
			t.Fatalf("tensor %d: wrote %+v, read %+v", i, a, b)
		}
	}
	if got := BytesInt32(out[0].Data); !slices.Equal(got, []int32{1, -2, 3, 4, 5, -1}) {
		t.Fatalf("int32s %v", got)
	}
	// Same input, same bytes.
	var again bytes.Buffer
	if _, err := WriteSafetensors(&again, in, meta); err != nil || !bytes.Equal(again.Bytes(), buf.Bytes()) {
		t.Fatal("writing twice gave different bytes")
	}
}

// TestSafetensorsReadsForeignFile reads a file laid out by hand the way
// other writers do: keys in another order, tensors not in key order, no
// metadata, header padded with spaces.
func TestSafetensorsReadsForeignFile(t *testing.T) {
	header := `{"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}  `
	var file []byte
	file = binary.LittleEndian.AppendUint64(file, uint64(len(header)))
	file = append(file, header...)
	file = append(file, 7, 0, 0, 0, 9, 10)
	ts, meta, err := ReadSafetensors(file)
	if err != nil {
		t.Fatal(err)
	}
	if meta != nil || len(ts) != 2 || ts[0].Name != "a" || ts[1].Name != "b" || BytesInt32(ts[0].Data)[0] != 7 || !bytes.Equal(ts[1].Data, []byte{9, 10}) {
		t.Fatalf("read %+v %v", ts, meta)
	}
}

func TestSafetensorsRejects(t *testing.T) {
	mk := func(header string, data ...byte) []byte {
		b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
		return append(append(b, header...), data...)
	}
	bad := map[string][]byte{
		"short":            {1, 2, 3},
		"header too long":  binary.LittleEndian.AppendUint64(nil, 1000),
		"not json":         mk("nope"),
		"unknown dtype":    mk(`{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}`, 1),
		"size mismatch":    mk(`{"a":{"dtype":"I32","shape":[2],"data_offsets":[0,4]}}`, 1, 2, 3, 4),
		"past the end":     mk(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, 1, 2),
		"gap":              mk(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 1, 2),
		"overlap":          mk(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}`, 1, 2, 3),
		"trailing data":    mk(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1, 2),
		"negative dim":     mk(`{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}`),
		"unknown field":    mk(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}`, 1),
		"bad metadata":     mk(`{"__metadata__":{"a":1}}`),
		"reversed offsets": mk(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[1,0]}}`, 1),
	}
	for name, b := range bad {
		if _, _, err := ReadSafetensors(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	var buf bytes.Buffer
	for name, ts := range map[string][]Tensor{
		"size":     {{Name: "a", DType: "I32", Shape: []int{2}, Data: []byte{1}}},
		"dtype":    {{Name: "a", DType: "X", Shape: []int{1}, Data: []byte{1}}},
		"repeated": {{Name: "a", DType: "U8", Shape: []int{1}, Data: []byte{1}}, {Name: "a", DType: "U8", Shape: []int{1}, Data: []byte{1}}},
		"reserved": {{Name: "__metadata__", DType: "U8", Shape: []int{1}, Data: []byte{1}}},
	} {
		_, err := WriteSafetensors(&buf, ts, map[string]string{"k": "v"})
		if err == nil || !strings.Contains(err.Error(), "write safetensors") {
			t.Errorf("write %s: %v", name, err)
		}
	}
}
