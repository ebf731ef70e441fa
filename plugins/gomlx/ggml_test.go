//go:build ggml

package gomlx

import (
	"context"
	"errors"
	"fmt"
	"image"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

func newGGMLBackend(t testing.TB) *Backend {
	t.Helper()
	b, err := New(Config{Engine: EngineGGML})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGGMLMatrix runs the conformance matrix's inference cells on the
// ggml engine in float32 against the references the GoMLX engine
// recorded, with the matrix's default tolerances.
func TestGGMLMatrix(t *testing.T) {
	computetest.RunMatrix(t, computetest.MatrixHarness{New: func(t *testing.T) compute.Backend { return newGGMLBackend(t) }})
}

// TestGGMLMatrixQuantized runs the inference cells with the weights held
// in float16, q8_0 and q4_0 against the same float32 references, within
// each dtype's stated bounds: forward values within Forward*(1+|want|),
// and the share of grammar answers that must stay the reference's.
func TestGGMLMatrixQuantized(t *testing.T) {
	for _, c := range []computetest.MatrixTolerance{
		{Dtype: model.DtypeF16, Forward: 1e-2, Answers: 0.9},
		{Dtype: model.DtypeQ8_0, Forward: 0.15, Answers: 0.8, Boxes: 0.5},
		{Dtype: model.DtypeQ4_0, Forward: 2, Answers: 0.3, Boxes: 0.5},
	} {
		t.Run(c.Dtype, func(t *testing.T) {
			computetest.RunMatrix(t, computetest.MatrixHarness{Tolerance: c, New: func(t *testing.T) compute.Backend { return newGGMLBackend(t) }})
		})
	}
}

// TestGGMLLoadsGGUF: a GGUF export loads on the ggml engine in its own
// dtype and computes what the checkpoint it came from computes when
// loaded in that dtype (requantizing a quantized file's weights gives
// its bytes back), and the ggml engine refuses to train.
func TestGGMLLoadsGGUF(t *testing.T) {
	b := newGGMLBackend(t)
	for _, dtype := range []string{model.DtypeF32, model.DtypeF16, model.DtypeQ8_0, model.DtypeQ4_0} {
		ckpt, gguf, _, cfgJSON, seqs := ggufFixture(t, dtype)
		want := prefillLogits(t, b, compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: ckpt, Dtype: dtype}, seqs)
		got := prefillLogits(t, b, compute.LoadRequest{ModelConfig: cfgJSON, Checkpoint: gguf}, seqs)
		if err := computetest.CompareLogits(got, want, 0, 0); err != nil {
			t.Errorf("%s: %v", dtype, err)
		}
	}
	d, err := b.Describe(context.Background())
	if err != nil || d.CanTrain || len(d.Dtypes) != 4 {
		t.Fatalf("Describe = %+v, %v: want no training and four dtypes", d, err)
	}
	_, err = b.Train(context.Background(), compute.TrainRequest{}, nil)
	if !errors.Is(err, compute.ErrUnimplemented) {
		t.Errorf("Train on ggml: err = %v", err)
	}
}

// BenchmarkEnginesBoxAnswer measures box answers (prefill and decode under
// the box grammar, the backend's own Generate) on the demo's model shape
// in this process: GoMLX's engine in float32 against ggml's in each
// dtype, one prompt and a batch of 32.
//
//	make ggml && CGO_CPPFLAGS=... go test -tags ggml ./plugins/gomlx -run '^$' -bench EnginesBoxAnswer -benchtime 20x
func BenchmarkEnginesBoxAnswer(b *testing.B) {
	ctx := context.Background()
	tok := computetest.MatrixTokenizer()
	c := computetest.DemoCellConfig(model.DefaultConfig(tok.VocabSize()))
	c.Width, c.Depth, c.Heads, c.ImageSize, c.MaxSeq = 64, 2, 2, 64, 320 // the demo's sizes
	ckpt := writeWeights(b, b.TempDir(), c, roughWeights(c, 1))
	var prompts []model.Prompt
	for i := range 32 {
		prompts = append(prompts, model.Prompt{Text: "red square <image>", Images: []image.Image{image.NewRGBA(image.Rect(0, 0, 80+i, 60))}})
	}
	for _, e := range []struct{ engine, dtype string }{
		{EngineGoMLX, ""}, {EngineGGML, model.DtypeF32}, {EngineGGML, model.DtypeF16}, {EngineGGML, model.DtypeQ8_0}, {EngineGGML, model.DtypeQ4_0},
	} {
		be, err := New(Config{Engine: e.engine})
		if err != nil {
			b.Fatal(err)
		}
		sess, err := be.Load(ctx, compute.LoadRequest{ModelConfig: configJSON(b, c), Checkpoint: ckpt, Dtype: e.dtype})
		if err != nil {
			b.Fatal(err)
		}
		gen, err := model.NewGenerator(be, sess.Session, tok, c)
		if err != nil {
			b.Fatal(err)
		}
		name := e.engine
		if e.dtype != "" {
			name += "-" + e.dtype
		}
		for _, n := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/batch-%d", name, n), func(b *testing.B) {
				for b.Loop() {
					g, err := gen.Generate(ctx, prompts[:n], model.GenerateOptions{Constraint: model.ConstraintBox})
					if err != nil || g[0].Box == nil {
						b.Fatalf("generate: %v %+v", err, g)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/call")
			})
		}
	}
}
