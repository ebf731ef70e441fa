package gomlx

import (
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// TestBatchRefsGroupByLength: over an epoch, length-grouped batches visit
// every sample exactly once, are a function of their position (a resumed
// run sees the same), and pad far less than batches of consecutive
// positions.
func TestBatchRefsGroupByLength(t *testing.T) {
	const bs, n = 16, 16 * groupBatches * 5
	rng := rand.New(rand.NewPCG(1, 1))
	d := &dataset{seed: 7, permEpoch: -1}
	for i := range n {
		l := 60 + rng.IntN(20) // one-image records
		if rng.IntN(3) == 0 {
			l = 180 + rng.IntN(10) // four-image ones
		}
		d.samples = append(d.samples, sampleRef{shard: 0, row: i, n: l})
	}
	seen := map[int]int{}
	var grouped, plain int // summed padded lengths (the batch's longest row, per row)
	for pos := int64(0); pos < n; pos += bs {
		refs := d.batchRefs(pos, bs)
		longest := 0
		for _, r := range refs {
			seen[r.row]++
			longest = max(longest, r.n)
		}
		grouped += longest * bs
		longest = 0
		for i := range bs {
			longest = max(longest, d.at(pos+int64(i)).n)
		}
		plain += longest * bs
	}
	if len(seen) != n {
		t.Fatalf("an epoch visited %d distinct samples of %d", len(seen), n)
	}
	for row, k := range seen {
		if k != 1 {
			t.Fatalf("sample %d visited %d times in an epoch", row, k)
		}
	}
	if !(grouped < plain*3/4) {
		t.Fatalf("padded positions: grouped %d, consecutive %d: want at least a quarter fewer", grouped, plain)
	}
	// A fresh dataset (a resumed run) gives the same batch at a position.
	again := &dataset{seed: 7, permEpoch: -1, samples: d.samples}
	for _, pos := range []int64{bs * 37, 0, bs * 3} {
		a, b := d.batchRefs(pos, bs), again.batchRefs(pos, bs)
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("position %d: batch differs on a fresh dataset", pos)
			}
		}
	}
	// Another batch size at a position that is not its multiple: the
	// positions in order.
	refs := d.batchRefs(5, 4)
	for i, r := range refs {
		if r != d.at(5+int64(i)) {
			t.Fatalf("unaligned position: sample %d is not position %d's", i, 5+i)
		}
	}
}

// TestPrefetchMatchesBatchAt: the prefetched batches are batchAt's at
// consecutive positions from the start position, across an epoch's end,
// and close returns while the goroutine is blocked on a batch no one
// reads.
func TestPrefetchMatchesBatchAt(t *testing.T) {
	c := grounderConfig(32)
	path := filepath.Join(t.TempDir(), "s.safetensors")
	grounderShard(t, c, 100, 1, path)
	open := func() *dataset {
		d, err := newDataset([]string{path}, c, 3)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	const bs = 8
	start := int64(bs * 5)
	p := open().prefetch(start, bs)
	want := open()
	for i := range 20 { // 160 samples: past the first epoch's 100
		got, exp := p.next(), want.batchAt(start+int64(i*bs), bs)
		if !reflect.DeepEqual(got, exp) {
			t.Fatalf("batch %d (position %d) differs from batchAt's", i, start+int64(i*bs))
		}
	}
	done := make(chan struct{})
	go func() { p.close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("close did not return")
	}
}
