package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/stack"
	"github.com/groundmesh/groundmesh/services/ingest"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
)

// offline opens the data side of the stack (Postgres, blobs, services)
// without Temporal or the bus, for CLI verbs.
func offline(ctx context.Context, e env, dataDir string, verbose bool) (*stack.Stack, func(), error) {
	var w io.Writer = io.Discard
	if verbose {
		w = os.Stderr
	}
	logger, done, err := setup(ctx, e, dataDir, verbose, w)
	if err != nil {
		return nil, nil, err
	}
	s, err := stack.Start(ctx, stack.Config{DataDir: dataDir, BlobURL: e.BlobURL, DatabaseURL: e.DatabaseURL, Offline: true, HTTPAddr: "off", PluginDir: e.PluginDir, Logger: logger})
	if err != nil {
		done()
		return nil, nil, err
	}
	return s, func() { closeStack(s); done() }, nil
}

// bar is a CLI progress bar fed by (done, total, msg) callbacks.
func bar(desc string) func(done, total int64, msg string) {
	var pb *progressbar.ProgressBar
	var lastTotal int64 = -1
	var lastMsg string
	return func(done, total int64, msg string) {
		if pb == nil || total != lastTotal || (msg != "" && msg != lastMsg) {
			if pb != nil {
				_ = pb.Finish()
				fmt.Fprintln(os.Stderr)
			}
			d := desc
			if msg != "" {
				d = desc + ": " + msg
			}
			pb = progressbar.NewOptions64(max(total, 1), progressbar.OptionSetDescription(d),
				progressbar.OptionSetWriter(os.Stderr), progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionSetWidth(30))
			lastTotal, lastMsg = total, msg
		}
		_ = pb.Set64(done)
	}
}

func cmdScenes(ctx context.Context, e env, args []string) error {
	if len(args) == 0 || args[0] != "generate" {
		fmt.Fprintln(os.Stderr, "usage: groundmesh scenes generate --out DIR [--seed N] [--images N] [--size PX]")
		return errUsage
	}
	fs := flag.NewFlagSet("scenes generate", flag.ContinueOnError)
	out := fs.String("out", filepath.Join(e.DataDir, "scenes", "cli"), "output directory")
	seed := fs.Int64("seed", 1, "generator seed")
	images := fs.Int("images", 6000, "images over all splits")
	size := fs.Int("size", 64, "image side in pixels")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	p := bar("scenes")
	err := ingest.GenerateScenes(ctx, *out, events.ScenesSpec{Seed: *seed, Images: *images, Size: *size}, func(d, t int64) { p(d, t, "") })
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "\nwrote the scene world to %s\n", *out)
	return nil
}

func cmdIngest(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("ingest", flag.ContinueOnError)
	format := fs.String("format", "", strings.Join(readers.Formats, ", "))
	name := fs.String("name", "", "dataset name (default: the folder name; for a file, its folder's)")
	maxBad := fs.Float64("max-bad", 0.05, "fail when more than this fraction of records is rejected")
	listRejects := fs.Bool("rejects", false, "list every rejected record (file:line, kind, id, reason) after the summary")
	dataDir := fs.String("data-dir", e.DataDir, "data directory")
	verbose := fs.Bool("v", false, "log to stderr")
	path, rest := splitPositional(args)
	if err := fs.Parse(rest); err != nil {
		return errUsage
	}
	if path == "" && fs.NArg() > 0 {
		path = fs.Arg(0)
	}
	if path == "" || *format == "" {
		fmt.Fprintf(os.Stderr, "usage: groundmesh ingest PATH --format %s [--name NAME] [--max-bad F] [--rejects]\n", strings.Join(readers.Formats, "|"))
		return errUsage
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if *name == "" {
		*name = ingest.DefaultName(abs)
	}
	s, done, err := offline(ctx, e, *dataDir, *verbose)
	if err != nil {
		return err
	}
	defer done()
	res, err := s.Services.Ingest.Ingest(ctx, events.IngestRequested{Format: *format, Path: abs, Name: *name, MaxBadFraction: *maxBad}, bar("ingest"))
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return err
	}
	state := "new version"
	if res.Reused {
		state = "already ingested (no-op)"
	}
	fmt.Printf("dataset %s %s: %s\n  version %s\n  counts %v\n  splits %v\n", res.Name, res.DatasetID, state, res.Version, res.Counts, res.Splits)
	if res.Counts["rejected"] == 0 {
		return nil
	}
	sum, rejects, err := s.Services.Ingest.Rejects(ctx, res.DatasetID)
	if err != nil {
		return err
	}
	fmt.Printf("  rejected %d of %d records (%.2f%%):\n", sum.Rejected, sum.Records, 100*sum.BadFraction)
	reasons := make([]string, 0, len(sum.ByReason))
	for r := range sum.ByReason {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool {
		a, b := sum.ByReason[reasons[i]], sum.ByReason[reasons[j]]
		return a > b || a == b && reasons[i] < reasons[j]
	})
	for _, r := range reasons {
		fmt.Printf("    %7d  %s\n", sum.ByReason[r], r)
	}
	if !*listRejects {
		fmt.Printf("  list them with: groundmesh ingest %s --format %s --rejects\n", path, *format)
		return nil
	}
	for _, rj := range rejects {
		fmt.Printf("  %s\t%s %s\t%s\n", rj.Where(), rj.Kind, rj.ID, rj.Reason)
	}
	return nil
}

func cmdSynth(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("synth", flag.ContinueOnError)
	samples := fs.Int("samples", 24000, "target number of samples")
	seed := fs.Int64("seed", 1, "seed")
	rewrite := fs.String("rewrite-url", "", "OpenAI-compatible endpoint to paraphrase prompts (optional)")
	weights := fs.String("task-weights", "", "task=weight,... splitting each stage between its tasks, e.g. rec=3,box_pick=0.5 (others keep their default)")
	mirror := fs.Float64("mirror", 0, "fraction of training REC and POPE records asked about their image mirrored left to right")
	dataDir := fs.String("data-dir", e.DataDir, "data directory")
	verbose := fs.Bool("v", false, "log to stderr")
	id, rest := splitPositional(args)
	if err := fs.Parse(rest); err != nil {
		return errUsage
	}
	if id == "" {
		fmt.Fprintln(os.Stderr, "usage: groundmesh synth DATASET_ID [--samples N] [--seed N] [--rewrite-url URL] [--task-weights task=w,...] [--mirror F]")
		return errUsage
	}
	tw, err := parseTaskWeights(*weights)
	if err != nil {
		return err
	}
	s, done, err := offline(ctx, e, *dataDir, *verbose)
	if err != nil {
		return err
	}
	defer done()
	res, err := s.Services.Synth.Synthesize(ctx, events.SynthRequested{DatasetID: id, Seed: *seed, Samples: *samples, RewriteURL: *rewrite, TaskWeights: tw, Mirror: *mirror}, bar("synth"))
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return err
	}
	fmt.Printf("synth set %s (reused %v)\n  content hash %s\n  manifest %s\n", res.SynthSetID, res.Reused, res.ContentHash, res.ManifestKey)
	return nil
}

func cmdExport(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	format := fs.String("format", "gguf", "deployment format: gguf or onnx")
	dtype := fs.String("dtype", "float32", "weights: float32, float16, q8_0 or q4_0 (gguf); float32 or float16 (onnx)")
	out := fs.String("out", "", "also copy the file here")
	dataDir := fs.String("data-dir", e.DataDir, "data directory")
	verbose := fs.Bool("v", false, "log to stderr")
	id, rest := splitPositional(args)
	if err := fs.Parse(rest); err != nil {
		return errUsage
	}
	if id == "" {
		fmt.Fprintln(os.Stderr, "usage: groundmesh export CHECKPOINT_ID [--format gguf|onnx] [--dtype float32|float16|q8_0|q4_0] [--out FILE]")
		return errUsage
	}
	s, done, err := offline(ctx, e, *dataDir, *verbose)
	if err != nil {
		return err
	}
	defer done()
	x, err := s.Services.Train.Export(ctx, events.ExportRequested{CheckpointID: id, Format: *format, Dtype: *dtype})
	if err != nil {
		return err
	}
	fmt.Printf("export %s: checkpoint %s (run %s) as %s %s\n  %d bytes, sha256 %s\n  blob %s (reused %v)\n",
		x.ExportID, x.CheckpointID, x.RunID, x.Format, x.Dtype, x.Bytes, x.SHA256, x.BlobKey, x.Reused)
	if *out == "" {
		return nil
	}
	src, err := s.Blob.Open(x.BlobKey)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.Create(*out)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	fmt.Printf("  copied to %s\n", *out)
	return nil
}

// parseTaskWeights reads "task=weight,..." (empty: nil). Task names and
// negative weights are checked by services/synth, which knows the tasks.
func parseTaskWeights(s string) (map[string]float64, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]float64{}
	for _, part := range strings.Split(s, ",") {
		task, w, ok := strings.Cut(strings.TrimSpace(part), "=")
		v, err := strconv.ParseFloat(strings.TrimSpace(w), 64)
		if !ok || task == "" || err != nil {
			return nil, fmt.Errorf("--task-weights: %q: want task=weight", part)
		}
		if _, dup := out[task]; dup {
			return nil, fmt.Errorf("--task-weights: task %q given twice", task)
		}
		out[task] = v
	}
	return out, nil
}

func cmdReport(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	out := fs.String("out", "", "output HTML file (default: the blob store's reports/)")
	dataDir := fs.String("data-dir", e.DataDir, "data directory")
	run, rest := splitPositional(args)
	if err := fs.Parse(rest); err != nil {
		return errUsage
	}
	if run == "" {
		fmt.Fprintln(os.Stderr, "usage: groundmesh report RUN_ID [--out FILE]")
		return errUsage
	}
	s, done, err := offline(ctx, e, *dataDir, false)
	if err != nil {
		return err
	}
	defer done()
	if *out == "" {
		*out = s.Services.Eval.ReportPath(run)
	}
	if err := s.Services.Eval.WriteReport(ctx, run, *out); err != nil {
		return err
	}
	fmt.Println(*out)
	return nil
}

func cmdCompare(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	dataDir := fs.String("data-dir", e.DataDir, "data directory")
	var pos []string
	rest := args
	for len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		pos, rest = append(pos, rest[0]), rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return errUsage
	}
	pos = append(pos, fs.Args()...)
	if len(pos) != 2 {
		fmt.Fprintln(os.Stderr, "usage: groundmesh compare RUN_A RUN_B")
		return errUsage
	}
	s, done, err := offline(ctx, e, *dataDir, false)
	if err != nil {
		return err
	}
	defer done()
	t, err := s.Services.Eval.Compare(ctx, pos[0], pos[1])
	if err != nil {
		return err
	}
	return t.Print(os.Stdout)
}

// splitPositional takes a leading positional argument (flags may follow it).
func splitPositional(args []string) (string, []string) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return args[0], args[1:]
	}
	return "", args
}
