package model

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
)

// Safetensors: 8-byte little-endian header length, a JSON header mapping
// tensor names to {dtype, shape, data_offsets} (plus "__metadata__", a
// string map), then the raw little-endian row-major data, tensors packed
// back to back. This is the format of shards here and of checkpoints in
// the backends; the reader checks everything it can, since files cross
// process and language boundaries.

// Tensor is one named tensor of a safetensors file.
type Tensor struct {
	Name  string
	DType string // safetensors dtype: "I32", "U8", "F32", "I64", ...
	Shape []int
	Data  []byte // little-endian, row-major
}

// dtypeSizes are the safetensors dtypes and their element sizes.
var dtypeSizes = map[string]int{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
	"U16": 2, "I16": 2, "F16": 2, "BF16": 2,
	"U32": 4, "I32": 4, "F32": 4,
	"U64": 8, "I64": 8, "F64": 8,
}

// maxHeader bounds the JSON header a reader accepts.
const maxHeader = 100 << 20

type stEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int    `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

func elements(shape []int) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in %v", shape)
		}
		if d > 0 && n > math.MaxInt64/int64(d) {
			return 0, fmt.Errorf("shape %v overflows", shape)
		}
		n *= int64(d)
	}
	return n, nil
}

// WriteSafetensors writes tensors, in the given order, and metadata (may be
// nil) to w and returns the bytes written. The output is a function of the
// arguments only: the header's keys are sorted and it is padded with spaces
// to a multiple of 8 bytes, so the data starts aligned.
func WriteSafetensors(w io.Writer, tensors []Tensor, metadata map[string]string) (int64, error) {
	header := make(map[string]any, len(tensors)+1)
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var off int64
	for _, t := range tensors {
		size, ok := dtypeSizes[t.DType]
		if !ok {
			return 0, fmt.Errorf("write safetensors: tensor %q: unknown dtype %q", t.Name, t.DType)
		}
		n, err := elements(t.Shape)
		if err != nil {
			return 0, fmt.Errorf("write safetensors: tensor %q: %w", t.Name, err)
		}
		if n*int64(size) != int64(len(t.Data)) {
			return 0, fmt.Errorf("write safetensors: tensor %q: %d bytes for shape %v of %s", t.Name, len(t.Data), t.Shape, t.DType)
		}
		if _, dup := header[t.Name]; dup || t.Name == "" || t.Name == "__metadata__" {
			return 0, fmt.Errorf("write safetensors: tensor name %q empty, reserved or repeated", t.Name)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		header[t.Name] = stEntry{DType: t.DType, Shape: shape, DataOffsets: [2]int64{off, off + int64(len(t.Data))}}
		off += int64(len(t.Data))
	}
	hb, err := json.Marshal(header)
	if err != nil {
		return 0, fmt.Errorf("write safetensors: encode header: %w", err)
	}
	if pad := (8 - len(hb)%8) % 8; pad > 0 {
		hb = append(hb, bytes.Repeat([]byte{' '}, pad)...)
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hb)))
	total := int64(0)
	for _, b := range append([][]byte{lenBuf[:], hb}, dataOf(tensors)...) {
		n, err := w.Write(b)
		total += int64(n)
		if err != nil {
			return total, fmt.Errorf("write safetensors: %w", err)
		}
	}
	return total, nil
}

func dataOf(ts []Tensor) [][]byte {
	out := make([][]byte, len(ts))
	for i, t := range ts {
		out[i] = t.Data
	}
	return out
}

// ReadSafetensors parses a whole safetensors file held in b. The tensors
// come in file order and their Data alias b.
func ReadSafetensors(b []byte) ([]Tensor, map[string]string, error) {
	if len(b) < 8 {
		return nil, nil, fmt.Errorf("read safetensors: %d bytes: too short", len(b))
	}
	hlen := binary.LittleEndian.Uint64(b)
	if hlen > maxHeader || hlen > uint64(len(b)-8) {
		return nil, nil, fmt.Errorf("read safetensors: header length %d in a %d-byte file", hlen, len(b))
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+hlen], &raw); err != nil {
		return nil, nil, fmt.Errorf("read safetensors: decode header: %w", err)
	}
	data := b[8+hlen:]
	var meta map[string]string
	tensors := make([]Tensor, 0, len(raw))
	offs := make(map[string][2]int64, len(raw))
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &meta); err != nil {
				return nil, nil, fmt.Errorf("read safetensors: metadata: %w", err)
			}
			continue
		}
		var e stEntry
		dec := json.NewDecoder(bytes.NewReader(msg))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return nil, nil, fmt.Errorf("read safetensors: tensor %q: %w", name, err)
		}
		size, ok := dtypeSizes[e.DType]
		if !ok {
			return nil, nil, fmt.Errorf("read safetensors: tensor %q: unknown dtype %q", name, e.DType)
		}
		n, err := elements(e.Shape)
		if err != nil {
			return nil, nil, fmt.Errorf("read safetensors: tensor %q: %w", name, err)
		}
		lo, hi := e.DataOffsets[0], e.DataOffsets[1]
		if lo < 0 || hi < lo || hi > int64(len(data)) || n > math.MaxInt64/int64(size) || hi-lo != n*int64(size) {
			return nil, nil, fmt.Errorf("read safetensors: tensor %q: offsets [%d, %d] for %v %s in %d data bytes", name, lo, hi, e.Shape, e.DType, len(data))
		}
		offs[name] = e.DataOffsets
		tensors = append(tensors, Tensor{Name: name, DType: e.DType, Shape: e.Shape, Data: data[lo:hi:hi]})
	}
	slices.SortFunc(tensors, func(x, y Tensor) int {
		if c := offs[x.Name][0] - offs[y.Name][0]; c != 0 {
			return int(max(-1, min(1, c)))
		}
		return int(max(-1, min(1, offs[x.Name][1]-offs[y.Name][1])))
	})
	// The data must be exactly the tensors, back to back.
	var at int64
	for _, t := range tensors {
		o := offs[t.Name]
		if o[0] != at {
			return nil, nil, fmt.Errorf("read safetensors: tensor %q starts at %d, want %d (gap or overlap)", t.Name, o[0], at)
		}
		at = o[1]
	}
	if at != int64(len(data)) {
		return nil, nil, fmt.Errorf("read safetensors: %d data bytes, tensors cover %d", len(data), at)
	}
	return tensors, meta, nil
}

// ReadSafetensorsFile reads and parses a safetensors file.
func ReadSafetensorsFile(path string) ([]Tensor, map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read safetensors: %w", err)
	}
	return ReadSafetensors(b)
}

// Int32Bytes encodes v little-endian.
func Int32Bytes(v []int32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return b
}

// BytesInt32 decodes little-endian int32s; len(b) must be a multiple of 4.
func BytesInt32(b []byte) []int32 {
	v := make([]int32, len(b)/4)
	for i := range v {
		v[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}
