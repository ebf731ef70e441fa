package eval

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/gomlx"
)

// writeRandomCheckpoint writes weights for cfg in the safetensors layout
// every backend reads: canonical names, F32, layer-norm scales 1.
func writeRandomCheckpoint(tb testing.TB, path string, cfg model.Config, seed uint64) {
	tb.Helper()
	rng := rand.New(rand.NewPCG(seed, 5))
	var ts []model.Tensor
	for _, p := range cfg.Params() {
		n := int(p.Size())
		buf := make([]byte, 4*n)
		isNorm := strings.Contains(p.Name, "ln") && strings.HasSuffix(p.Name, ".w")
		for i := range n {
			v := float32(rng.NormFloat64() * 0.05)
			if isNorm {
				v = 1
			} else if len(p.Shape) == 1 {
				v = 0
			}
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
		}
		ts = append(ts, model.Tensor{Name: p.Name, DType: "F32", Shape: p.Shape, Data: buf})
	}
	step := make([]byte, 8)
	ts = append(ts, model.Tensor{Name: "optim.step", DType: "I64", Shape: []int{1}, Data: step})
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := model.WriteSafetensors(f, ts, map[string]string{"config_sha256": cfg.SHA256()}); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkEvaluateREC scores REC records end to end with the pure-Go
// GoMLX backend: image loading, preprocessing, prefill and box-constrained
// greedy decoding through model.Generator, parsing, scoring and the JSONL
// of predictions. The model has the default tinygrounder architecture with
// random weights (speed does not depend on the weights). It reports
// samples/s and the projected time for 5,000 samples (the budget
// is 3 minutes). EVAL_BENCH_SAMPLES sets the sample count (default 5000);
// EVAL_BENCH_BATCH the batch (default 32). Run with -benchtime=1x.
func BenchmarkEvaluateREC(b *testing.B) {
	samples := envInt(b, "EVAL_BENCH_SAMPLES", 5000)
	batch := envInt(b, "EVAL_BENCH_BATCH", 32)
	dir := b.TempDir()
	root := filepath.Join(dir, "dataset")
	world := buildWorld(b, root, 7)
	var recs []model.Record
	for len(recs) < samples {
		for _, r := range world {
			if BenchmarkOf(r) == BenchREC && len(recs) < samples {
				r.ID = fmt.Sprintf("%s-%05d", r.ID, len(recs))
				recs = append(recs, r)
			}
		}
	}
	vb := model.NewVocabBuilder()
	for _, r := range world {
		vb.AddRecord(r)
	}
	tok, err := vb.Build(2000)
	if err != nil {
		b.Fatal(err)
	}
	cfg := model.DefaultConfig(tok.VocabSize())
	bs, err := blob.NewLocal(filepath.Join(dir, "blobs"))
	if err != nil {
		b.Fatal(err)
	}
	tokPath, _ := bs.Path("runs/bench/tokenizer.json")
	ckPath, _ := bs.Path("runs/bench/stage3.safetensors")
	if err := os.MkdirAll(filepath.Dir(tokPath), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := tok.SaveFile(tokPath); err != nil {
		b.Fatal(err)
	}
	writeRandomCheckpoint(b, ckPath, cfg, 1)
	mc, err := json.Marshal(cfg)
	if err != nil {
		b.Fatal(err)
	}
	backend, err := gomlx.New(gomlx.Config{})
	if err != nil {
		b.Fatal(err)
	}
	factory, err := NewGeneratorFactory(GeneratorConfig{Backend: backend, Blob: bs})
	if err != nil {
		b.Fatal(err)
	}
	run := RunInfo{RunID: "bench", DatasetRoot: root, ModelConfig: mc, TokenizerKey: "runs/bench/tokenizer.json"}
	ctx := context.Background()
	p, err := factory(ctx, Checkpoint{ID: "ck", Stage: "stage3", BlobKey: "runs/bench/stage3.safetensors"}, run)
	if err != nil {
		b.Fatal(err)
	}
	defer p.(interface{ Close() error }).Close()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		res, err := runBenchmark(ctx, p, BenchREC, "test", recs, batch, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := encodeJSONL(res.Samples); err != nil {
			b.Fatal(err)
		}
		el := time.Since(start)
		rate := float64(len(recs)) / el.Seconds()
		b.ReportMetric(rate, "samples/s")
		b.ReportMetric(5000/rate, "s/5000")
		fmt.Printf("eval bench: %d REC samples in %v (batch %d): %.1f samples/s, %.1f s per 5,000 (budget 180 s); parse failures %.3f\n",
			len(recs), el.Round(time.Millisecond), batch, rate, 5000/rate, res.Metrics["parse_fail"])
	}
}

func envInt(tb testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}
