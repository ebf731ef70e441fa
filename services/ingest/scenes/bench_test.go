package scenes

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
)

// BenchmarkGenerate writes a 1000-image world per iteration and reports
// images per second of wall time and CPU milliseconds per image (render,
// PNG encode, write, annotations): on a shared machine the second tells the
// work apart from the waiting.
func BenchmarkGenerate(b *testing.B) {
	const n = 1000
	cpu0 := cpuSeconds()
	for i := 0; i < b.N; i++ {
		dir := filepath.Join(b.TempDir(), "w")
		if _, err := Generate(context.Background(), dir, Spec{Seed: int64(i), Images: n}, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "images/s")
	b.ReportMetric(1000*(cpuSeconds()-cpu0)/float64(n*b.N), "cpu-ms/image")
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}
