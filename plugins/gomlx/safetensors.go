package gomlx

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/groundmesh/groundmesh/model"
)

// stTensor is one tensor of a safetensors file: raw little-endian bytes.
type stTensor struct {
	DType string // "F32", "I32", "U8", "I64"
	Shape []int
	Data  []byte
}

// stFile is a safetensors file as a map; the encoding itself is
// model's, shared with the shard format.
type stFile struct {
	Metadata map[string]string
	Tensors  map[string]stTensor
}

// readSafetensors reads a whole safetensors file.
func readSafetensors(path string) (*stFile, error) {
	ts, meta, err := model.ReadSafetensorsFile(path)
	if err != nil {
		return nil, err
	}
	f := &stFile{Metadata: meta, Tensors: make(map[string]stTensor, len(ts))}
	if f.Metadata == nil {
		f.Metadata = map[string]string{}
	}
	for _, t := range ts {
		f.Tensors[t.Name] = stTensor{DType: t.DType, Shape: t.Shape, Data: t.Data}
	}
	return f, nil
}

// f32 decodes an F32 tensor.
func (t stTensor) f32() []float32 {
	out := make([]float32, len(t.Data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return out
}

func f32Tensor(v []float32, shape ...int) stTensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return stTensor{DType: "F32", Shape: shape, Data: b}
}

func i32Tensor(v []int32, shape ...int) stTensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return stTensor{DType: "I32", Shape: shape, Data: b}
}

func i64Tensor(v []int64, shape ...int) stTensor {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return stTensor{DType: "I64", Shape: shape, Data: b}
}

// encodeSafetensors writes f to w, tensors in name order, so that the
// bytes are a function of the content.
func encodeSafetensors(w io.Writer, f *stFile) error {
	names := make([]string, 0, len(f.Tensors))
	for n := range f.Tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	ts := make([]model.Tensor, len(names))
	for i, n := range names {
		t := f.Tensors[n]
		ts[i] = model.Tensor{Name: n, DType: t.DType, Shape: t.Shape, Data: t.Data}
	}
	_, err := model.WriteSafetensors(w, ts, f.Metadata)
	return err
}

// writeSafetensorsAtomic writes f to path through a temporary file in the
// same directory and a rename, so a reader never sees a partial file. It
// returns the file's hex sha256 and size.
func writeSafetensorsAtomic(path string, f *stFile) (string, int64, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", 0, fmt.Errorf("create checkpoint dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", 0, fmt.Errorf("create temp checkpoint: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	bw := bufio.NewWriterSize(cw, 1<<20)
	if err := encodeSafetensors(bw, f); err != nil {
		tmp.Close()
		return "", 0, err
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return "", 0, fmt.Errorf("write checkpoint: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", 0, fmt.Errorf("sync checkpoint: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", 0, fmt.Errorf("close checkpoint: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", 0, fmt.Errorf("rename checkpoint: %w", err)
	}
	if d, err := os.Open(dir); err == nil { // persist the rename
		_ = d.Sync()
		d.Close()
	}
	return hex.EncodeToString(h.Sum(nil)), cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
