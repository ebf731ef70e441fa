package synth

import (
	"context"
	"fmt"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/model"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	ds, err := synthtest.World(dir+"/world", synthtest.Options{Seed: 1, Images: 200})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := blob.NewLocal(dir + "/blob")
	m, err := Build(context.Background(), ds, BuildOptions{Seed: 7, Samples: 4000}, b, "sets/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	err = ReadRecords(context.Background(), b, m, nil, func(r *model.Record) error {
		k := r.Task + r.Direction
		if seen[k] < 1 {
			fmt.Printf("%+v\n\n", *r)
		}
		seen[k]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(m.Total, m.Counts.Task, m.Quality, m.Crops, m.Counts.SizeBin, m.Counts.Scale, m.Counts.PopeSplit, m.Counts.PopeAnswer)
}
