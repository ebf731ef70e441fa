package gomlx

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// exportFixture is the matrix's demo cell written as a safetensors
// checkpoint (ckpt, in dir), with its weights, tokenizer and prompts, for
// a test to export.
type exportFixture struct {
	dir, ckpt string
	cfg       model.Config
	weights   map[string][]float32
	tok       *model.Tokenizer
	seqs      []compute.Sequence
}

func newExportFixture(t *testing.T) *exportFixture {
	t.Helper()
	f := &exportFixture{dir: t.TempDir(), tok: computetest.MatrixTokenizer()}
	for _, c := range computetest.MatrixCells() {
		if c.Name == "demo" {
			f.cfg = c.Config
		}
	}
	f.weights = computetest.MatrixWeights(f.cfg)
	var err error
	if f.ckpt, err = computetest.WriteMatrixWeights(f.dir, f.cfg, f.weights); err != nil {
		t.Fatal(err)
	}
	if f.seqs, err = computetest.MatrixPrompts(f.cfg, f.tok); err != nil {
		t.Fatal(err)
	}
	return f
}

// write writes an export's bytes beside the checkpoint.
func (f *exportFixture) write(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// ggufFixture writes the matrix's demo cell as a safetensors checkpoint
// and as a GGUF export in dtype, and returns both paths, its config and
// its prompts.
func ggufFixture(t *testing.T, dtype string) (ckpt, gguf string, cfg model.Config, cfgJSON []byte, seqs []compute.Sequence) {
	t.Helper()
	f := newExportFixture(t)
	g, err := model.ExportGGUF(f.cfg, f.weights, dtype, f.tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := model.WriteGGUF(&buf, g); err != nil {
		t.Fatal(err)
	}
	gguf = f.write(t, "model."+dtype+".gguf", buf.Bytes())
	return f.ckpt, gguf, f.cfg, configJSON(t, f.cfg), f.seqs
}

func prefillLogits(t *testing.T, b compute.Backend, req compute.LoadRequest, seqs []compute.Sequence) [][]float32 {
	t.Helper()
	ctx := context.Background()
	s, err := b.Load(ctx, req)
	if err != nil {
		t.Fatalf("load %s as %q: %v", filepath.Base(req.Checkpoint), req.Dtype, err)
	}
	defer b.Unload(ctx, s.Session)
	r, err := b.Prefill(ctx, compute.PrefillRequest{Session: s.Session, Batch: seqs})
	if err != nil {
		t.Fatal(err)
	}
	return r.Logits
}

// TestLoadGGUF: the GoMLX engine loads a GGUF export as it loads the
// checkpoint it came from (float32: the same logits; q8_0: its
// dequantized weights, close), and refuses a file that is not the model
// asked for, naming what differs.
func TestLoadGGUF(t *testing.T) {
	b := newTestBackend(t)
	ckpt, f32, _, cfgJSON, seqs := ggufFixture(t, model.DtypeF32)
	want := prefillLogits(t, b, compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: ckpt}, seqs)
	if err := computetest.CompareLogits(prefillLogits(t, b, compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: f32}, seqs), want, 0, 0); err != nil {
		t.Errorf("float32 GGUF: %v", err)
	}
	_, q8, _, _, _ := ggufFixture(t, model.DtypeQ8_0)
	if err := computetest.CompareLogits(prefillLogits(t, b, compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: q8}, seqs), want, 0.15, 0.15); err != nil {
		t.Errorf("q8_0 GGUF on the GoMLX engine: %v", err)
	}

	ctx := context.Background()
	other := computetest.MatrixCells()[0].Config
	raw, _ := os.ReadFile(q8)
	cut := filepath.Join(t.TempDir(), "cut.gguf")
	if err := os.WriteFile(cut, raw[:len(raw)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		req  compute.LoadRequest
		msg  string
	}{
		{"another config", compute.LoadRequest{ModelConfig: configJSON(t, other), Checkpoint: q8}, "is not the requested one"},
		{"truncated", compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: cut}, "runs past the file"},
		{"dtype the engine lacks", compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: q8, Dtype: model.DtypeQ8_0}, `dtype "q8_0" is not one backend "gomlx" implements`},
	} {
		_, err := b.Load(ctx, c.req)
		if err == nil || !strings.Contains(err.Error(), c.msg) || !errors.Is(err, compute.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want an invalid argument containing %q", c.name, err, c.msg)
		}
	}
}
