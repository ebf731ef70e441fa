package model

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
)

// GGUF (ggml's file format, version 3): a header of typed key-value
// metadata and tensor descriptions, then the tensors' data, each aligned.
// The writer and reader here hold what a tinygrounder needs: the metadata
// types below and the dtypes of quant.go.

const (
	ggufMagic     = 0x46554747 // "GGUF" little-endian
	ggufVersion   = 3
	ggufAlignment = 32
	// ggufMaxCount bounds a header's tensor and key counts and a string's
	// or array's length, so that a corrupt header is refused before it
	// allocates.
	ggufMaxCount = 1 << 24
)

// GGUF metadata value types (gguf.h).
const (
	ggufU32    = 4
	ggufI32    = 5
	ggufF32    = 6
	ggufBool   = 7
	ggufString = 8
	ggufArray  = 9
	ggufU64    = 10
	ggufI64    = 11
)

// GGUFTensor is one tensor of a GGUF file: dims in row-major order (the
// file stores them reversed, ggml's ne[0] first), dtype, and the encoded
// data (Quantize's layouts).
type GGUFTensor struct {
	Name  string
	Dims  []int
	Dtype string
	Data  []byte
}

// GGUF is a file's metadata (values are string, uint32, uint64, int32,
// int64, float32, bool or []string) and tensors in file order.
type GGUF struct {
	Meta    map[string]any
	Tensors []GGUFTensor
}

// Tensor returns the named tensor.
func (g *GGUF) Tensor(name string) (*GGUFTensor, bool) {
	for i := range g.Tensors {
		if g.Tensors[i].Name == name {
			return &g.Tensors[i], true
		}
	}
	return nil, false
}

type ggufWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (w *ggufWriter) write(b []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(b)
	w.n += int64(n)
	w.err = err
}
func (w *ggufWriter) u32(v uint32) { w.write(binary.LittleEndian.AppendUint32(nil, v)) }
func (w *ggufWriter) u64(v uint64) { w.write(binary.LittleEndian.AppendUint64(nil, v)) }
func (w *ggufWriter) str(s string) { w.u64(uint64(len(s))); w.write([]byte(s)) }
func (w *ggufWriter) pad() {
	if r := w.n % ggufAlignment; r != 0 {
		w.write(make([]byte, ggufAlignment-r))
	}
}

// WriteGGUF writes g to w (keys sorted, tensors in g's order) and returns
// the bytes written.
func WriteGGUF(w io.Writer, g *GGUF) (int64, error) {
	gw := &ggufWriter{w: w}
	gw.u32(ggufMagic)
	gw.u32(ggufVersion)
	gw.u64(uint64(len(g.Tensors)))
	gw.u64(uint64(len(g.Meta)))
	keys := make([]string, 0, len(g.Meta))
	for k := range g.Meta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		gw.str(k)
		switch v := g.Meta[k].(type) {
		case string:
			gw.u32(ggufString)
			gw.str(v)
		case uint32:
			gw.u32(ggufU32)
			gw.u32(v)
		case int32:
			gw.u32(ggufI32)
			gw.u32(uint32(v))
		case uint64:
			gw.u32(ggufU64)
			gw.u64(v)
		case int64:
			gw.u32(ggufI64)
			gw.u64(uint64(v))
		case float32:
			gw.u32(ggufF32)
			gw.u32(math.Float32bits(v))
		case bool:
			gw.u32(ggufBool)
			b := byte(0)
			if v {
				b = 1
			}
			gw.write([]byte{b})
		case []string:
			gw.u32(ggufArray)
			gw.u32(ggufString)
			gw.u64(uint64(len(v)))
			for _, s := range v {
				gw.str(s)
			}
		default:
			return gw.n, fmt.Errorf("gguf: metadata %q: unsupported type %T", k, v)
		}
	}
	var off uint64
	for _, t := range g.Tensors {
		typ, err := GGMLType(t.Dtype)
		if err != nil {
			return gw.n, fmt.Errorf("gguf: tensor %q: %w", t.Name, err)
		}
		if want := DtypeBytes(t.Dtype, elems(t.Dims)); len(t.Data) != want {
			return gw.n, fmt.Errorf("gguf: tensor %q: %d bytes for %s%v, want %d", t.Name, len(t.Data), t.Dtype, t.Dims, want)
		}
		gw.str(t.Name)
		gw.u32(uint32(len(t.Dims)))
		for i := len(t.Dims) - 1; i >= 0; i-- {
			gw.u64(uint64(t.Dims[i]))
		}
		gw.u32(typ)
		gw.u64(off)
		off += uint64(len(t.Data))
		off = (off + ggufAlignment - 1) / ggufAlignment * ggufAlignment
	}
	gw.pad()
	for _, t := range g.Tensors {
		gw.write(t.Data)
		gw.pad()
	}
	return gw.n, gw.err
}

func elems(dims []int) int {
	n := 1
	for _, d := range dims {
		n *= d
	}
	return n
}

type ggufReader struct {
	b   []byte
	off int
	err error
}

func (r *ggufReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || r.off+n > len(r.b) {
		r.err = fmt.Errorf("truncated at byte %d (wanted %d more of %d)", r.off, n, len(r.b))
		return nil
	}
	out := r.b[r.off : r.off+n]
	r.off += n
	return out
}

func (r *ggufReader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (r *ggufReader) u64() uint64 {
	if b := r.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (r *ggufReader) count(what string) int {
	n := r.u64()
	if r.err == nil && n > ggufMaxCount {
		r.err = fmt.Errorf("%s %d is past the limit %d", what, n, ggufMaxCount)
	}
	return int(n)
}

func (r *ggufReader) str() string { return string(r.take(r.count("string length"))) }

func (r *ggufReader) value(typ uint32, key string) any {
	switch typ {
	case ggufString:
		return r.str()
	case ggufU32:
		return r.u32()
	case ggufI32:
		return int32(r.u32())
	case ggufU64:
		return r.u64()
	case ggufI64:
		return int64(r.u64())
	case ggufF32:
		return math.Float32frombits(r.u32())
	case ggufBool:
		if b := r.take(1); b != nil {
			return b[0] != 0
		}
		return false
	case ggufArray:
		et := r.u32()
		n := r.count("array length")
		if et != ggufString {
			if r.err == nil {
				r.err = fmt.Errorf("metadata %q: arrays of type %d are not read (only strings)", key, et)
			}
			return nil
		}
		out := make([]string, 0, min(n, 1<<16))
		for range n {
			if r.err != nil {
				return nil
			}
			out = append(out, r.str())
		}
		return out
	}
	if r.err == nil {
		r.err = fmt.Errorf("metadata %q: unknown value type %d", key, typ)
	}
	return nil
}

// ReadGGUF parses a GGUF file held in b. The tensors' data alias b.
func ReadGGUF(b []byte) (*GGUF, error) {
	r := &ggufReader{b: b}
	if m := r.u32(); r.err == nil && m != ggufMagic {
		return nil, fmt.Errorf("gguf: not a GGUF file (magic %#08x)", m)
	}
	if v := r.u32(); r.err == nil && v != ggufVersion {
		return nil, fmt.Errorf("gguf: version %d, this reader takes %d", v, ggufVersion)
	}
	nt := r.count("tensor count")
	nk := r.count("metadata count")
	g := &GGUF{Meta: map[string]any{}}
	for range nk {
		if r.err != nil {
			break
		}
		k := r.str()
		g.Meta[k] = r.value(r.u32(), k)
	}
	offs := make([]uint64, 0, min(nt, 1<<16))
	for range nt {
		if r.err != nil {
			break
		}
		var t GGUFTensor
		t.Name = r.str()
		nd := r.u32()
		if nd > 4 {
			r.err = fmt.Errorf("tensor %q has %d dimensions (at most 4)", t.Name, nd)
			break
		}
		t.Dims = make([]int, nd)
		for i := int(nd) - 1; i >= 0; i-- {
			d := r.u64()
			if d > 1<<31 {
				r.err = fmt.Errorf("tensor %q: dimension %d is %d", t.Name, i, d)
			}
			t.Dims[i] = int(d)
		}
		typ := r.u32()
		off := r.u64()
		if r.err != nil {
			break
		}
		var err error
		if t.Dtype, err = DtypeOfGGML(typ); err != nil {
			return nil, fmt.Errorf("gguf: tensor %q: %w", t.Name, err)
		}
		if !Quantizable(t.Dtype, t.Dims[len(t.Dims)-1]) {
			return nil, fmt.Errorf("gguf: tensor %q: rows of %d are not whole %s blocks", t.Name, t.Dims[len(t.Dims)-1], t.Dtype)
		}
		g.Tensors = append(g.Tensors, t)
		offs = append(offs, off)
	}
	if r.err != nil {
		return nil, fmt.Errorf("gguf: %w", r.err)
	}
	align := ggufAlignment
	if a, ok := g.Meta["general.alignment"].(uint32); ok && a > 0 {
		align = int(a)
	}
	start := (r.off + align - 1) / align * align
	for i := range g.Tensors {
		t := &g.Tensors[i]
		n := DtypeBytes(t.Dtype, elems(t.Dims))
		lo := uint64(start) + offs[i]
		if offs[i] > uint64(len(b)) || lo+uint64(n) > uint64(len(b)) {
			return nil, fmt.Errorf("gguf: tensor %q: data at %d+%d runs past the file's %d bytes", t.Name, lo, n, len(b))
		}
		t.Data = b[lo : lo+uint64(n)]
	}
	return g, nil
}

// The tinygrounder's GGUF metadata.
const (
	GGUFArchitecture = "tinygrounder"
	// GGUFFormatVersion is the layout of a tinygrounder GGUF file (the
	// keys below and ServingLayout); a reader refuses another.
	GGUFFormatVersion = 1
	ggufKeyFormat     = "tinygrounder.format_version"
	ggufKeyConfig     = "tinygrounder.config"
	ggufKeyConfigSHA  = "tinygrounder.config_sha256"
	ggufKeyDtype      = "tinygrounder.dtype"
	ggufKeyVocab      = "tokenizer.ggml.tokens"
	ggufKeyTokenizer  = "tinygrounder.tokenizer"
)

// DenseWeight reports whether the parameter name of shape is a dense
// layer's weight [in, out] (a 2-D "*.w", read only by Ops.Dense): a
// serving backend and a GGUF file hold it transposed, [out, in], so that
// each output's weights are one row (ggml's matrix-product layout, and
// what the quantized types block).
func DenseWeight(name string, shape []int) bool {
	return len(shape) == 2 && strings.HasSuffix(name, ".w")
}

// ServingDtype is the dtype a parameter is held in when the model is held
// in dtype: dense weights and the token embeddings in dtype where their
// rows (a dense weight's input width, an embedding's width) are whole
// blocks, float16 where not; every other parameter (norms, biases,
// position tables, convolution kernels) in float32.
func ServingDtype(dtype, name string, shape []int) string {
	row := 0
	switch {
	case DenseWeight(name, shape):
		row = shape[0]
	case name == "embed.tokens":
		row = shape[1]
	default:
		return DtypeF32
	}
	if Quantizable(dtype, row) {
		return dtype
	}
	return DtypeF16
}

// GGUFVocab is every token of tok by id, as GGUF's tokenizer.ggml.tokens
// lists them.
func GGUFVocab(tok *Tokenizer) []string {
	out := make([]string, tok.VocabSize())
	for i := range out {
		out[i] = tok.TokenString(int32(i))
	}
	return out
}

// ExportGGUF makes the GGUF of a model: cfg, its parameters' float32
// weights, held in dtype as ServingDtype says (dense weights transposed,
// DenseWeight), and its tokenizer (GGUFVocab, and the tokenizer itself
// under tinygrounder.tokenizer). meta adds keys.
func ExportGGUF(cfg Config, weights map[string][]float32, dtype string, tok *Tokenizer, meta map[string]any) (*GGUF, error) {
	if tok.VocabSize() != cfg.VocabSize {
		return nil, fmt.Errorf("export gguf: the tokenizer has %d tokens, the config's vocabulary %d", tok.VocabSize(), cfg.VocabSize)
	}
	var tj bytes.Buffer
	if err := tok.Save(&tj); err != nil {
		return nil, err
	}
	vocab := GGUFVocab(tok)
	if _, err := GGMLType(dtype); err != nil {
		return nil, err
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	g := &GGUF{Meta: map[string]any{
		"general.architecture": GGUFArchitecture,
		"general.alignment":    uint32(ggufAlignment),
		ggufKeyFormat:          uint32(GGUFFormatVersion),
		ggufKeyConfig:          string(cfgJSON),
		ggufKeyConfigSHA:       cfg.SHA256(),
		ggufKeyDtype:           dtype,
		ggufKeyVocab:           vocab,
		ggufKeyTokenizer:       tj.String(),
		"tokenizer.ggml.model": "groundmesh-words",
	}}
	for k, v := range meta {
		g.Meta[k] = v
	}
	for _, p := range cfg.Params() {
		w, ok := weights[p.Name]
		if !ok {
			return nil, fmt.Errorf("export gguf: no weights for parameter %q", p.Name)
		}
		if len(w) != elems(p.Shape) {
			return nil, fmt.Errorf("export gguf: parameter %q has %d values, want %d (%v)", p.Name, len(w), elems(p.Shape), p.Shape)
		}
		dims := slices.Clone(p.Shape)
		if DenseWeight(p.Name, p.Shape) {
			w = Transpose2D(w, p.Shape[0], p.Shape[1])
			dims = []int{p.Shape[1], p.Shape[0]}
		}
		sd := ServingDtype(dtype, p.Name, p.Shape)
		data, err := Quantize(sd, w, dims[len(dims)-1])
		if err != nil {
			return nil, fmt.Errorf("export gguf: parameter %q: %w", p.Name, err)
		}
		g.Tensors = append(g.Tensors, GGUFTensor{Name: p.Name, Dims: dims, Dtype: sd, Data: data})
	}
	return g, nil
}

// Transpose2D is the [cols, rows] transpose of x [rows, cols].
func Transpose2D(x []float32, rows, cols int) []float32 {
	out := make([]float32, len(x))
	for r := range rows {
		for c := range cols {
			out[c*rows+r] = x[r*cols+c]
		}
	}
	return out
}

// GGUFModel is what a tinygrounder GGUF file holds.
type GGUFModel struct {
	Config Config
	// Dtype is the dtype the file was exported in.
	Dtype string
	// Weights are every parameter in float32, in the definition's
	// layout (dense weights [in, out] again), dequantized.
	Weights map[string][]float32
	Vocab   []string
	// Tokenizer is the tokenizer the file carries.
	Tokenizer *Tokenizer
}

// ErrGGUFMismatch is wrapped by LoadGGUF's refusals of a file that is not
// the model it must be.
var ErrGGUFMismatch = errors.New("gguf file does not match")

// LoadGGUF reads a tinygrounder from g, checking the architecture, the
// format version, the config's hash and every parameter's name, shape and
// dtype against the definition. want, when not nil, is the config the
// caller expects: a different one is refused.
func LoadGGUF(g *GGUF, want *Config) (*GGUFModel, error) {
	if a, _ := g.Meta["general.architecture"].(string); a != GGUFArchitecture {
		return nil, fmt.Errorf("%w: architecture %q, want %q", ErrGGUFMismatch, a, GGUFArchitecture)
	}
	if v, _ := g.Meta[ggufKeyFormat].(uint32); v != GGUFFormatVersion {
		return nil, fmt.Errorf("%w: %s is %d, this build reads %d", ErrGGUFMismatch, ggufKeyFormat, v, GGUFFormatVersion)
	}
	cj, _ := g.Meta[ggufKeyConfig].(string)
	cfg, err := ParseConfig([]byte(cj))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrGGUFMismatch, ggufKeyConfig, err)
	}
	if h, _ := g.Meta[ggufKeyConfigSHA].(string); h != cfg.SHA256() {
		return nil, fmt.Errorf("%w: the architecture config hashes to %s, the file says %s", ErrGGUFMismatch, cfg.SHA256(), h)
	}
	if want != nil && want.SHA256() != cfg.SHA256() {
		return nil, fmt.Errorf("%w: its architecture config (sha256 %s) is not the requested one (%s)", ErrGGUFMismatch, cfg.SHA256(), want.SHA256())
	}
	dtype, _ := g.Meta[ggufKeyDtype].(string)
	if _, err := GGMLType(dtype); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrGGUFMismatch, ggufKeyDtype, err)
	}
	m := &GGUFModel{Config: cfg, Dtype: dtype, Weights: map[string][]float32{}}
	m.Vocab, _ = g.Meta[ggufKeyVocab].([]string)
	if len(m.Vocab) != cfg.VocabSize {
		return nil, fmt.Errorf("%w: %s has %d words, the config's vocabulary %d", ErrGGUFMismatch, ggufKeyVocab, len(m.Vocab), cfg.VocabSize)
	}
	tj, _ := g.Meta[ggufKeyTokenizer].(string)
	if m.Tokenizer, err = LoadTokenizer(strings.NewReader(tj)); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrGGUFMismatch, ggufKeyTokenizer, err)
	}
	if m.Tokenizer.VocabSize() != cfg.VocabSize || !slices.Equal(GGUFVocab(m.Tokenizer), m.Vocab) {
		return nil, fmt.Errorf("%w: %s and %s do not list the same tokens", ErrGGUFMismatch, ggufKeyTokenizer, ggufKeyVocab)
	}
	params := cfg.Params()
	if len(g.Tensors) != len(params) {
		return nil, fmt.Errorf("%w: %d tensors, the architecture has %d parameters", ErrGGUFMismatch, len(g.Tensors), len(params))
	}
	for _, p := range params {
		t, ok := g.Tensor(p.Name)
		if !ok {
			return nil, fmt.Errorf("%w: no tensor %q", ErrGGUFMismatch, p.Name)
		}
		dims := p.Shape
		if DenseWeight(p.Name, p.Shape) {
			dims = []int{p.Shape[1], p.Shape[0]}
		}
		if !slices.Equal(t.Dims, dims) {
			return nil, fmt.Errorf("%w: tensor %q is %v, the architecture's is %v", ErrGGUFMismatch, p.Name, t.Dims, dims)
		}
		if sd := ServingDtype(dtype, p.Name, p.Shape); t.Dtype != sd {
			return nil, fmt.Errorf("%w: tensor %q is %s, a %s file holds it as %s", ErrGGUFMismatch, p.Name, t.Dtype, dtype, sd)
		}
		w, err := Dequantize(t.Dtype, t.Data, elems(dims))
		if err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %w", ErrGGUFMismatch, p.Name, err)
		}
		if DenseWeight(p.Name, p.Shape) {
			w = Transpose2D(w, dims[0], dims[1])
		}
		m.Weights[p.Name] = w
	}
	return m, nil
}

// ReadGGUFFile reads and checks a tinygrounder GGUF file (LoadGGUF).
func ReadGGUFFile(path string, want *Config) (*GGUFModel, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m, err := ReadGGUFFileBytes(b, want)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// ReadGGUFFileBytes is ReadGGUFFile of a file's bytes.
func ReadGGUFFileBytes(b []byte, want *Config) (*GGUFModel, error) {
	g, err := ReadGGUF(b)
	if err != nil {
		return nil, err
	}
	return LoadGGUF(g, want)
}

// IsGGUF reports whether b starts like a GGUF file.
func IsGGUF(b []byte) bool {
	return len(b) >= 4 && bytes.Equal(b[:4], []byte("GGUF"))
}
