// Command ingest benchmarks services/ingest on a COCO-shaped annotation file
// the size of COCO train2017 (118,287 images, 860,001 boxes, 80 categories,
// polygon segmentations; about 450 MB like the real file): it writes the
// file once (cached under -dir), runs the ingest pipeline on it — stream the
// JSON, validate every record, hash the file, build the manifest — and
// prints a table: records, seconds, records/s, peak RSS (VmHWM).
//
// The file has no image files, so the run uses SkipImageFiles (sizes from
// the annotations); Postgres is not involved (ingest.DryRun: recording a
// version adds one file row and the reject rows). One box in a thousand is
// deliberately bad, so the reject path runs too.
//
//	go run ./bench/ingest                       # full size
//	go run ./bench/ingest -images 11829 -boxes 86000
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/services/ingest"
)

func main() {
	images := flag.Int("images", 118287, "images in the generated file")
	boxes := flag.Int("boxes", 860001, "boxes (annotations) in the generated file")
	points := flag.Int("points", 24, "polygon points per segmentation")
	dir := flag.String("dir", filepath.Join(os.TempDir(), "groundmesh-bench-ingest"), "where the generated file is cached")
	maxSeconds := flag.Float64("max-seconds", 30, "fail when the ingest takes longer")
	maxRSS := flag.Float64("max-rss-gib", 1.5, "fail when peak RSS exceeds this")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the ingest to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench/ingest:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench/ingest:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*images, *boxes, *points, *dir, *maxSeconds, *maxRSS); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench/ingest:", err)
		os.Exit(1)
	}
}

func run(images, boxes, points int, dir string, maxSeconds, maxRSS float64) error {
	path := filepath.Join(dir, fmt.Sprintf("c%d-%d-%d", images, boxes, points), "annotations", "instances_train2017.json")
	genStart := time.Now()
	size, generated, err := ensureFile(path, images, boxes, points)
	if err != nil {
		return err
	}
	if generated {
		fmt.Printf("generated %s (%.0f MB) in %.1f s\n", path, float64(size)/1e6, time.Since(genStart).Seconds())
	}
	rssBefore := vmHWM()
	cpuBefore := cpuSeconds()
	start := time.Now()
	res, err := Ingest(context.Background(), path, dir)
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	cpu := cpuSeconds() - cpuBefore
	rss := vmHWM()
	records := res.Records
	fmt.Printf("\n%-44s %10s %9s %9s %12s %10s %12s\n", "benchmark", "records", "seconds", "cpu s", "records/s", "MB/s", "peak RSS")
	fmt.Printf("%-44s %10d %9.2f %9.2f %12.0f %10.1f %9.0f MiB\n",
		fmt.Sprintf("coco %d images / %d boxes (%.0f MB)", images, boxes, float64(size)/1e6),
		records, secs, cpu, float64(records)/secs, float64(size)/1e6/secs, float64(rss)/(1<<20))
	fmt.Printf("\nkept: %d images, %d objects; rejected %d (%.3f%%); version %s\n",
		res.Dataset.Counts["images"], res.Dataset.Counts["objects"], len(res.Rejected), 100*res.BadFraction, res.Dataset.Version[:16])
	fmt.Printf("peak RSS before the ingest (file generation): %.0f MiB; GOMAXPROCS %d; %s\n",
		float64(rssBefore)/(1<<20), runtime.GOMAXPROCS(0), loadavg())
	var fails []string
	if secs > maxSeconds {
		fails = append(fails, fmt.Sprintf("%.1f s > %.0f s", secs, maxSeconds))
	}
	if float64(rss)/(1<<30) > maxRSS {
		fails = append(fails, fmt.Sprintf("peak RSS %.2f GiB > %.2f GiB", float64(rss)/(1<<30), maxRSS))
	}
	if len(fails) > 0 {
		return fmt.Errorf("over budget: %s", strings.Join(fails, ", "))
	}
	return nil
}

// Ingest runs the pipeline on one COCO annotation file, annotations only.
func Ingest(ctx context.Context, path, dataDir string) (ingest.DryRunResult, error) {
	return ingest.DryRun(ctx, ingest.Config{DataDir: dataDir, SkipImageFiles: true},
		events.IngestRequested{Format: "coco", Path: path, Name: "bench"}, nil)
}

// ensureFile writes the COCO-shaped file unless a complete one is cached.
func ensureFile(path string, images, boxes, points int) (int64, bool, error) {
	if st, err := os.Stat(path); err == nil {
		return st.Size(), false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return 0, false, err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return 0, false, err
	}
	w := bufio.NewWriterSize(f, 4<<20)
	writeCOCO(w, images, boxes, points)
	if err := w.Flush(); err != nil {
		f.Close()
		return 0, false, err
	}
	if err := f.Close(); err != nil {
		return 0, false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, false, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return 0, false, err
	}
	return st.Size(), true, nil
}

// writeCOCO streams a deterministic COCO instances document.
func writeCOCO(w *bufio.Writer, images, boxes, points int) {
	rng := rand.New(rand.NewPCG(2017, 118287))
	var b []byte
	flush := func() { w.Write(b); b = b[:0] }
	num := func(x float64) { b = strconv.AppendFloat(b, x, 'f', 2, 64) }
	b = append(b, `{"info": {"description": "COCO-shaped benchmark data", "url": "http://cocodataset.org", "version": "1.0", "year": 2017, "contributor": "groundmesh bench", "date_created": "2017/09/01"}, "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "Attribution-NonCommercial-ShareAlike License"}], "images": [`...)
	ws, hs := make([]int, images), make([]int, images)
	for i := 0; i < images; i++ {
		ws[i], hs[i] = 480+rng.IntN(161), 360+rng.IntN(161)
		if i > 0 {
			b = append(b, ", "...)
		}
		id := i + 1
		b = fmt.Appendf(b, `{"license": %d, "file_name": "%012d.jpg", "coco_url": "http://images.cocodataset.org/train2017/%012d.jpg", "height": %d, "width": %d, "date_captured": "2013-11-14 16:28:13", "flickr_url": "http://farm4.staticflickr.com/3153/2970773875_164f0c0b83_z.jpg", "id": %d}`,
			1+rng.IntN(8), id, id, hs[i], ws[i], id)
		if len(b) > 1<<20 {
			flush()
		}
	}
	b = append(b, `], "annotations": [`...)
	for k := 0; k < boxes; k++ {
		img := rng.IntN(images)
		W, H := float64(ws[img]), float64(hs[img])
		bw, bh := 2+rng.Float64()*(W/2), 2+rng.Float64()*(H/2)
		x, y := rng.Float64()*(W-bw), rng.Float64()*(H-bh)
		if k%1000 == 999 {
			x = W + 5 // one in a thousand lies outside its image
		}
		if k > 0 {
			b = append(b, ", "...)
		}
		b = append(b, `{"segmentation": [[`...)
		for p := 0; p < points; p++ {
			if p > 0 {
				b = append(b, ", "...)
			}
			num(x + rng.Float64()*bw)
			b = append(b, ", "...)
			num(y + rng.Float64()*bh)
		}
		b = append(b, `]], "area": `...)
		num(bw * bh * 0.6)
		b = fmt.Appendf(b, `, "iscrowd": 0, "image_id": %d, "bbox": [`, img+1)
		num(x)
		b = append(b, ", "...)
		num(y)
		b = append(b, ", "...)
		num(bw)
		b = append(b, ", "...)
		num(bh)
		b = fmt.Appendf(b, `], "category_id": %d, "id": %d}`, 1+rng.IntN(80), 100000+k)
		if len(b) > 1<<20 {
			flush()
		}
	}
	b = append(b, `], "categories": [`...)
	for c := 1; c <= 80; c++ {
		if c > 1 {
			b = append(b, ", "...)
		}
		b = fmt.Appendf(b, `{"supercategory": "thing", "id": %d, "name": "category %d"}`, c, c)
	}
	b = append(b, "]}\n"...)
	flush()
}

// cpuSeconds is the user plus system CPU time of this process so far: on a
// shared machine it tells the work done apart from the time waited.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// vmHWM is the process's peak resident set size in bytes (/proc/self/status).
func vmHWM() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return "load average " + strings.Join(f[:3], " ")
}
