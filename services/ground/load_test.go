package ground

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/internal/testutil"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/gomlx"
)

type loadStats struct {
	p50, p99 time.Duration
	rps      float64
	failed   int
}

// runLoad sends n requests from c goroutines and measures each.
func runLoad(c, n int, fn func(ctx context.Context) error) loadStats {
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	start := time.Now()
	var wg sync.WaitGroup
	for range c {
		wg.Go(func() {
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				t0 := time.Now()
				errs[i] = fn(ctx)
				lat[i] = time.Since(t0)
				cancel()
			}
		})
	}
	wg.Wait()
	wall := time.Since(start)
	st := loadStats{rps: float64(n) / wall.Seconds()}
	for _, err := range errs {
		if err != nil {
			st.failed++
		}
	}
	slices.Sort(lat)
	st.p50, st.p99 = lat[n/2], lat[min(n-1, n*99/100)]
	return st
}

// openTestModel opens testModel's model on be, closed when the benchmark
// ends.
func openTestModel(b *testing.B, be compute.Backend) *infer.Session {
	b.Helper()
	bs, err := blob.NewLocal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ref := testModel(b, bs, "bench")
	tp, _ := bs.Path(ref.TokenizerKey)
	cp, _ := bs.Path(ref.BlobKey)
	sess, err := infer.Open(context.Background(), be, infer.OpenRequest{ModelConfig: ref.ModelConfig, TokenizerPath: tp, CheckpointPath: cp})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sess.Close(context.Background()) })
	return sess
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }

// BenchmarkGroundLoad is the bounded loopback load benchmark: requests
// for the test model (groundtest, the demo's architecture at 16 pixels)
// through a direct plugin call, then through the bus (Postgres, NATS)
// with batching off (MaxBatch 1) and on, at concurrency 1, 8 and 32. It
// prints p50/p99 latency and requests/s per cell, and the overhead of the
// bus path over the direct call at concurrency 1. It runs the whole matrix
// once, whatever b.N:
//
//	go test ./services/ground -run '^$' -bench GroundLoad -benchtime 1x
//
// GROUND_LOAD_POLL sets the Postgres bus's poll interval (default the
// bus's own, 250ms); GROUND_LOAD_SCALE multiplies the requests per cell
// (default 1), for profiling a cell long enough to sample.
func BenchmarkGroundLoad(b *testing.B) {
	scale := 1
	if v := os.Getenv("GROUND_LOAD_SCALE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("GROUND_LOAD_SCALE=%q: want a positive integer", v)
		}
		scale = n
	}
	poll := 250 * time.Millisecond
	if v := os.Getenv("GROUND_LOAD_POLL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("GROUND_LOAD_POLL: %v", err)
		}
		poll = d
	}
	host := pluginHost(b)
	img := scene(b, 64, 64, 20, 12, color.RGBA{220, 40, 40, 255})
	req := events.GroundRequested{Image: img, Expression: "the red square"}
	concurrency := []int{1, 8, 32}
	requests := func(c int) int { return max(24, 4*c) * scale }
	fmt.Printf("%-34s %5s %9s %9s %9s %6s\n", "path", "conc", "p50 ms", "p99 ms", "req/s", "failed")
	row := func(path string, c int, st loadStats) {
		fmt.Printf("%-34s %5d %9s %9s %9.1f %6d\n", path, c, ms(st.p50), ms(st.p99), st.rps, st.failed)
	}

	// The direct plugin call: one Generate per request, no bus, no batching.
	sess := openTestModel(b, host)
	decoded, _, err := infer.DecodeImage(img, infer.ImageLimits{})
	if err != nil {
		b.Fatal(err)
	}
	prompt, _ := infer.RECPrompt(req.Expression)
	opts := infer.Decoding{}.Options(infer.Ground, 0)
	direct := map[int]loadStats{}
	for _, c := range concurrency {
		direct[c] = runLoad(c, requests(c), func(ctx context.Context) error {
			_, err := sess.Generator.Generate(ctx, []model.Prompt{{Text: prompt, Images: []image.Image{decoded}}}, opts)
			return err
		})
		row("direct plugin call", c, direct[c])
	}

	for _, kind := range []string{bus.KindPostgres, bus.KindNATS} {
		for _, batching := range []bool{false, true} {
			cfg := BatchConfig{MaxBatch: 1}
			name := kind + " bus, batching off"
			if batching {
				cfg = BatchConfig{MaxBatch: 32}
				name = kind + " bus, batching on"
			}
			// A sub-benchmark, so that the cell's consumers stop before the
			// next cell's start: on NATS they would all read every request.
			b.Run(strings.ReplaceAll(name, " ", "_"), func(b *testing.B) {
				if kind == bus.KindNATS {
					// A new consumer group on NATS reads what the streams
					// still hold: start each cell empty.
					testutil.PurgeNATS(b, events.TopicGroundRequested, events.TopicGroundCompleted, events.TopicGroundFailed)
				}
				f := newBusFixture(b, kind, host, cfg, poll, nil)
				var first loadStats
				for _, c := range concurrency {
					st := runLoad(c, requests(c), func(ctx context.Context) error {
						_, err := f.client.Ground(ctx, req)
						return err
					})
					row(name, c, st)
					if c == 1 {
						first = st
					}
				}
				fmt.Printf("%-34s       overhead over the direct call at concurrency 1: p50 %s ms (%d plugin calls in all)\n", "", ms(first.p50-direct[1].p50), f.svc.GenerateCalls())
			})
		}
	}
	fmt.Printf("(Postgres bus poll interval %s)\n", poll)
}

// BenchmarkGroundGenerate times the model alone, in process (no plugin
// process, no bus): one Generate of the test model for 1 and for 32
// grounding prompts, with the box from the head alone (the default) and
// with attention maps asked for (which runs the language model):
//
//	go test ./services/ground -run '^$' -bench GroundGenerate
func BenchmarkGroundGenerate(b *testing.B) {
	be, err := gomlx.New(gomlx.Config{Options: "parallelism=-1"})
	if err != nil {
		b.Fatal(err)
	}
	sess := openTestModel(b, be)
	img, _, err := infer.DecodeImage(scene(b, 64, 64, 20, 12, color.RGBA{220, 40, 40, 255}), infer.ImageLimits{})
	if err != nil {
		b.Fatal(err)
	}
	prompt, _ := infer.RECPrompt("the red square")
	for _, attention := range []bool{false, true} {
		opts := infer.Decoding{Attention: attention}.Options(infer.Ground, 0)
		for _, n := range []int{1, 32} {
			ps := make([]model.Prompt, n)
			for i := range ps {
				ps[i] = model.Prompt{Text: prompt, Images: []image.Image{img}}
			}
			name := fmt.Sprintf("head-only/b%d", n)
			if attention {
				name = fmt.Sprintf("attention/b%d", n)
			}
			b.Run(name, func(b *testing.B) {
				for b.Loop() {
					if _, err := sess.Generator.Generate(context.Background(), ps, opts); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N*n), "ms/answer")
			})
		}
	}
}
