package synth_test

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

// BenchmarkBuild synthesizes a set from a 500-image world per iteration and
// reports samples/s and JSONL MB/s (bench/synth runs the 300k-sample case).
//
//	go test ./services/synth -run '^$' -bench Build -benchtime 3x
func BenchmarkBuild(b *testing.B) {
	dir := b.TempDir()
	ds, err := synthtest.World(filepath.Join(dir, "world"), synthtest.Options{Seed: 1, Images: 500, Size: 64})
	if err != nil {
		b.Fatal(err)
	}
	for _, samples := range []int{5000, 20000} {
		b.Run("samples="+strconv.Itoa(samples), func(b *testing.B) {
			var recs, raw int64
			i := 0
			for b.Loop() {
				out, err := blob.NewLocal(filepath.Join(dir, "out", strconv.Itoa(samples), strconv.Itoa(i)))
				if err != nil {
					b.Fatal(err)
				}
				i++
				m, err := synth.Build(context.Background(), ds, synth.BuildOptions{DatasetID: "bench", Seed: 1, Samples: samples}, out, "bench", nil)
				if err != nil {
					b.Fatal(err)
				}
				recs += m.Total
				raw += m.RawBytes
			}
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(recs)/sec, "samples/s")
			b.ReportMetric(float64(raw)/1e6/sec, "MB/s")
		})
	}
}
