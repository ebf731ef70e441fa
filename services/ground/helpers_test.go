package ground

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// testModel writes a small model with the demo's architecture options
// (the conformance matrix's "demo" cell) into a blob store: a tokenizer
// that knows the REC instruction's words, and host-generated weights.
// Its answers mean nothing; they are deterministic, which is what the
// tests compare.
func testModel(t testing.TB, bs *blob.Local, id string) ModelRef {
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
	return ModelRef{CheckpointID: id, RunID: "run-" + id, Stage: "stage3", Step: 7, BlobKey: ckKey, Backend: "gomlx", ModelConfig: mc, TokenizerKey: tokKey}
}

// scene draws a w x h image with a coloured square at x, y.
func scene(t testing.TB, w, h, x, y int, c color.RGBA) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.RGBA{235, 230, 220, 255}), image.Point{}, draw.Src)
	draw.Draw(img, image.Rect(x, y, x+w/4, y+h/4), image.NewUniform(c), image.Point{}, draw.Src)
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// mapCatalog is an in-memory Catalog.
type mapCatalog struct {
	refs   map[string]ModelRef
	latest string
}

func (c *mapCatalog) Checkpoint(_ context.Context, id string) (ModelRef, error) {
	r, ok := c.refs[id]
	if !ok {
		return ModelRef{}, newError(CodeModelNotFound, "no checkpoint %q", id)
	}
	return r, nil
}

func (c *mapCatalog) Latest(ctx context.Context) (ModelRef, error) {
	if c.latest == "" {
		return ModelRef{}, newError(CodeNoModel, "no trained model yet")
	}
	return c.Checkpoint(ctx, c.latest)
}

// countingBackend records the batch size of every Generate call.
type countingBackend struct {
	compute.Backend
	mu      sync.Mutex
	batches []int
	block   chan struct{} // when set, Generate waits for it (or ctx)
	loads   int
}

func (b *countingBackend) Load(ctx context.Context, req compute.LoadRequest) (compute.LoadResult, error) {
	b.mu.Lock()
	b.loads++
	b.mu.Unlock()
	return b.Backend.Load(ctx, req)
}

func (b *countingBackend) Generate(ctx context.Context, req compute.GenerateRequest) (compute.GenerateResult, error) {
	b.mu.Lock()
	b.batches = append(b.batches, len(req.Batch))
	block := b.block
	b.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return compute.GenerateResult{}, fmt.Errorf("generate: %w", ctx.Err())
		}
	}
	return b.Backend.Generate(ctx, req)
}

func (b *countingBackend) calls() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]int(nil), b.batches...)
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
