package synth

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

func TestLeakDebug(t *testing.T) {
	data, err := os.ReadFile("/tmp/groundmesh-bench-world/scenes-5000-64.dataset.json")
	if err != nil {
		t.Skip()
	}
	var ds dataset.Dataset
	json.Unmarshal(data, &ds)
	ds.Images = ds.Images[:300]
	b := &builder{opts: BuildOptions{Seed: 1}, ds: &ds}
	b.opts.normalize()
	b.ix = buildIndex(&ds, 4)
	b.answers, _ = compileAll(answerTemplates)
	b.prompts, _ = compileAll(promptTemplates)
	b.quota = map[string][]int32{}
	b.tasks = []string{TaskConversation}
	b.quota[TaskConversation] = make([]int32, len(b.ix.images))
	w := newWorker(b)
	n := 0
	for _, ii := range b.ix.images {
		w.ii = ii
		w.out = &batch{}
		for j := 0; j < 10; j++ {
			w.group = w.group[:0]
			w.genConversation(j, newRNG(uint64(j)))
			for _, g := range w.group {
				if leaks(&g.rec, g.leaks, g.leakTurn) && n < 5 {
					n++
					fmt.Printf("%q\n%q\n\n", g.rec.Conversations, g.leaks)
				}
			}
		}
	}
	_ = context.Background
}
