// Command synth benchmarks services/synth: it synthesizes a set from the
// built-in scene world and prints samples, seconds, samples/s, MB/s and the
// peak resident set size (VmHWM).
//
// The world is the built-in scene world (services/ingest/scenes, read back by
// services/ingest/readers), drawn once under -world and cached as JSON, so
// that the timed part is synthesis alone. Wall time on a shared machine
// depends on its load: the table prints user and system CPU seconds and the
// load average beside it.
//
//	go run ./bench/synth -samples 300000
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
	"github.com/groundmesh/groundmesh/services/ingest/scenes"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

func main() {
	var (
		samples = flag.Int("samples", 300000, "target samples")
		kind    = flag.String("world-kind", "scenes", "scenes: the built-in world (services/ingest/scenes, read by services/ingest/readers); synthtest: services/synth/synthtest")
		images  = flag.Int("images", 5000, "scene world images (60 samples per image at 300k)")
		size    = flag.Int("size", 64, "scene image side in pixels")
		seed    = flag.Int64("seed", 1, "synthesis seed")
		world   = flag.String("world", filepath.Join(os.TempDir(), "groundmesh-bench-world"), "scene world directory (generated once, then reused)")
		out     = flag.String("out", "", "blob store directory (default: a fresh temp dir, removed afterwards)")
		workers = flag.Int("workers", 0, "generator workers (default GOMAXPROCS)")
		verbose = flag.Bool("v", false, "log progress")
		cpuProf = flag.String("cpuprofile", "", "write a CPU profile to this file")
	)
	flag.Parse()
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench synth:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench synth:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*kind, *samples, *images, *size, *seed, *world, *out, *workers, *verbose); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench synth:", err)
		os.Exit(1)
	}
}

func run(kind string, samples, images, size int, seed int64, worldDir, out string, workers int, verbose bool) error {
	ds, gen, err := loadWorld(kind, filepath.Join(worldDir, fmt.Sprintf("%s-%d-%d", kind, images, size)), images, size)
	if err != nil {
		return err
	}
	if out == "" {
		d, err := os.MkdirTemp("", "groundmesh-bench-synth-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		out = d
	}
	b, err := blob.NewLocal(out)
	if err != nil {
		return err
	}
	logger := slog.New(slog.DiscardHandler)
	if verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	m, err := synth.Build(context.Background(), ds, synth.BuildOptions{DatasetID: "bench-" + kind, Seed: seed, Samples: samples, Workers: workers, Logger: logger}, b, "bench/set", nil)
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	user := time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano()).Seconds()
	sys := time.Duration(ru1.Stime.Nano() - ru0.Stime.Nano()).Seconds()
	var shardBytes int64
	for _, s := range m.Shards {
		shardBytes += s.Bytes
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "world\timages\tsamples\tseconds\tsamples/s\tJSONL MB/s\tgzip MB/s\tcrops\tpeak RSS MiB\tuser s\tsys s\tcores\tload\t")
	fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%.0f\t%.1f\t%.1f\t%d\t%.0f\t%.1f\t%.1f\t%d\t%s\t\n", gen, len(ds.Images), m.Total, secs,
		float64(m.Total)/secs, float64(m.RawBytes)/1e6/secs, float64(shardBytes)/1e6/secs, m.Crops.Unique, peakRSSMiB(),
		user, sys, runtime.GOMAXPROCS(0), loadAvg())
	tw.Flush()
	fmt.Printf("content hash %s; quality: duplicates %d, leaks %d, unfilled %d; shards %d (%.1f MB gzip, %.1f MB JSONL)\n",
		m.ContentHash, m.Quality.Duplicates, m.Quality.Leaks, m.Quality.Unfilled, len(m.Shards), float64(shardBytes)/1e6, float64(m.RawBytes)/1e6)
	if verbose {
		fmt.Printf("drops: %v\n", m.Quality.Drops)
	}
	return nil
}

// loadWorld draws the world once and caches its dataset as JSON, so that
// timed runs include neither drawing nor annotation parsing.
func loadWorld(kind, dir string, images, size int) (*dataset.Dataset, string, error) {
	cache := dir + ".dataset.json"
	if data, err := os.ReadFile(cache); err == nil {
		var ds dataset.Dataset
		if err := json.Unmarshal(data, &ds); err != nil {
			return nil, "", fmt.Errorf("read cached world %s: %w", cache, err)
		}
		ds.Root = dir
		return &ds, kind + " (cached)", nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, "", err
	}
	var ds *dataset.Dataset
	switch kind {
	case "scenes":
		ctx := context.Background()
		if _, err := scenes.Generate(ctx, dir, scenes.Spec{Seed: 1, Images: images, Size: size}, nil); err != nil {
			return nil, "", err
		}
		res, err := readers.Read(ctx, readers.FormatScenes, dir, readers.Options{})
		if err != nil {
			return nil, "", err
		}
		ds = res.Dataset
	case "synthtest":
		var err error
		if ds, err = synthtest.World(dir, synthtest.Options{Seed: 1, Images: images, Size: size}); err != nil {
			return nil, "", err
		}
	default:
		return nil, "", fmt.Errorf("world kind %q: want scenes or synthtest", kind)
	}
	data, err := json.Marshal(ds)
	if err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(cache, data, 0o644); err != nil {
		return nil, "", err
	}
	return ds, kind + " (drawn)", nil
}

// loadAvg returns the 1-minute load average: on a shared machine, wall time
// means little without it.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func peakRSSMiB() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(rest), "%f", &kb)
			return kb / 1024
		}
	}
	return -1
}
