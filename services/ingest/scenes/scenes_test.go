package scenes

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"image/png"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
)

func generate(t *testing.T, spec Spec) *World {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "world")
	var last, calls int64
	w, err := Generate(context.Background(), dir, spec, func(done, total int64) {
		calls++
		if done <= last || total != int64(spec.WithDefaults().Images) {
			t.Errorf("progress %d/%d after %d", done, total, last)
		}
		last = done
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != int64(spec.WithDefaults().Images) {
		t.Fatalf("progress ended at %d", last)
	}
	return w
}

func treeHashes(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDeterministic(t *testing.T) {
	spec := Spec{Seed: 7, Images: 40, Size: 48}
	a, b := generate(t, spec), generate(t, spec)
	ha, hb := treeHashes(t, a.Dir), treeHashes(t, b.Dir)
	if len(ha) != 40+len(AllSplits)+6 {
		t.Fatalf("files = %d", len(ha))
	}
	if !reflect.DeepEqual(ha, hb) {
		t.Fatal("same spec wrote different bytes")
	}
	c := generate(t, Spec{Seed: 8, Images: 40, Size: 48})
	if reflect.DeepEqual(ha, treeHashes(t, c.Dir)) {
		t.Fatal("another seed wrote the same world")
	}
}

func TestGenerateRefusesNonEmptyDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(context.Background(), dir, Spec{Images: 3}, nil); err == nil {
		t.Fatal("generated into a non-empty directory")
	}
	if _, err := Generate(context.Background(), filepath.Join(dir, "w"), Spec{Images: 3, Size: 8}, nil); err == nil {
		t.Fatal("accepted size 8")
	}
}

// TestRoundTrip: generated scenes -> files -> readers -> the same images,
// objects, boxes, attributes, expressions and relations.
func TestRoundTrip(t *testing.T) {
	w := generate(t, Spec{Seed: 3, Images: 200})
	res, err := readers.Read(context.Background(), readers.FormatScenes, w.Dir, readers.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rejected) != 0 {
		t.Fatalf("rejected %v", res.Rejected[:min(5, len(res.Rejected))])
	}
	ds := res.Dataset
	images := map[string]dataset.Image{}
	for _, im := range ds.Images {
		images[im.ID] = im
	}
	objects := map[string]dataset.Object{}
	byImage := map[string][]dataset.Object{}
	for _, o := range ds.Objects {
		objects[o.ID] = o
		byImage[o.ImageID] = append(byImage[o.ImageID], o)
	}
	refs := map[string]dataset.Ref{}
	for _, r := range ds.Refs {
		refs[r.ObjectID] = r
	}
	rels := map[string]dataset.Relation{}
	for _, r := range ds.Relations {
		rels[r.ID] = r
	}
	var nObj, nRef, nRel int
	for _, sc := range w.Scenes {
		im, ok := images[sc.Objects[0].ImageID]
		if !ok || im.File != sc.File || im.Split != sc.Split || im.Width != sc.Size || im.Height != sc.Size {
			t.Fatalf("image %d: got %+v, want file %s split %s", sc.ID, im, sc.File, sc.Split)
		}
		for _, o := range sc.Objects {
			if got := objects[o.ID]; !reflect.DeepEqual(got, o) {
				t.Fatalf("object %s:\n got %+v\nwant %+v", o.ID, got, o)
			}
			nObj++
		}
		for _, r := range sc.Refs {
			got := refs[r.ObjectID]
			if !reflect.DeepEqual(got.Sentences, r.Sentences) || got.Split != sc.Split || got.ImageID != im.ID {
				t.Fatalf("ref %s: got %+v, want %v", r.ObjectID, got, r.Sentences)
			}
			nRef++
		}
		for _, r := range sc.Relations {
			if got := rels[r.ID]; got != r {
				t.Fatalf("relation %s: got %+v want %+v", r.ID, got, r)
			}
			nRel++
		}
	}
	if nObj != len(ds.Objects) || nRef != len(ds.Refs) || nRel != len(ds.Relations) || len(w.Scenes) != len(ds.Images) {
		t.Fatalf("counts: objects %d/%d refs %d/%d relations %d/%d", nObj, len(ds.Objects), nRef, len(ds.Refs), nRel, len(ds.Relations))
	}
	// Every ingested sentence selects exactly its object among the objects
	// read back from the files (not the generator's memory).
	relational := 0
	for _, r := range ds.Refs {
		im := images[r.ImageID]
		for _, s := range r.Sentences {
			e, err := ParseExpr(s)
			if err != nil {
				t.Fatal(err)
			}
			if e.Pred != "" {
				relational++
			}
			if got := Resolve(e, byImage[r.ImageID], im.Width, im.Height); len(got) != 1 || got[0] != r.ObjectID {
				t.Fatalf("%q selects %v, want [%s]", s, got, r.ObjectID)
			}
		}
	}
	if relational < len(ds.Refs)/2 {
		t.Fatalf("only %d relational sentences for %d refs", relational, len(ds.Refs))
	}
}

func TestWorldProperties(t *testing.T) {
	w := generate(t, Spec{Seed: 11, Images: 300})
	held := map[Pair]bool{}
	for _, p := range HeldOut() {
		held[p] = true
	}
	seen := map[string]map[string]bool{"shape": {}, "color": {}, "size": {}, "texture": {}, "pred": {}}
	splits := map[string]int{}
	distractorRefs, attrNeeded, relNeeded, occluded := 0, 0, 0, 0
	for _, sc := range w.Scenes {
		splits[sc.Split]++
		heldHere := false
		for _, o := range sc.Objects {
			p := Pair{Color: o.Attributes[AttrColor], Shape: o.Category}
			if held[p] {
				heldHere = true
				if sc.Split != dataset.SplitHeldOut {
					t.Fatalf("held-out pair %v in %s image %d", p, sc.Split, sc.ID)
				}
			}
			seen["shape"][o.Category] = true
			seen["color"][p.Color] = true
			seen["size"][o.Attributes[AttrSize]] = true
			seen["texture"][o.Attributes[AttrTexture]] = true
			if o.Attributes[AttrOccluded] == "true" {
				occluded++
			}
		}
		if sc.Split == dataset.SplitHeldOut && !heldHere {
			t.Fatalf("heldout image %d has no held-out pair", sc.ID)
		}
		for _, r := range sc.Relations {
			seen["pred"][r.Predicate] = true
		}
		for _, r := range sc.Refs {
			var target dataset.Object
			same := 0
			for _, o := range sc.Objects {
				if o.ID == r.ObjectID {
					target = o
				}
			}
			for _, o := range sc.Objects {
				if o.Category == target.Category {
					same++
				}
			}
			if same < 2 {
				continue
			}
			distractorRefs++
			if len(Resolve(Expr{Head: Desc{Shape: target.Category}}, sc.Objects, sc.Size, sc.Size)) > 1 {
				attrNeeded++
			}
			if r.Exprs[0].Pred != "" {
				relNeeded++ // no attribute description was unique: a relation was needed
			}
			// An object that some attribute description singles out is
			// also named by its colour ("the red circle"), and the
			// shortest such description is there.
			if d, ok := minimal(target, sc.Objects); ok {
				colour := target.Attributes[AttrColor]
				var spokenOK bool
				for _, e := range r.Exprs {
					if e.Pred == "" && e.Head.Color == colour && len(strings.Fields(e.String())) <= len(strings.Fields(d.String()))+1 {
						spokenOK = true
					}
				}
				if !spokenOK {
					t.Fatalf("scene %d ref %s: no short expression names its colour %q: %v", sc.ID, r.ObjectID, colour, r.Sentences)
				}
			}
		}
		checkPixels(t, w.Dir, sc)
	}
	for k, want := range map[string]int{"shape": len(Shapes), "color": len(Colors), "size": len(Sizes), "texture": len(Textures), "pred": len(Predicates) - 2} {
		if len(seen[k]) < want {
			t.Errorf("%s: only %v", k, keys(seen[k]))
		}
	}
	if splits["train"] != 210 || splits["val"] != 30 || splits["test"] != 30 || splits["heldout"] != 30 {
		t.Errorf("splits = %v", splits)
	}
	if distractorRefs < 150 || attrNeeded != distractorRefs || relNeeded == 0 || occluded == 0 {
		t.Errorf("distractor refs %d, needing attributes %d, needing a relation %d, occluded objects %d", distractorRefs, attrNeeded, relNeeded, occluded)
	}
}

// checkPixels decodes the PNG and checks that every object shows its
// colour (plain or its dark texture shade) inside its box.
func checkPixels(t *testing.T, dir string, sc *Scene) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, sc.File))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != sc.Size || b.Dy() != sc.Size {
		t.Fatalf("image %d is %v", sc.ID, b)
	}
	for k, o := range sc.Objects {
		c := palette[indexOf(Colors, o.Attributes[AttrColor])]
		hits := 0
		for y := int(o.Box.Y1); y < int(o.Box.Y2); y++ {
			for x := int(o.Box.X1); x < int(o.Box.X2); x++ {
				r, g, b, _ := img.At(x, y).RGBA()
				r8, g8, b8 := uint8(r>>8), uint8(g>>8), uint8(b>>8)
				if (r8 == c.R && g8 == c.G && b8 == c.B) || (r8 == c.R*2/5 && g8 == c.G*2/5 && b8 == c.B*2/5) {
					hits++
				}
			}
		}
		// Every visible pixel of the object is painted in its colour or its
		// texture's dark shade (others of the same colour may add more).
		if hits < sc.Visible[k] || float64(sc.Visible[k]) < MinVisible*0.3*o.Box.Area() {
			t.Fatalf("image %d object %s (%s %s): %d pixels of its colour, %d visible, box area %v", sc.ID, o.ID, o.Attributes[AttrColor], o.Category, hits, sc.Visible[k], o.Box.Area())
		}
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestParseExpr(t *testing.T) {
	e := Expr{Head: Desc{Shape: "circle", Size: "small", Color: "red"}, Pred: "left of", Landmark: Desc{Shape: "square", Color: "blue"}}
	if s := e.String(); s != "the small red circle left of the blue square" {
		t.Fatalf("String = %q", s)
	}
	back, err := ParseExpr(e.String())
	if err != nil || back != e {
		t.Fatalf("ParseExpr = %+v, %v", back, err)
	}
	for _, bad := range []string{"", "the", "a red circle", "the red red circle", "the circle near the square", "the circle left of", "the circle left of the square x", "the pink"} {
		if _, err := ParseExpr(bad); err == nil {
			t.Errorf("ParseExpr(%q) accepted", bad)
		}
	}
	if !strings.Contains(Expr{Head: Desc{Shape: "ring"}, Pred: "inside", Landmark: Desc{Shape: "star"}}.String(), "inside the star") {
		t.Fatal("inside")
	}
}

func TestHolds(t *testing.T) {
	mk := func(x1, y1, x2, y2 float64, size string) dataset.Object {
		return dataset.Object{Box: dataset.Box{X1: x1, Y1: y1, X2: x2, Y2: y2}, Attributes: map[string]string{AttrSize: size}}
	}
	a, b := mk(0, 0, 10, 10, "small"), mk(20, 0, 30, 10, "large")
	in := mk(22, 2, 26, 6, "small")
	cases := []struct {
		pred string
		x, y dataset.Object
		want bool
	}{
		{"left of", a, b, true}, {"right of", a, b, false}, {"right of", b, a, true},
		{"above", a, b, false}, {"below", a, b, false},
		{"next to", a, b, false}, {"next to", a, mk(12, 0, 20, 10, "small"), true},
		{"inside", in, b, true}, {"inside", b, in, false},
		{"bigger than", b, a, true}, {"bigger than", a, b, false}, {"bigger than", a, in, false},
		{"above", mk(0, 0, 10, 10, "small"), mk(0, 30, 10, 40, "small"), true},
	}
	for _, c := range cases {
		if got := Holds(c.pred, c.x, c.y, 64, 64); got != c.want {
			t.Errorf("%v %s %v = %v", c.x.Box, c.pred, c.y.Box, got)
		}
	}
}
