package synth_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

// BuildOptions.Mirror asks about half the training REC and POPE records of
// the mirrored image: the box is the referent's box mirrored, "left" and
// "right" trade places in the text, the resolved pixels are the file's
// mirrored; no other split and no other task is mirrored; a set built
// without the option has no transform anywhere, and the two sets' content
// hashes differ.
func TestMirror(t *testing.T) {
	dir := t.TempDir()
	ds, err := synthtest.World(filepath.Join(dir, "world"), synthtest.Options{Seed: 5, Images: 80, Size: 96})
	if err != nil {
		t.Fatal(err)
	}
	// The world's expressions name no direction: give every referent one
	// that does.
	for i := range ds.Refs {
		ds.Refs[i].Sentences = append(ds.Refs[i].Sentences, ds.Refs[i].Sentences[0]+" left of the frame")
	}
	build := func(name string, mirror float64) (synth.Manifest, *fixture) {
		t.Helper()
		b, err := blob.NewLocal(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		m, err := synth.Build(context.Background(), ds, synth.BuildOptions{DatasetID: "mirror", Seed: 3, Samples: 3000, Mirror: mirror}, b, "m", nil)
		if err != nil {
			t.Fatal(err)
		}
		f := newFixture(ds, b, m)
		if err := synth.ReadRecords(context.Background(), b, m, nil, func(r *model.Record) error {
			f.recs = append(f.recs, r)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return m, f
	}
	plain, pf := build("plain", 0)
	for _, r := range pf.recs {
		for _, im := range r.Images {
			if im.Transform != "" {
				t.Fatalf("record %s: transform %q without the option", r.ID, im.Transform)
			}
		}
	}
	_, f := build("mirrored", 0.5)
	res := model.FileImageResolver{DatasetRoot: ds.Root}
	counts := map[string][2]int{} // task: mirrored, train records
	swapped := 0
	for _, r := range f.recs {
		mirrored := false
		for i, im := range r.Images {
			if im.Transform == "" {
				continue
			}
			if i != 0 || im.Transform != model.TransformMirror || im.Kind != "image" {
				t.Fatalf("record %s: image %d %+v", r.ID, i, im)
			}
			mirrored = true
		}
		if r.Split != "train" {
			if mirrored {
				t.Fatalf("record %s of split %s is mirrored", r.ID, r.Split)
			}
			continue
		}
		c := counts[r.Task]
		c[1]++
		if mirrored {
			c[0]++
		}
		counts[r.Task] = c
		if mirrored && r.Task != "rec" && r.Task != "pope" {
			t.Fatalf("record %s of task %s is mirrored", r.ID, r.Task)
		}
		if !mirrored || r.Task != "rec" {
			continue
		}
		im := r.Images[0]
		o := f.objs[r.Lineage.AnnotationIDs[0]]
		if o == nil {
			t.Fatalf("record %s: annotation %v unknown", r.ID, r.Lineage.AnnotationIDs)
		}
		if want := model.MirrorBox(boxOf(o.Box), im.Width); !near(r.Answer.Boxes[0], want, 1e-9) {
			t.Errorf("record %s: box %v, want the referent's %v mirrored, %v", r.ID, r.Answer.Boxes[0], boxOf(o.Box), want)
		}
		if want := model.FormatBox(model.Normalize(dsBox(r.Answer.Boxes[0]), im.Width, im.Height)); lastGPT(r) != want {
			t.Errorf("record %s: answer %q, want %q", r.ID, lastGPT(r), want)
		}
		q, phrase := humanText(r), r.Answer.Phrases[0]
		if strings.Contains(q, "left of the frame") || strings.Contains(phrase, "left of the frame") {
			t.Errorf("record %s: mirrored, but asks %q (phrase %q)", r.ID, q, phrase)
		}
		if strings.Contains(phrase, "right of the frame") {
			if !strings.Contains(q, phrase) {
				t.Errorf("record %s: question %q does not ask for phrase %q", r.ID, q, phrase)
			}
			swapped++
		}
		if swapped == 1 && strings.Contains(phrase, "right of") {
			// The pixels: the resolved image is the file mirrored.
			got, err := res.ResolveImage(context.Background(), im)
			if err != nil {
				t.Fatal(err)
			}
			plainRef := im
			plainRef.Transform = ""
			orig, err := res.ResolveImage(context.Background(), plainRef)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range [][2]int{{0, 0}, {3, 7}, {im.Width - 1, im.Height / 2}} {
				r1, g1, b1, _ := got.At(p[0], p[1]).RGBA()
				r2, g2, b2, _ := orig.At(im.Width-1-p[0], p[1]).RGBA()
				if r1 != r2 || g1 != g2 || b1 != b2 {
					t.Fatalf("pixel %v of the mirrored image is not pixel %v of the file", p, [2]int{im.Width - 1 - p[0], p[1]})
				}
			}
		}
	}
	for _, task := range []string{"rec", "pope"} {
		c := counts[task]
		if c[1] == 0 || float64(c[0]) < 0.3*float64(c[1]) || float64(c[0]) > 0.7*float64(c[1]) {
			t.Errorf("%s: %d of %d training records mirrored, want about half", task, c[0], c[1])
		}
	}
	for task, c := range counts {
		if task != "rec" && task != "pope" && c[0] > 0 {
			t.Errorf("%s: %d records mirrored", task, c[0])
		}
	}
	if swapped == 0 {
		t.Error("no mirrored REC question says \"right of\": the relations were not swapped (or the world has none)")
	}
	if mirroredSet := f.m; mirroredSet.ContentHash == plain.ContentHash {
		t.Fatal("the mirrored set has the plain set's content hash")
	}
}

func dsBox(b [4]float64) dataset.Box { return dataset.Box{X1: b[0], Y1: b[1], X2: b[2], Y2: b[3]} }

func TestSwapLeftRight(t *testing.T) {
	for in, want := range map[string]string{
		"the red circle left of the blue star":  "the red circle right of the blue star",
		"Right of it; leftmost, not rightmost.": "Left of it; rightmost, not leftmost.",
		"bright leftover":                       "bright leftover",
	} {
		if got := synth.SwapLeftRight(in); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}
