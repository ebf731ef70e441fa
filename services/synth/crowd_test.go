package synth_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

// TestCrowdBoxesAreNotSingleObjectTargets: COCO crowd boxes (iscrowd=1,
// kept by ingest) are a group of objects: no REC, box-to-text or crop task
// targets one, no pick task offers one as a candidate, and the flag never
// reaches a description.
func TestCrowdBoxesAreNotSingleObjectTargets(t *testing.T) {
	dir := t.TempDir()
	ds, err := synthtest.World(filepath.Join(dir, "world"), synthtest.Options{Seed: 5, Images: 40, Size: 64})
	if err != nil {
		t.Fatal(err)
	}
	crowd := map[string]bool{}
	for i := range ds.Objects {
		o := &ds.Objects[i]
		if o.Category == "circle" {
			if o.Attributes == nil {
				o.Attributes = map[string]string{}
			}
			o.Attributes["iscrowd"] = "1"
			crowd[o.ID] = true
		}
	}
	if len(crowd) == 0 {
		t.Fatal("no circles in the world")
	}
	b, _ := blob.NewLocal(filepath.Join(dir, "blob"))
	m, err := synth.Build(context.Background(), ds, synth.BuildOptions{DatasetID: "crowd", Samples: 600}, b, "crowd", nil)
	if err != nil {
		t.Fatal(err)
	}
	single := map[string]bool{"rec": true, "reg": true, "crop_name": true, "crop_pick": true, "crop_locate": true, "box_pick": true}
	n := 0
	err = synth.ReadRecords(context.Background(), b, m, nil, func(r *model.Record) error {
		if single[r.Task] {
			n++
			if len(r.Lineage.AnnotationIDs) > 0 && crowd[r.Lineage.AnnotationIDs[0]] {
				t.Errorf("%s record %s targets crowd box %s", r.Task, r.ID, r.Lineage.AnnotationIDs[0])
			}
		}
		for _, turn := range r.Conversations {
			if strings.Contains(turn.Value, "iscrowd") || strings.Contains(turn.Value, " 1 circle") {
				t.Errorf("record %s mentions the crowd flag: %q", r.ID, turn.Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no single-object records")
	}
}
