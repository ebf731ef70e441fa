// Command export measures a trained model in every deployment form the
// project builds: the final checkpoint of a completed run on the GoMLX and
// libtorch backends (float32, safetensors), its GGUF exports on the ggml
// backend in float32, float16, q8_0 and q4_0, and its ONNX exports on ONNX
// Runtime (the onnx backend) in float32 and float16. For each it prints the
// file size, the load time, the latency of one REC request and of a batch
// of 32, and REC Acc@0.5 on the test split, as one table.
//
//	go run ./bench/export -data-dir .data [-run RUN_ID] [-n 0] [-reps 20]
//
// It opens the data side of the stack (Postgres, blobs, services) like the
// CLI verbs, exports the checkpoint through services/train (recorded in
// model_exports, reused when present) and runs each backend as its plugin
// process from GROUNDMESH_PLUGIN_DIR (default ./bin): build them first
// with make build. A backend whose plugin is missing is skipped.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/internal/stack"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/eval"
	"github.com/groundmesh/groundmesh/services/eval/metrics"
	"github.com/groundmesh/groundmesh/services/synth"
)

type form struct {
	backend, dtype, path string
	bytes                int64
}

type row struct {
	form
	load          time.Duration
	single, batch time.Duration
	acc           float64
	n             int
	err           error
}

func main() {
	dataDir := flag.String("data-dir", ".data", "data directory of a stack that trained a run")
	runID := flag.String("run", "", "the run (default: the most recently completed)")
	limit := flag.Int("n", 0, "REC test records to score (0: all)")
	reps := flag.Int("reps", 20, "single-request repetitions (batch: reps/4)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *dataDir, *runID, *limit, *reps); err != nil {
		fmt.Fprintln(os.Stderr, "bench/export:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dataDir, runID string, limit, reps int) error {
	pluginDir := os.Getenv("GROUNDMESH_PLUGIN_DIR")
	if pluginDir == "" {
		pluginDir, _ = filepath.Abs("bin")
	}
	logger := slog.New(slog.DiscardHandler)
	s, err := stack.Start(ctx, stack.Config{DataDir: dataDir, BlobURL: os.Getenv("GROUNDMESH_BLOB_URL"), DatabaseURL: os.Getenv("DATABASE_URL"), Offline: true, HTTPAddr: "off", PluginDir: pluginDir, Logger: logger})
	if err != nil {
		return err
	}
	defer s.Close(context.WithoutCancel(ctx))
	if runID == "" {
		if err := s.Pool.QueryRow(ctx, `SELECT id::text FROM runs WHERE status = 'completed' ORDER BY updated_at DESC LIMIT 1`).Scan(&runID); err != nil {
			return fmt.Errorf("no completed run in %s: %w", dataDir, err)
		}
	}
	facts, err := s.Services.Train.Describe(ctx, events.TrainDescribeRequested{RunID: runID})
	if err != nil {
		return err
	}
	f := facts.Run
	final := f.Checkpoints[len(f.Checkpoints)-1]
	ckPath, err := s.Blob.LocalPath(final.BlobKey)
	if err != nil {
		return err
	}
	tokPath, err := s.Blob.LocalPath(f.TokenizerKey)
	if err != nil {
		return err
	}
	var forms []form
	st, err := os.Stat(ckPath)
	if err != nil {
		return err
	}
	for _, b := range []string{"gomlx", "libtorch"} {
		forms = append(forms, form{backend: b, dtype: model.DtypeF32, path: ckPath, bytes: st.Size()})
	}
	// Every export: each format in each of its dtypes, on its backend.
	for _, format := range []string{"gguf", "onnx"} {
		for _, dtype := range events.ExportDtypes[format] {
			x, err := s.Services.Train.Export(ctx, events.ExportRequested{CheckpointID: final.ID, Format: format, Dtype: dtype})
			if err != nil {
				return err
			}
			p, err := s.Blob.LocalPath(x.BlobKey)
			if err != nil {
				return err
			}
			forms = append(forms, form{backend: events.ExportBackend(format), dtype: dtype, path: p, bytes: x.Bytes})
		}
	}

	// The REC test records, in a fixed order.
	m, err := synth.OpenManifest(s.Blob, f.ManifestKey)
	if err != nil {
		return err
	}
	var recs []model.Record
	err = synth.ReadRecords(ctx, s.Blob, m, nil, func(r *model.Record) error {
		if r.Split == "test" && eval.BenchmarkOf(*r) == eval.BenchREC {
			recs = append(recs, *r)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	if limit > 0 && len(recs) > limit {
		recs = recs[:limit]
	}
	if len(recs) < 32 {
		return fmt.Errorf("%d REC test records: the batch of 32 needs more", len(recs))
	}
	fmt.Fprintf(os.Stderr, "run %s, checkpoint %s (%s step %d), %d REC test records\n", runID, final.ID, final.Stage, final.Step, len(recs))

	var rows []row
	for _, fm := range forms {
		if !stack.BackendAvailable(pluginDir, fm.backend) {
			rows = append(rows, row{form: fm, err: fmt.Errorf("plugin not built in %s", pluginDir)})
			continue
		}
		fmt.Fprintf(os.Stderr, "%s %s ...\n", fm.backend, fm.dtype)
		rows = append(rows, measure(ctx, s, fm, f, tokPath, recs, reps))
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "backend\tdtype\tfile MB\tload ms\tsingle ms\tbatch-32 ms\tREC Acc@0.5 test\tn\t")
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t-\t-\t-\t%v\t\t\n", r.backend, r.dtype, float64(r.bytes)/1e6, r.err)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.0f\t%.1f\t%.0f\t%.3f\t%d\t\n", r.backend, r.dtype, float64(r.bytes)/1e6,
			ms(r.load), ms(r.single), ms(r.batch), r.acc, r.n)
	}
	return tw.Flush()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func measure(ctx context.Context, s *stack.Stack, fm form, f *events.RunFacts, tokPath string, recs []model.Record, reps int) (out row) {
	out.form = fm
	be, err := s.Services.Backend(fm.backend)
	if err != nil {
		out.err = err
		return out
	}
	dtype := fm.dtype
	if fm.backend != "ggml" && fm.backend != "onnx" {
		dtype = "" // float32, the only one they hold
	}
	t0 := time.Now()
	sess, err := infer.Open(ctx, be, infer.OpenRequest{ModelConfig: f.ModelConfig, TokenizerPath: tokPath, CheckpointPath: fm.path, Dtype: dtype})
	if err != nil {
		out.err = err
		return out
	}
	out.load = time.Since(t0)
	defer sess.Close(context.WithoutCancel(ctx))
	pred := eval.NewGeneratorPredictor(sess.Generator, f.DatasetRoot, s.Blob, eval.GeneratorConfig{Backend: be, Blob: s.Blob, BatchSize: 32})
	// Latency: one request, then a batch of 32, after a warm-up call.
	if _, err := pred.Predict(ctx, recs[:1]); err != nil {
		out.err = err
		return out
	}
	var singles, batches []time.Duration
	for i := range reps {
		t := time.Now()
		if _, err := pred.Predict(ctx, recs[i%len(recs):i%len(recs)+1]); err != nil {
			out.err = err
			return out
		}
		singles = append(singles, time.Since(t))
	}
	for range max(reps/4, 1) {
		t := time.Now()
		if _, err := pred.Predict(ctx, recs[:32]); err != nil {
			out.err = err
			return out
		}
		batches = append(batches, time.Since(t))
	}
	out.single, out.batch = median(singles), median(batches)
	// Accuracy over the test records, in batches of 32.
	var acc metrics.RECAccumulator
	for i := 0; i < len(recs); i += 32 {
		chunk := recs[i:min(i+32, len(recs))]
		ps, err := pred.Predict(ctx, chunk)
		if err != nil {
			out.err = err
			return out
		}
		for j, r := range chunk {
			w, h := r.Images[0].Width, r.Images[0].Height
			a := r.Answer.Boxes[0]
			truth := dataset.Box{X1: a[0], Y1: a[1], X2: a[2], Y2: a[3]}
			var p *dataset.Box
			if b, err := infer.PixelBox(ps[j].Text, ps[j].Box, w, h); err == nil {
				p = &b
			}
			acc.Add(p, truth)
		}
	}
	res := acc.Result()
	out.acc, out.n = res.Acc50, res.N
	return out
}
