//go:build ggml

package ggml_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/ggml/ggml"
)

// TestGGUFReadByGGML: a file model.WriteGGUF writes is read by ggml's own
// GGUF reader with the same keys, tensor types and bytes, in every dtype.
func TestGGUFReadByGGML(t *testing.T) {
	tok, err := model.NewTokenizer([]string{"red", "green", "blue", "square"})
	if err != nil {
		t.Fatal(err)
	}
	c := model.DefaultConfig(tok.VocabSize())
	c.ImageSize, c.PatchSize, c.VisionWidth, c.VisionDepth = 16, 8, 32, 1
	c.Width, c.Depth, c.Heads, c.MaxSeq = 32, 1, 2, 24
	r := rand.New(rand.NewPCG(1, 1))
	w := map[string][]float32{}
	for _, p := range c.Params() {
		v := make([]float32, p.Size())
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		w[p.Name] = v
	}
	for _, dtype := range []string{model.DtypeF32, model.DtypeF16, model.DtypeQ8_0, model.DtypeQ4_0} {
		g, err := model.ExportGGUF(c, w, dtype, tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "m.gguf")
		var buf bytes.Buffer
		if _, err := model.WriteGGUF(&buf, g); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		vals, ts, err := ggml.ReadGGUF(path, "general.architecture", "tinygrounder.dtype", "tinygrounder.config_sha256")
		if err != nil {
			t.Fatalf("%s: %v", dtype, err)
		}
		if vals["general.architecture"] != "tinygrounder" || vals["tinygrounder.dtype"] != dtype || vals["tinygrounder.config_sha256"] != c.SHA256() {
			t.Fatalf("%s: ggml reads the keys as %v", dtype, vals)
		}
		if len(ts) != len(g.Tensors) {
			t.Fatalf("%s: ggml reads %d tensors, the file has %d", dtype, len(ts), len(g.Tensors))
		}
		for i, gt := range ts {
			want := g.Tensors[i]
			typ, _ := model.GGMLType(want.Dtype)
			if gt.Name != want.Name || gt.Type != int(typ) || !bytes.Equal(gt.Data, want.Data) {
				t.Fatalf("%s: tensor %d: ggml reads %s type %d (%d bytes), written %s %s (%d bytes)", dtype, i, gt.Name, gt.Type, len(gt.Data), want.Name, want.Dtype, len(want.Data))
			}
		}
	}
}
