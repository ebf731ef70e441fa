package train_test

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/onnx"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
	"github.com/groundmesh/groundmesh/services/train"
)

// TestExport: a trained checkpoint exported as GGUF lands in the blob
// store and model_exports, reads back as the run's model (config,
// tokenizer, the checkpoint it came from), is answered again rather than
// rewritten, and bad requests and a corrupted checkpoint are refused
// precisely.
func TestExport(t *testing.T) {
	e := newEnv(t)
	svc := e.service(t, computetest.NewToy(computetest.ToyOptions{}))
	req := newRequest(tinySpec([3]int{4, 4, 4}, 4))
	ctx := ctxT(t, 2*time.Minute)
	out, err := svc.Train(ctx, req, func(events.Progress) {})
	if err != nil {
		t.Fatal(err)
	}
	ck := out.Checkpoints["stage3"]
	x, err := svc.Export(ctx, events.ExportRequested{CorrelationID: "c1", CheckpointID: ck, Format: "gguf", Dtype: model.DtypeQ8_0})
	if err != nil {
		t.Fatal(err)
	}
	if x.Reused || x.CorrelationID != "c1" || x.RunID != req.RunID || x.Dtype != model.DtypeQ8_0 || x.Bytes <= 0 || x.ModelConfigSHA256 != out.Run.ModelConfigSHA256 {
		t.Fatalf("export = %+v", x)
	}
	path, err := e.blob.Path(x.BlobKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig(out.Run.ModelConfig)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.ReadGGUFFile(path, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m.Dtype != model.DtypeQ8_0 || m.Tokenizer.VocabSize() != cfg.VocabSize {
		t.Fatalf("read back dtype %s, vocabulary %d", m.Dtype, m.Tokenizer.VocabSize())
	}
	if n := count(t, e, `SELECT count(*) FROM model_exports WHERE checkpoint_id = $1 AND dtype = 'q8_0' AND sha256 = $2`, ck, x.SHA256); n != 1 {
		t.Fatalf("%d model_exports rows", n)
	}
	again, err := svc.Export(ctx, events.ExportRequested{CheckpointID: ck, Format: "gguf", Dtype: model.DtypeQ8_0})
	if err != nil || !again.Reused || again.ExportID != x.ExportID || again.SHA256 != x.SHA256 {
		t.Fatalf("export again = %+v, %v: want the recorded export", again, err)
	}

	// The same checkpoint as an ONNX bundle: its graphs hold the
	// checkpoint's weights.
	ox, err := svc.Export(ctx, events.ExportRequested{CheckpointID: ck, Format: "onnx", Dtype: model.DtypeF32})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(ox.BlobKey, ".onnx.tar") || ox.Format != "onnx" {
		t.Fatalf("onnx export = %+v", ox)
	}
	op, _ := e.blob.Path(ox.BlobKey)
	ob, err := os.ReadFile(op)
	if err != nil {
		t.Fatal(err)
	}
	om, err := onnx.ReadBundle(ob, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	f32, err := svc.Export(ctx, events.ExportRequested{CheckpointID: ck, Format: "gguf", Dtype: model.DtypeF32})
	if err != nil {
		t.Fatal(err)
	}
	gp, _ := e.blob.Path(f32.BlobKey)
	gm, err := model.ReadGGUFFile(gp, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(om.Weights) == 0 || len(om.Graphs) == 0 {
		t.Fatalf("onnx bundle: %d weights, %d graphs", len(om.Weights), len(om.Graphs))
	}
	for name, w := range om.Weights {
		if !slices.Equal(w, gm.Weights[name]) {
			t.Errorf("onnx weight %s differs from the checkpoint's", name)
		}
	}

	for _, c := range []struct {
		name string
		req  events.ExportRequested
		msg  string
	}{
		{"format", events.ExportRequested{CheckpointID: ck, Format: "tflite"}, `format "tflite"`},
		{"onnx dtype", events.ExportRequested{CheckpointID: ck, Format: "onnx", Dtype: model.DtypeQ8_0}, `dtype "q8_0": an export as onnx is one of`},
		{"dtype", events.ExportRequested{CheckpointID: ck, Format: "gguf", Dtype: "q2_k"}, `dtype "q2_k"`},
		{"not a uuid", events.ExportRequested{CheckpointID: "latest", Format: "gguf"}, "not a uuid"},
		{"unknown", events.ExportRequested{CheckpointID: "00000000-0000-0000-0000-000000000001", Format: "gguf"}, "not found"},
	} {
		_, err := svc.Export(ctx, c.req)
		if !errors.Is(err, train.ErrInvalidRequest) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: err = %v, want an invalid request naming %q", c.name, err, c.msg)
		}
	}

	// A checkpoint whose bytes changed under its key is not exported.
	var key string
	for _, c := range checkpoints(t, e, req.RunID) {
		if c.ID == ck {
			key = c.Key
		}
	}
	p, _ := e.blob.Path(key)
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-1] ^= 0xff
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = svc.Export(ctx, events.ExportRequested{CheckpointID: ck, Format: "gguf", Dtype: model.DtypeF16})
	if !errors.Is(err, train.ErrInvalidRequest) || !strings.Contains(err.Error(), "hashes to") {
		t.Errorf("corrupted checkpoint: err = %v", err)
	}
}
