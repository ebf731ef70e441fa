package ground

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"sync"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/services/ground/groundtest"
)

// testModel writes groundtest's model into bs and describes it as the
// final checkpoint id of a run.
func testModel(t testing.TB, bs *blob.Local, id string) ModelRef {
	t.Helper()
	m := groundtest.WriteModel(t, bs, id)
	return ModelRef{CheckpointID: id, RunID: "run-" + id, Stage: "stage3", Step: 7, BlobKey: m.CheckpointKey, Backend: "gomlx", ModelConfig: m.ModelConfig, TokenizerKey: m.TokenizerKey}
}

// pluginHost starts the real GoMLX plugin process, closed when the test
// ends.
func pluginHost(t testing.TB) *compute.Host {
	t.Helper()
	host, err := compute.NewHost(compute.HostConfig{Path: gomlxPlugin(t), Env: []string{"GOMLX_BACKEND=go:parallelism=-1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = host.Close() })
	return host
}

// pluginService is a Service over the real GoMLX plugin serving
// testModel's model under checkpoint id, the only and latest one.
func pluginService(t testing.TB, id string) (*Service, ModelRef) {
	t.Helper()
	host := pluginHost(t)
	bs, err := blob.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ref := testModel(t, bs, id)
	svc, err := New(Config{
		Catalog:  &mapCatalog{refs: map[string]ModelRef{ref.CheckpointID: ref}, latest: ref.CheckpointID},
		Backends: func(string) (compute.Backend, error) { return host, nil }, Blob: bs,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return svc, ref
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
	// exports by model version ("<checkpoint>@<format>-<dtype>").
	exports map[string]ExportRef
}

func (c *mapCatalog) Export(_ context.Context, id, format, dtype string) (ExportRef, error) {
	m := ModelSpec{CheckpointID: id, Format: format, Dtype: dtype}
	x, ok := c.exports[m.String()]
	if !ok {
		return ExportRef{}, errExportNotFound(m, "")
	}
	return x, nil
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
