//go:build onnx

package gomlx

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/onnx"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

func newONNXBackend(t testing.TB) *Backend {
	t.Helper()
	b, err := New(Config{Engine: EngineONNX})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestONNXMatrix runs the conformance matrix's inference cells on the
// ONNX engine (each checkpoint exported to ONNX graphs as it loads, run
// by ONNX Runtime) in float32 against the references the GoMLX engine
// recorded, with the matrix's default tolerances.
func TestONNXMatrix(t *testing.T) {
	computetest.RunMatrix(t, computetest.MatrixHarness{New: func(t *testing.T) compute.Backend { return newONNXBackend(t) }})
}

// TestONNXMatrixF16 runs them with the weights held in float16 (the
// ggml engine's float16 bounds).
func TestONNXMatrixF16(t *testing.T) {
	computetest.RunMatrix(t, computetest.MatrixHarness{
		Tolerance: computetest.MatrixTolerance{Dtype: model.DtypeF16, Forward: 1e-2, Answers: 1, BoxIoU: 0.95},
		New:       func(t *testing.T) compute.Backend { return newONNXBackend(t) },
	})
}

// onnxFixture writes the matrix's demo cell as a safetensors checkpoint
// and as an ONNX bundle in dtype.
func onnxFixture(t *testing.T, dtype string) (ckpt, bundle string, cfg model.Config, cfgJSON []byte, seqs []compute.Sequence, data []byte) {
	t.Helper()
	f := newExportFixture(t)
	data, _, err := onnx.ExportModel(f.cfg, f.weights, dtype, f.tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	bundle = f.write(t, "model."+dtype+".onnx.tar", data)
	return f.ckpt, bundle, f.cfg, configJSON(t, f.cfg), f.seqs, data
}

// TestONNXLoadsBundle: an ONNX export loads on the ONNX engine, which
// runs the file's own graphs, and computes what its checkpoint computes
// on the GoMLX engine; the GoMLX engine loads the export's weights too;
// a bundle that is not the model asked for, or is damaged, is refused
// with what differs; the engine refuses to train.
func TestONNXLoadsBundle(t *testing.T) {
	b := newONNXBackend(t)
	ref := newTestBackend(t)
	for _, dtype := range []string{model.DtypeF32, model.DtypeF16} {
		ckpt, bundle, _, cfgJSON, seqs, _ := onnxFixture(t, dtype)
		want := prefillLogits(t, ref, compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: ckpt}, seqs)
		tol := 1e-4
		if dtype == model.DtypeF16 {
			tol = 1e-2
		}
		if err := computetest.CompareLogits(prefillLogits(t, b, compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: bundle}, seqs), want, tol, tol); err != nil {
			t.Errorf("%s bundle on onnx: %v", dtype, err)
		}
		if err := computetest.CompareLogits(prefillLogits(t, ref, compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: bundle}, seqs), want, tol, tol); err != nil {
			t.Errorf("%s bundle on gomlx: %v", dtype, err)
		}
	}
	_, bundle, cfg, cfgJSON, _, data := onnxFixture(t, model.DtypeF32)
	other := cfg
	other.Width *= 2
	otherJSON := configJSON(t, other)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		name, path string
		cfg        []byte
		want       string
	}{
		{"another config", bundle, otherJSON, "is not the requested one"},
		{"truncated", write("cut.onnx.tar", data[:len(data)/2]), cfgJSON, "onnx bundle does not match"},
		{"a graph's bytes damaged", write("bad.onnx.tar", damage(data, onnx.GraphStepImage+".onnx")), cfgJSON, "onnx bundle does not match"},
	} {
		_, err := b.Load(context.Background(), compute.LoadRequest{ModelConfig: c.cfg, Checkpoint: c.path})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := b.Train(context.Background(), compute.TrainRequest{}, nil); !errors.Is(err, compute.ErrUnimplemented) {
		t.Errorf("Train on onnx: err = %v", err)
	}
}

// damage flips bytes in the middle of the named file of a bundle.
func damage(data []byte, name string) []byte {
	out := append([]byte{}, data...)
	i := strings.Index(string(out), name)
	if i < 0 {
		panic("no " + name)
	}
	for j := i + 1024; j < i+1024+64 && j < len(out); j++ {
		out[j] ^= 0xff
	}
	return out
}
