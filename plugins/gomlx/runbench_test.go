package gomlx

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// BenchmarkRunStage1 times stage 1's training steps (the grounder
// objective, batch 64) on a real run's model config and stage-1 shards,
// batches read as training reads them, on every engine this binary has:
// the demo's own text lengths and labels, which BenchmarkEngines'
// synthetic rows do not have. GROUNDMESH_BENCH_RUN_DATA is the run's data
// directory (DATA_DIR/train/runs/RUN/data after a demo, holding
// data.json); without it the benchmark skips. GROUNDMESH_BENCH_THREADS
// sets libtorch's threads (default the plugin's, 1);
// GROUNDMESH_BENCH_TEXT_GRU=0 trains the config with the transformer
// block sentence vector instead of the GRU; GROUNDMESH_BENCH_PREFETCH=0
// builds each batch in the loop instead of one ahead (batchPrefetch).
func BenchmarkRunStage1(b *testing.B) {
	dir := os.Getenv("GROUNDMESH_BENCH_RUN_DATA")
	if dir == "" {
		b.Skip("GROUNDMESH_BENCH_RUN_DATA (a run's data directory) is not set")
	}
	raw, err := os.ReadFile(filepath.Join(dir, "data.json"))
	if err != nil {
		b.Fatal(err)
	}
	var dm struct {
		ModelConfig json.RawMessage     `json:"model_config"`
		Shards      map[string][]string `json:"shards"`
	}
	if err := json.Unmarshal(raw, &dm); err != nil {
		b.Fatalf("%s/data.json: %v", dir, err)
	}
	var c model.Config
	if err := json.Unmarshal(dm.ModelConfig, &c); err != nil {
		b.Fatal(err)
	}
	if os.Getenv("GROUNDMESH_BENCH_TEXT_GRU") == "0" {
		c.GrounderTextGRU = false
	}
	threads := 0
	if s := os.Getenv("GROUNDMESH_BENCH_THREADS"); s != "" {
		if threads, err = strconv.Atoi(s); err != nil {
			b.Fatalf("GROUNDMESH_BENCH_THREADS: %v", err)
		}
	}
	ds, err := newDataset(dm.Shards["stage1"], c, 1)
	if err != nil {
		b.Fatal(err)
	}
	for _, eng := range Engines() {
		b.Run(fmt.Sprintf("%s/threads=%d", eng, threads), func(b *testing.B) {
			be, err := New(Config{Options: benchOptions(), Engine: eng, Threads: threads})
			if err != nil {
				b.Fatal(err)
			}
			tr := benchStepper(b, be, c, compute.ObjectiveGrounder)
			defer tr.close()
			// The batches as the training loop gets them: built one ahead
			// in a goroutine (GROUNDMESH_BENCH_PREFETCH=0: in the loop).
			var next func() trainBatch
			if os.Getenv("GROUNDMESH_BENCH_PREFETCH") == "0" {
				var pos int64
				next = func() trainBatch { pos += 64; return ds.batchAt(pos-64, 64) }
			} else {
				p := ds.prefetch(0, 64)
				defer p.close()
				next = p.next
			}
			step := func(i int) {
				if _, err := tr.step(1e-3, float32(i), float32(i), 0, next()); err != nil {
					b.Fatal(err)
				}
			}
			for i := range 3 { // warm-up: compile, allocate
				step(i + 1)
			}
			b.ResetTimer()
			for i := range b.N {
				step(i + 4)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "steps/s")
		})
	}
}
