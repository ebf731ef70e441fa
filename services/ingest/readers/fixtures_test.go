package readers

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// sharedFixtures is the third-party fixture directory beside the project
// (../shared/fixtures from the repository root).
func sharedFixtures(t *testing.T, sub string) string {
	t.Helper()
	dir := filepath.Join("..", "..", "..", "..", "shared", "fixtures", sub)
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("third-party fixtures absent (%s): the project's own fixtures in testdata/ cover this reader", dir)
	}
	return dir
}

// copyFixture copies fixture files into a fresh directory under new names,
// so that a test can lay them out as the reader expects.
func copyFixture(t *testing.T, dst string, files map[string]string) {
	t.Helper()
	for from, to := range files {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dst, filepath.FromSlash(to))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFixtureCOCOSample(t *testing.T) {
	dir := sharedFixtures(t, "coco")
	res, err := Read(context.Background(), FormatCOCO, filepath.Join(dir, "instances_val2017_1img-sample.json"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ds := res.Dataset
	if len(ds.Images) != 1 || ds.Images[0].ID != "448263" || ds.Images[0].Width != 320 || ds.Images[0].Height != 240 {
		t.Fatalf("images = %+v", ds.Images)
	}
	if ds.Images[0].Split != dataset.SplitVal {
		t.Fatalf("split = %q", ds.Images[0].Split)
	}
	if len(ds.Objects) != 16 || len(res.Rejected) != 0 {
		t.Fatalf("objects %d rejected %v", len(ds.Objects), res.Rejected)
	}
	// First annotation: bbox [80.0, 6.49, 223.89, 223.36] xywh, person.
	o := ds.Objects[0]
	want := dataset.Box{X1: 80, Y1: 6.49, X2: 80 + 223.89, Y2: 6.49 + 223.36}
	if o.ID != "503662" || o.Category != "person" || !boxNear(o.Box, want) {
		t.Fatalf("first object = %+v, want box %+v", o, want)
	}
	// The crowd annotation (RLE segmentation dict) is kept and marked.
	last := ds.Objects[15]
	if last.ID != "900100448263" || last.Attributes["iscrowd"] != "1" {
		t.Fatalf("crowd object = %+v", last)
	}
	cats := map[string]int{}
	for _, o := range ds.Objects {
		cats[o.Category]++
	}
	if cats["person"] != 14 || len(cats) != 3 {
		t.Fatalf("categories = %v", cats)
	}
}

func TestFixtureVisualGenome(t *testing.T) {
	src := sharedFixtures(t, "visual_genome")
	dir := t.TempDir()
	files := map[string]string{}
	for _, k := range vgKinds {
		files[filepath.Join(src, "hf_dummy_v1.2_"+k+".json")] = "hf_dummy_v1.2_" + k + ".json"
	}
	copyFixture(t, dir, files)
	res, err := Read(context.Background(), FormatVG, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ds := res.Dataset
	if len(res.Files) != 5 {
		t.Fatalf("files = %v", res.Files)
	}
	if len(ds.Images) != 5 || ds.Images[0].File != "VG_100K_2/1.jpg" || ds.Images[1].File != "VG_100K/2.jpg" || ds.Images[0].Width != 800 {
		t.Fatalf("images = %+v", ds.Images[:2])
	}
	byID := map[string]dataset.Object{}
	for _, o := range ds.Objects {
		if _, dup := byID[o.ID]; dup {
			t.Fatalf("object %s twice: relationships/attributes must merge", o.ID)
		}
		byID[o.ID] = o
	}
	clock := byID["1058498"]
	if clock.Category != "clock" || clock.Attributes["synset"] != "clock.n.01" || clock.Attributes["attributes"] != "green|tall" {
		t.Fatalf("clock = %+v", clock)
	}
	if clock.Box != (dataset.Box{X1: 421, Y1: 91, X2: 500, Y2: 430}) {
		t.Fatalf("clock box = %+v", clock.Box)
	}
	multi := 0
	for _, o := range ds.Objects {
		if strings.Contains(o.Attributes["names"], "|") {
			multi++
		}
	}
	if multi == 0 {
		t.Fatal("no object kept its several names")
	}
	if len(ds.Relations) == 0 || len(ds.Regions) == 0 {
		t.Fatalf("relations %d regions %d", len(ds.Relations), len(ds.Regions))
	}
	r0 := ds.Relations[0]
	if r0.ID != "15927" || r0.Predicate != "ON" || r0.SubjectID != "5045" || r0.ObjectID != "5046" || r0.ImageID != "1" {
		t.Fatalf("first relation = %+v", r0)
	}
	g0 := ds.Regions[0]
	if g0.ID != "1382" || g0.Phrase != "the clock is green in colour" || g0.Box != (dataset.Box{X1: 421, Y1: 57, X2: 503, Y2: 196}) {
		t.Fatalf("first region = %+v", g0)
	}
	if len(res.Rejected) != 0 {
		t.Fatalf("rejected = %v", res.Rejected)
	}
}

func TestFixtureFlickr30k(t *testing.T) {
	src := sharedFixtures(t, "flickr30k_entities")
	dir := t.TempDir()
	copyFixture(t, dir, map[string]string{
		filepath.Join(src, "65567.txt"): "Sentences/65567.txt",
		filepath.Join(src, "65567.xml"): "Annotations/65567.xml",
	})
	res, err := Read(context.Background(), FormatFlickr30k, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ds := res.Dataset
	if len(ds.Images) != 1 || ds.Images[0].Width != 375 || ds.Images[0].Height != 500 || ds.Images[0].File != "flickr30k-images/65567.jpg" {
		t.Fatalf("images = %+v", ds.Images)
	}
	// 6 boxed <object>s; names: 2 + 3 + 1 + 1 + 1 + 1 = 9 (entity, box) pairs.
	if len(ds.Objects) != 9 {
		t.Fatalf("objects = %d: %+v", len(ds.Objects), ds.Objects)
	}
	var man dataset.Object
	for _, o := range ds.Objects {
		if o.Attributes["entity"] == "255542" {
			man = o
		}
	}
	if man.Category != "people" || man.Box != (dataset.Box{X1: 23, Y1: 62, X2: 208, Y2: 500}) {
		t.Fatalf("255542 = %+v", man)
	}
	// Phrases of nobndbox entities (255546 "a wedding", 255549 "a formal event")
	// produce no region; 255547 "A wedding party" has two boxes, merged.
	for _, r := range ds.Regions {
		if r.Phrase == "a wedding" || r.Phrase == "a formal event" || r.Phrase == "a wedding function" {
			t.Fatalf("region for an entity without box: %+v", r)
		}
		if r.Phrase == "A wedding party" && r.Box != (dataset.Box{X1: 23, Y1: 62, X2: 333, Y2: 500}) {
			t.Fatalf("merged box = %+v", r.Box)
		}
	}
	// 5 sentences, 13 phrases, 3 of them without boxes.
	if len(ds.Regions) != 10 {
		t.Fatalf("regions = %d: %+v", len(ds.Regions), ds.Regions)
	}
}

func TestFixtureMiniGPTRefCOCOg(t *testing.T) {
	src := sharedFixtures(t, "refcoco")
	res, err := Read(context.Background(), FormatRefCOCO, filepath.Join(src, "minigptv2_eval_refcocog_val.json"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ds := res.Dataset
	sents := 0
	for _, r := range ds.Refs {
		sents += len(r.Sentences)
		if r.Split != dataset.SplitVal {
			t.Fatalf("split %q", r.Split)
		}
	}
	if sents != 4896 || len(res.Rejected) != 0 {
		t.Fatalf("sentences %d rejected %d", sents, len(res.Rejected))
	}
	r0 := ds.Refs[0]
	// The object id is the whole img_id: unique by construction whether
	// its suffix is an annotation id (refcocog) or an index (refcoco).
	if r0.ImageID != "533220" || r0.ObjectID != "COCO_train2014_000000533220_1954731" || len(r0.Sentences) != 2 || r0.Sentences[0] != "a bush of plant behind middle woman" {
		t.Fatalf("first ref = %+v", r0)
	}
	var obj dataset.Object
	for _, o := range ds.Objects {
		if o.ID == "COCO_train2014_000000533220_1954731" {
			obj = o
		}
	}
	if !boxNear(obj.Box, dataset.Box{X1: 285.04, Y1: 23.29, X2: 285.04 + 139.74, Y2: 23.29 + 123.11}) {
		t.Fatalf("box = %+v", obj.Box)
	}
	if ds.Images[0].File != "images/train2014/COCO_train2014_000000533220.jpg" {
		t.Fatalf("file = %q", ds.Images[0].File)
	}
}

func boxNear(a, b dataset.Box) bool {
	const eps = 1e-9
	return math.Abs(a.X1-b.X1) < eps && math.Abs(a.Y1-b.Y1) < eps && math.Abs(a.X2-b.X2) < eps && math.Abs(a.Y2-b.Y2) < eps
}

// POPE's published question file: JSON Lines despite .json, 3000
// questions about 500 COCO val2014 images, 1500 "yes".
func TestFixturePOPE(t *testing.T) {
	src := sharedFixtures(t, "pope")
	res, err := Read(context.Background(), FormatPOPE, filepath.Join(src, "coco_pope_random.json"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	yes := 0
	for _, q := range res.Questions {
		if q.Label == "yes" {
			yes++
		}
		if q.Split != "random" || q.Object == "" {
			t.Fatalf("question %+v", q)
		}
	}
	if len(res.Questions) != 3000 || len(res.Dataset.Images) != 500 || yes != 1500 || len(res.Rejected) != 0 {
		t.Fatalf("questions %d images %d yes %d rejected %d", len(res.Questions), len(res.Dataset.Images), yes, len(res.Rejected))
	}
	if q := res.Questions[0]; q.ImageID != "310196" || q.Object != "snowboard" || q.Line != 1 {
		t.Fatalf("first question %+v", q)
	}
	if im := res.Dataset.Images[0]; im.ID != "310196" || im.File != "COCO_val2014_000000310196.jpg" {
		t.Fatalf("first image %+v", im)
	}
}
