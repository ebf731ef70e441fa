package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestGeneratedFileIngests checks the generator and the pipeline on a small
// file: every image kept, exactly the planted bad boxes rejected.
func TestGeneratedFileIngests(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "annotations", "instances_train2017.json")
	if _, _, err := ensureFile(path, 100, 3000, 4); err != nil {
		t.Fatal(err)
	}
	res, err := Ingest(context.Background(), path, dir)
	if err != nil {
		t.Fatal(err)
	}
	if res.Dataset.Counts["images"] != 100 || res.Dataset.Counts["objects"] != 2997 || len(res.Rejected) != 3 {
		t.Fatalf("counts %v, rejected %v", res.Dataset.Counts, res.Rejected)
	}
	if res.Records != 3100 {
		t.Fatalf("records %d", res.Records)
	}
}

// BenchmarkIngestCOCO runs the pipeline on a tenth of COCO train2017
// (11,829 images, 86,000 boxes); the full size is `go run ./bench/ingest`.
func BenchmarkIngestCOCO(b *testing.B) {
	dir := filepath.Join(os.TempDir(), "groundmesh-bench-ingest")
	path := filepath.Join(dir, "c11829-86000-24", "annotations", "instances_train2017.json")
	size, _, err := ensureFile(path, 11829, 86000, 24)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ResetTimer()
	var records int64
	for i := 0; i < b.N; i++ {
		res, err := Ingest(context.Background(), path, dir)
		if err != nil {
			b.Fatal(err)
		}
		records += res.Records
	}
	b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(vmHWM())/(1<<20), "peakRSS-MiB")
}
