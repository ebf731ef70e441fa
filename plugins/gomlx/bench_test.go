package gomlx

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// Benchmarks measure the candidate demo configs on this machine. The GoMLX
// backend options come from GROUNDMESH_GOMLX_OPTIONS (default
// DefaultOptions); build with GOEXPERIMENT=simd to compare the SIMD kernels:
//
//	go test ./plugins/gomlx -run '^$' -bench TrainStep -benchtime 10x
//	GROUNDMESH_GOMLX_OPTIONS=parallelism=-1 go test ./plugins/gomlx -run '^$' -bench TrainStep -benchtime 10x
//	GOEXPERIMENT=simd go test ./plugins/gomlx -run '^$' -bench TrainStep -benchtime 10x
//
// GROUNDMESH_GOMLX_OPTIONS="," selects GoMLX's own default worker pool (no
// options), the setting that deadlocked on 2 cores.
//
// Measured (BenchmarkTrainStep, ops_sequential, no SIMD; "long" rows carry
// 150-token answers, L=208, like stage-3 dense descriptions; the others
// stage-1-like, L=80). Idle Xeon pinned to 2 cores, AVX-512 off:
//
//	config              batch  steps/s  CPU-s/step
//	img48p8-w96d3         16     0.93     1.52
//	img48p8-w96d3-long    16     0.35     4.03
//	img48p8-w64d2         16     2.66     0.51
//	img64p16-w96d3        16     1.85     0.75
//	img64p16-w64d2        16     4.31     0.31
//
// The shared 2-core dev box (AMD EPYC, AVX2, load 6-7 from other jobs) gave
// CPU-s/step of 1.56 / 5.84 / 0.70 / - / 0.40 for the same rows, and 0.44 for
// img48p8-w64d2 at batch 8 (1.41 with long rows). GOEXPERIMENT=simd sped the
// short rows up by 0-30% but made the long rows 5.7x slower (GoMLX's AVX2
// small-matmul kernel for the attention backward), so it is not used.

const benchVocab = 1024

type benchConfig struct {
	name      string
	cfg       model.Config
	objective string // compute.TrainRequest.Objective
}

func benchConfigs() []benchConfig {
	d := model.DefaultConfig(benchVocab)
	small := d
	small.Width, small.Depth = 64, 2
	p16 := d
	p16.ImageSize, p16.PatchSize = 64, 16
	p16small := p16
	p16small.Width, p16small.Depth = 64, 2
	// demo is services/train's DefaultSpec model: two heads, no vision
	// block, the convolutional stem, attention-pooled text fusion, and the
	// grounding and box losses (whose heads run on every position whether
	// or not a batch carries labels); demo-linear is it with the linear
	// patch embedding instead of the stem.
	demo := small
	demo.Heads, demo.VisionDepth, demo.ImagesAfterText = 2, 0, true
	demo.TextFusion, demo.FusionAttention, demo.GroundLossWeight, demo.BoxLossWeight = true, true, 1, 1
	linear := demo
	demo.ConvStem = true
	// grounder is the spatial grounding encoder and head
	// (model.Config.Grounder) at the scene world's 64 pixels, 8x8 cells.
	grounder := linear
	grounder.TextFusion, grounder.FusionAttention, grounder.GroundLossWeight, grounder.BoxLossWeight = false, false, 0, 0
	grounder.ImageSize, grounder.MaxSeq, grounder.PatchPositions = 64, 320, true
	grounder.Grounder, grounder.GrounderQueries, grounder.GrounderLossWeight = true, 4, 1
	grounder.GrounderNorm = true
	grounder32 := grounder
	grounder32.VisionWidth = 32
	grounder48 := grounder32
	grounder48.ImageSize = 48
	return []benchConfig{
		{"img64p8-grounder", grounder, ""},
		{"img64p8-grounder-only", grounder, compute.ObjectiveGrounder},
		{"img64p8-grounder-c32-only", grounder32, compute.ObjectiveGrounder},
		{"img64p8-grounder-c32", grounder32, ""},
		{"img48p8-grounder-c32", grounder48, ""},
		{"img48p8-demo", demo, ""},
		{"img48p8-demo-long", demo, ""},
		{"img48p8-demo-linear", linear, ""},
		{"img48p8-w96d3", d, ""},
		{"img48p8-w96d3-long", d, ""},
		{"img48p8-w64d2", small, ""},
		{"img48p8-w64d2-long", small, ""},
		{"img64p16-w96d3", p16, ""},
		{"img64p16-w64d2", p16small, ""},
	}
}

// benchRows are stage-1-like samples: one image, a 16-token prompt and a
// 14-token answer (a box in the box grammar and <eos>) that carries the
// loss.
func benchRows(c model.Config, n int, rng *rand.Rand) []batchRow {
	return benchRowsAnswer(c, n, 14, rng)
}

// benchRowsAnswer is benchRows with answers of the given length (stage 3's
// dense descriptions run to ~150 tokens).
func benchRowsAnswer(c model.Config, n, answer int, rng *rand.Rand) []batchRow {
	rows := make([]batchRow, n)
	for i := range rows {
		toks := []int32{1}
		for range c.Patches() {
			toks = append(toks, c.PatchToken)
		}
		for range 16 {
			toks = append(toks, int32(382+rng.IntN(c.VocabSize-382)))
		}
		ans := len(toks)
		for range answer {
			toks = append(toks, int32(9+rng.IntN(117)))
		}
		tokens := make([]int32, c.MaxSeq)
		targets := make([]int32, c.MaxSeq)
		for t := range tokens {
			targets[t] = -1
			if t < len(toks) {
				tokens[t] = toks[t]
			}
		}
		for t := ans - 1; t < len(toks)-1; t++ {
			targets[t] = toks[t+1]
		}
		targets[len(toks)-1] = 2
		img := make([]byte, c.ImageSize*c.ImageSize*3)
		for j := range img {
			img[j] = byte(rng.IntN(256))
		}
		rows[i] = batchRow{tokens: tokens, targets: targets, images: [][]byte{img}}
	}
	return rows
}

// cpuSeconds is the user+system CPU time of this process: on a shared
// machine it says more about a step's cost than the wall clock.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func benchOptions() string {
	if o := os.Getenv("GROUNDMESH_GOMLX_OPTIONS"); o != "" {
		return o
	}
	return DefaultOptions
}

// BenchmarkTrainStep times full optimizer steps (forward, backward, AdamW)
// of every parameter, after one warm-up step that compiles the graph.
func BenchmarkTrainStep(b *testing.B) {
	for _, bc := range benchConfigs() {
		for _, batch := range []int{8, 16, 32, 64} {
			b.Run(fmt.Sprintf("%s/b%d", bc.name, batch), func(b *testing.B) {
				be, err := New(Config{Options: benchOptions()})
				if err != nil {
					b.Fatal(err)
				}
				c := bc.cfg
				specs := paramSpecs(c)
				sel := selectTrainable(specs, nil, nil)
				if bc.objective == compute.ObjectiveGrounder {
					onlyGrounder(specs, sel)
				}
				tr, err := newTrainer(be, c, bc.objective, specs, sel, &modelState{weights: initParams(specs, 1)})
				if err != nil {
					b.Fatal(err)
				}
				defer tr.close()
				rng := rand.New(rand.NewPCG(1, 1))
				answer := 14
				if strings.HasSuffix(bc.name, "-long") {
					answer = 150
				}
				bt := makeBatch(c, benchRowsAnswer(c, batch, answer, rng))
				t0 := time.Now()
				if _, err := tr.step(1e-3, 10, 10, 0.01, bt); err != nil {
					b.Fatal(err)
				}
				compile := time.Since(t0)
				cpu0 := cpuSeconds()
				b.ResetTimer()
				for i := range b.N {
					if _, err := tr.step(1e-3, float32(i+2), float32(i+2), 0.01, bt); err != nil {
						b.Fatal(err)
					}
				}
				el := b.Elapsed().Seconds()
				cpuStep := (cpuSeconds() - cpu0) / float64(b.N)
				steps := float64(b.N) / el
				flops := c.FLOPsPerStep(batch)
				exec := c
				exec.MaxSeq, exec.MaxImages = bt.L, (bt.K+batch-1)/batch
				b.ReportMetric(steps, "steps/s")
				b.ReportMetric(steps*float64(bt.realTokens), "tokens/s")
				b.ReportMetric(flops, "FLOPs/step")
				b.ReportMetric(exec.FLOPsPerStep(batch)*steps/1e9, "GFLOP/s")
				b.ReportMetric(cpuStep, "CPU-s/step")
				b.Logf("%s batch %d (options %q): %d params, L=%d K=%d, first step (compile+run) %v, %.2f steps/s, %.0f tokens/s, %.2f CPU-s/step, %.3g config FLOPs/step",
					bc.name, batch, benchOptions(), c.ParamCount(), bt.L, bt.K, compile.Round(time.Millisecond), steps, steps*float64(bt.realTokens), cpuStep, flops)
			})
		}
	}
}

// BenchmarkPrefillDecode times the eager inference path on the default
// config: a prefill of an image prompt and 14 decode steps (one box).
func BenchmarkPrefillDecode(b *testing.B) {
	for _, eng := range Engines() {
		for _, batch := range []int{1, 8} {
			benchPrefillDecode(b, eng, batch)
		}
	}
}

func benchPrefillDecode(b *testing.B, eng string, batch int) {
	b.Run(fmt.Sprintf("%s/b%d", eng, batch), func(b *testing.B) {
		ctx := context.Background()
		c := model.DefaultConfig(benchVocab)
		be, err := New(Config{Engine: eng})
		if err != nil {
			b.Fatal(err)
		}
		ck := writeWeights(b, b.TempDir(), c, roughWeights(c, 1))
		sess, err := be.Load(ctx, compute.LoadRequest{ModelConfig: configJSON(b, c), Checkpoint: ck})
		if err != nil {
			b.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(2, 2))
		rows := benchRows(c, batch, rng)
		var seqs []compute.Sequence
		for _, r := range rows {
			prompt := r.tokens[:1+c.Patches()+16]
			seqs = append(seqs, compute.Sequence{Tokens: prompt, Images: []compute.Image{{Size: c.ImageSize, Pixels: model.NormalizePixels(r.images[0])}}})
		}
		var prefill, decode time.Duration
		b.ResetTimer()
		for range b.N {
			t0 := time.Now()
			out, err := be.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: seqs})
			if err != nil {
				b.Fatal(err)
			}
			prefill += time.Since(t0)
			t0 = time.Now()
			for range 14 {
				toks := make([]int32, batch)
				for i, l := range out.Logits {
					toks[i] = int32(argmax(l))
				}
				if out, err = be.Decode(ctx, compute.DecodeRequest{Session: sess.Session, CacheID: out.CacheID, Tokens: toks}); err != nil {
					b.Fatal(err)
				}
			}
			decode += time.Since(t0)
			if err := be.ReleaseCache(ctx, sess.Session, out.CacheID); err != nil {
				b.Fatal(err)
			}
		}
		n := float64(b.N)
		b.ReportMetric(prefill.Seconds()*1e3/n, "ms/prefill")
		b.ReportMetric(decode.Seconds()*1e3/(14*n), "ms/decode-step")
		b.ReportMetric(float64(14*batch)*n/decode.Seconds(), "decode-tokens/s")
	})
}

// matmulPeak measures this machine's fp32 matrix-product rate (GFLOP/s)
// on 1024 x 1024 products: with libtorch's BLAS in a libtorch build
// (torch_test.go sets it), with GoMLX's Go backend otherwise.
var matmulPeak = func(b *testing.B) (float64, string) {
	be, err := New(Config{Options: benchOptions()})
	if err != nil {
		b.Fatal(err)
	}
	const n = 1024
	exec, err := graph.NewExec(be.ml, func(x, y *graph.Node) *graph.Node { return graph.MatMul(x, y) })
	if err != nil {
		b.Fatal(err)
	}
	defer exec.Finalize()
	x := tensors.FromFlatDataAndDimensions(make([]float32, n*n), n, n)
	if _, err := exec.Call(x, x); err != nil {
		b.Fatal(err)
	}
	const reps = 5
	t0 := time.Now()
	for range reps {
		out, err := exec.Call(x, x)
		if err != nil {
			b.Fatal(err)
		}
		out[0].FinalizeAll()
	}
	return 2 * n * n * n * reps / time.Since(t0).Seconds() / 1e9, "gomlx go backend"
}

// benchStepper is a training step over every parameter of c (those the
// grounder reads under ObjectiveGrounder) from seed-1 weights.
func benchStepper(b *testing.B, be *Backend, c model.Config, objective string) stepper {
	b.Helper()
	specs := paramSpecs(c)
	sel := selectTrainable(specs, nil, nil)
	if objective == compute.ObjectiveGrounder {
		onlyGrounder(specs, sel)
	}
	tr, err := be.eng.newStepper(be, c, objective, specs, sel, &modelState{weights: initParams(specs, 1)})
	if err != nil {
		b.Fatal(err)
	}
	return tr
}

// BenchmarkEngines times the demo model's training steps on every engine
// this binary has, in one run: stage 1's step (the grounder objective,
// batch 64) and stage 2's (every loss, batch 16). It reports steps/s,
// CPU-s per step and the GFLOP/s achieved, and logs the machine's fp32
// matmul peak to compare with. Build with -tags libtorch (make
// bench-engines) to compare libtorch with GoMLX.
func BenchmarkEngines(b *testing.B) {
	peak, by := matmulPeak(b)
	b.Logf("fp32 matmul peak on this machine: %.1f GFLOP/s (1024 x 1024 products, %s)", peak, by)
	demo := computetest.DemoCellConfig(model.DefaultConfig(benchVocab))
	ref := demoModel(demo)
	cases := []struct {
		name      string
		objective string
		batch     int
	}{{"stage1", compute.ObjectiveGrounder, 64}, {"stage2", compute.ObjectiveAll, 16}}
	for _, cs := range cases {
		for _, eng := range Engines() {
			b.Run(fmt.Sprintf("%s/%s", cs.name, eng), func(b *testing.B) {
				dev := ""
				if eng == EngineLibtorch {
					dev = os.Getenv("GROUNDMESH_TORCH_DEVICE")
				}
				be, err := New(Config{Options: benchOptions(), Engine: eng, Device: dev})
				if err != nil {
					b.Fatal(err)
				}
				c := ref
				tr := benchStepper(b, be, c, cs.objective)
				defer tr.close()
				bt := makeBatch(c, benchRows(c, cs.batch, rand.New(rand.NewPCG(1, 1))))
				for i := range 2 { // warm-up: compile, allocate
					if _, err := tr.step(1e-3, float32(i+1), float32(i+1), 0.01, bt); err != nil {
						b.Fatal(err)
					}
				}
				cpu0 := cpuSeconds()
				b.ResetTimer()
				for i := range b.N {
					if _, err := tr.step(1e-3, float32(i+3), float32(i+3), 0.01, bt); err != nil {
						b.Fatal(err)
					}
				}
				el := b.Elapsed().Seconds()
				steps := float64(b.N) / el
				exec := c
				exec.MaxSeq, exec.MaxImages = bt.L, (bt.K+cs.batch-1)/cs.batch
				flops := exec.FLOPsPerStep(cs.batch)
				if cs.objective == compute.ObjectiveGrounder {
					// Stage 1 runs the grounder alone, not the language
					// model: its tower and head, forward and backward.
					flops = 3 * float64(bt.K) * c.GrounderFLOPsPerImage()
				}
				gflops := flops * steps / 1e9
				b.ReportMetric(steps, "steps/s")
				b.ReportMetric((cpuSeconds()-cpu0)/float64(b.N), "CPU-s/step")
				b.ReportMetric(gflops, "GFLOP/s")
				b.ReportMetric(100*gflops/peak, "%peak")
			})
		}
	}
}

// demoModel is services/train.DefaultSpec's model over c's
// vocabulary (a test there keeps the matrix's demo cell equal to it):
// width 64, depth 2, two heads, no vision block, 64-pixel images, a
// 32-channel grounding tower.
func demoModel(c model.Config) model.Config {
	c.Width, c.Depth, c.Heads, c.VisionDepth = 64, 2, 2, 0
	c.ImageSize, c.MaxSeq, c.VisionWidth = 64, 320, 32
	c.ImagesAfterText = true
	c.GrounderQueries, c.GrounderLossWeight = 4, 1
	return c
}
