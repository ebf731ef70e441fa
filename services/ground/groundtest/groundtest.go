// Package groundtest writes a small servable model for tests of
// services/ground and of the stacks that run it.
package groundtest

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// Model is what WriteModel wrote.
type Model struct {
	// ModelConfig is the JSON of the model.Config.
	ModelConfig []byte
	// TokenizerKey and CheckpointKey are blob keys.
	TokenizerKey, CheckpointKey string
}

// WriteModel writes a small model with the demo's architecture options
// (the conformance matrix's "demo" cell) into bs under runs/<id>/: a
// tokenizer that knows the REC instruction's words, and host-generated
// weights. Its answers mean nothing; they are deterministic, which is what
// tests compare.
func WriteModel(t testing.TB, bs *blob.Local, id string) Model {
	t.Helper()
	words := strings.Fields(strings.NewReplacer(":", " ", ".", " ", "{expr}", " ").Replace(infer.RECInstruction))
	words = append(words, "the", "red", "green", "blue", "square", "circle", "left", "of")
	seen := map[string]bool{}
	var uniq []string
	for _, w := range words {
		if w = strings.ToLower(w); !seen[w] {
			seen[w] = true
			uniq = append(uniq, w)
		}
	}
	tok, err := model.NewTokenizer(uniq)
	if err != nil {
		t.Fatal(err)
	}
	var cfg model.Config
	for _, c := range computetest.MatrixCells() {
		if c.Name == "demo" {
			cfg = c.Config
		}
	}
	cfg.VocabSize = tok.VocabSize()
	cfg.MaxSeq = 160
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	tokKey, ckKey := "runs/"+id+"/tokenizer.json", "runs/"+id+"/stage3.safetensors"
	tp, _ := bs.Path(tokKey)
	cp, _ := bs.Path(ckKey)
	if err := os.MkdirAll(filepath.Dir(tp), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tok.SaveFile(tp); err != nil {
		t.Fatal(err)
	}
	w := computetest.MatrixWeights(cfg)
	var ts []model.Tensor
	for _, p := range cfg.Params() {
		b := make([]byte, 4*len(w[p.Name]))
		for i, x := range w[p.Name] {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		}
		ts = append(ts, model.Tensor{Name: p.Name, DType: "F32", Shape: p.Shape, Data: b})
	}
	f, err := os.Create(cp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := model.WriteSafetensors(f, ts, map[string]string{"format": "groundmesh/tinygrounder-ckpt/v1", "config_sha256": cfg.SHA256(), "step": "0"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	mc, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return Model{ModelConfig: mc, TokenizerKey: tokKey, CheckpointKey: ckKey}
}
