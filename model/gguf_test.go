package model

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestFloat16RoundTrip(t *testing.T) {
	for _, c := range []struct {
		in   float32
		bits uint16
	}{{0, 0}, {1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {1e6, 0x7c00}, {6.1035156e-05, 0x0400}, {5.9604645e-08, 0x0001}, {1.0009766, 0x3c01}, {1.00048828125, 0x3c00} /* tie to even */} {
		if got := Float16(c.in); got != c.bits {
			t.Errorf("Float16(%g) = %#04x, want %#04x", c.in, got, c.bits)
		}
	}
	for h := range uint32(0x7c00) { // every finite positive half
		if got := Float16(Float32From16(uint16(h))); got != uint16(h) {
			t.Fatalf("half %#04x: round trip gives %#04x", h, got)
		}
	}
}

func TestQuantizeErrorsAndIdempotence(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, 4*QuantBlock)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	x[5] = 0 // a zero inside a block
	for i := 2 * QuantBlock; i < 3*QuantBlock; i++ {
		x[i] = 0 // an all-zero block
	}
	for _, c := range []struct {
		dtype string
		tol   float64 // of the largest error relative to the block's largest |x|
	}{{DtypeF32, 0}, {DtypeF16, 1e-3}, {DtypeQ8_0, 1.0 / 127}, {DtypeQ4_0, 1.0 / 8}} {
		b, err := Quantize(c.dtype, x, QuantBlock)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != DtypeBytes(c.dtype, len(x)) {
			t.Fatalf("%s: %d bytes, want %d", c.dtype, len(b), DtypeBytes(c.dtype, len(x)))
		}
		y, err := Dequantize(c.dtype, b, len(x))
		if err != nil {
			t.Fatal(err)
		}
		for blk := 0; blk < len(x); blk += QuantBlock {
			var amax float64
			for _, v := range x[blk : blk+QuantBlock] {
				amax = math.Max(amax, math.Abs(float64(v)))
			}
			for i := blk; i < blk+QuantBlock; i++ {
				if e := math.Abs(float64(y[i] - x[i])); e > c.tol*amax*1.01 {
					t.Fatalf("%s: x[%d] = %g comes back %g (error %g, bound %g)", c.dtype, i, x[i], y[i], e, c.tol*amax)
				}
			}
		}
		// Quantizing what a quantized file holds gives the same bytes:
		// a model exported as q8_0 and loaded into a q8_0 backend keeps
		// its weights exactly.
		b2, err := Quantize(c.dtype, y, QuantBlock)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, b2) {
			t.Errorf("%s: quantize(dequantize(q)) != q", c.dtype)
		}
	}
	if _, err := Quantize(DtypeQ8_0, x[:40], 40); err == nil {
		t.Error("q8_0 rows of 40 values: no error")
	}
	if _, err := Dequantize(DtypeQ8_0, make([]byte, 33), 32); err == nil {
		t.Error("33 bytes as one q8_0 block: no error")
	}
}

func ggufTestModel(t *testing.T) (Config, map[string][]float32, *Tokenizer) {
	t.Helper()
	tok, err := NewTokenizer([]string{"red", "green", "blue", "square"})
	if err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig(tok.VocabSize())
	c.ImageSize, c.PatchSize, c.VisionWidth, c.VisionDepth = 16, 8, 32, 1
	c.Width, c.Depth, c.Heads, c.MaxSeq = 32, 1, 2, 24
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	w := map[string][]float32{}
	for _, p := range c.Params() {
		v := make([]float32, p.Size())
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.1)
		}
		w[p.Name] = v
	}
	return c, w, tok
}

func TestGGUFRoundTrip(t *testing.T) {
	c, w, tok := ggufTestModel(t)
	for _, dtype := range []string{DtypeF32, DtypeF16, DtypeQ8_0, DtypeQ4_0} {
		g, err := ExportGGUF(c, w, dtype, tok, map[string]any{"groundmesh.checkpoint_sha256": "abc"})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		n, err := WriteGGUF(&buf, g)
		if err != nil || n != int64(buf.Len()) {
			t.Fatalf("%s: write: %d bytes, %v", dtype, n, err)
		}
		m, err := ReadGGUFFileBytes(buf.Bytes(), &c)
		if err != nil {
			t.Fatalf("%s: %v", dtype, err)
		}
		if m.Dtype != dtype || m.Config.SHA256() != c.SHA256() || m.Tokenizer.ID() != tok.ID() {
			t.Fatalf("%s: read back dtype %s, config %s, tokenizer %s", dtype, m.Dtype, m.Config.SHA256(), m.Tokenizer.ID())
		}
		for _, p := range c.Params() {
			sd := ServingDtype(dtype, p.Name, p.Shape)
			for i, v := range m.Weights[p.Name] {
				if e := math.Abs(float64(v - w[p.Name][i])); sd == DtypeF32 && e != 0 || e > 0.2 {
					t.Fatalf("%s: %s[%d] = %g, exported %g (%s)", dtype, p.Name, i, v, w[p.Name][i], sd)
				}
			}
		}
		t.Logf("%s: %d bytes", dtype, n)
	}
}

func TestGGUFRefusesWhatDoesNotMatch(t *testing.T) {
	c, w, tok := ggufTestModel(t)
	write := func(g *GGUF) []byte {
		var buf bytes.Buffer
		if _, err := WriteGGUF(&buf, g); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	fresh := func() *GGUF {
		g, err := ExportGGUF(c, w, DtypeQ8_0, tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	other := c
	other.Depth = 2
	good := write(fresh())
	for _, tc := range []struct {
		name string
		file func() []byte
		want *Config
		msg  string
	}{
		{"not gguf", func() []byte { return []byte("PK\x03\x04 not a model") }, nil, "not a GGUF file"},
		{"truncated", func() []byte { return good[:len(good)/2] }, nil, "runs past the file"},
		{"header cut", func() []byte { return good[:40] }, nil, "truncated"},
		{"other config requested", func() []byte { return good }, &other, "is not the requested one"},
		{"architecture", func() []byte {
			g := fresh()
			g.Meta["general.architecture"] = "llama"
			return write(g)
		}, nil, `architecture "llama"`},
		{"format version", func() []byte {
			g := fresh()
			g.Meta[ggufKeyFormat] = uint32(9)
			return write(g)
		}, nil, "tinygrounder.format_version is 9"},
		{"config edited", func() []byte {
			g := fresh()
			g.Meta[ggufKeyConfig] = strings.Replace(g.Meta[ggufKeyConfig].(string), `"depth":1`, `"depth":2`, 1)
			return write(g)
		}, nil, "hashes to"},
		{"tensor renamed", func() []byte {
			g := fresh()
			g.Tensors[0].Name = "nope"
			return write(g)
		}, nil, "no tensor"},
		{"tensor shape", func() []byte {
			g := fresh()
			for i := range g.Tensors {
				if g.Tensors[i].Name == "lm.ln_f.b" {
					g.Tensors[i].Dims = []int{16}
					g.Tensors[i].Data = g.Tensors[i].Data[:64]
				}
			}
			return write(g)
		}, nil, `tensor "lm.ln_f.b" is [16]`},
		{"tensor dtype", func() []byte {
			g := fresh()
			for i := range g.Tensors {
				if g.Tensors[i].Name == "lm_head.w" {
					x, _ := Dequantize(g.Tensors[i].Dtype, g.Tensors[i].Data, elems(g.Tensors[i].Dims))
					g.Tensors[i].Dtype = DtypeF32
					g.Tensors[i].Data, _ = Quantize(DtypeF32, x, 1)
				}
			}
			return write(g)
		}, nil, `tensor "lm_head.w" is float32, a q8_0 file holds it as q8_0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadGGUFFileBytes(tc.file(), tc.want)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want one containing %q", err, tc.msg)
			}
		})
	}
	if _, err := ReadGGUFFileBytes(good, nil); err != nil {
		t.Fatalf("the unedited file: %v", err)
	}
	g := fresh()
	g.Meta[ggufKeyFormat] = uint32(9)
	if _, err := LoadGGUF(g, nil); !errors.Is(err, ErrGGUFMismatch) {
		t.Fatalf("err = %v, want ErrGGUFMismatch", err)
	}
}
