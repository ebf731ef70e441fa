package readers

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

func read(t *testing.T, format, p string) *Result {
	t.Helper()
	res, err := Read(context.Background(), format, p, Options{})
	if err != nil {
		t.Fatalf("read %s %s: %v", format, p, err)
	}
	return res
}

func objectsByID(ds *dataset.Dataset) map[string]dataset.Object {
	m := map[string]dataset.Object{}
	for _, o := range ds.Objects {
		m[o.ID] = o
	}
	return m
}

func rejectReasons(res *Result) map[string]string {
	m := map[string]string{}
	for _, r := range res.Rejected {
		m[r.Kind+" "+r.ID] = r.Reason
	}
	return m
}

func TestCOCOQuirks(t *testing.T) {
	res := read(t, FormatCOCO, "testdata/coco")
	ds := res.Dataset
	if want := []string{"annotations/instances_val2017.json"}; !reflect.DeepEqual(res.Files, want) {
		t.Fatalf("files = %v", res.Files)
	}
	if ds.Root != mustAbs(t, "testdata/coco") {
		t.Fatalf("root = %s", ds.Root)
	}
	if len(ds.Images) != 2 || ds.Images[0].Split != "val" || ds.Images[0].File != "val2017/000010.png" {
		t.Fatalf("images = %+v", ds.Images)
	}
	objs := objectsByID(ds)
	if len(objs) != 3 {
		t.Fatalf("objects = %+v", ds.Objects)
	}
	// xywh -> xyxy.
	if o := objs["1"]; o.Box != (dataset.Box{X1: 10.5, Y1: 20, X2: 40.5, Y2: 60}) || o.Category != "car" ||
		o.Attributes["color"] != "red" || o.Attributes["occluded"] != "false" {
		t.Fatalf("object 1 = %+v", o)
	}
	if o := objs["2"]; o.Attributes["iscrowd"] != "1" || o.Category != "person" {
		t.Fatalf("crowd = %+v", o)
	}
	if o := objs["5"]; o.ImageID != "11" || o.Box != (dataset.Box{X1: 5, Y1: 6, X2: 12, Y2: 14}) {
		t.Fatalf("float/string ids = %+v", o)
	}
	rr := rejectReasons(res)
	if !strings.Contains(rr["object 3"], "unknown category id") || !strings.Contains(rr["object 4"], "3 numbers") || len(rr) != 2 {
		t.Fatalf("rejects = %v", rr)
	}
}

func TestRefCOCOPickle(t *testing.T) {
	res := read(t, FormatRefCOCO, "testdata/refcoco")
	if res.Files[0] != "refs(unc).p" || res.Files[1] != "instances.json" {
		t.Fatalf("files = %v (refs(unc) must win over refs(google))", res.Files)
	}
	checkRefs(t, res)
}

func TestRefCOCOJSON(t *testing.T) {
	res := read(t, FormatRefCOCO, "testdata/refcoco_json")
	checkRefs(t, res)
}

func checkRefs(t *testing.T, res *Result) {
	t.Helper()
	ds := res.Dataset
	if len(ds.Refs) != 3 {
		t.Fatalf("refs = %+v", ds.Refs)
	}
	r0 := ds.Refs[0]
	if r0.ID != "0" || r0.ObjectID != "1719310" || r0.ImageID != "581857" || r0.Split != "testB" ||
		!reflect.DeepEqual(r0.Sentences, []string{"the lady with the blue shirt", "lady w back to us"}) {
		t.Fatalf("ref 0 = %+v", r0)
	}
	// Empty "sent" falls back to "raw".
	if r2 := ds.Refs[2]; !reflect.DeepEqual(r2.Sentences, []string{"Dog!"}) {
		t.Fatalf("ref 2 = %+v", r2)
	}
	if rr := rejectReasons(res); rr["ref 3"] != "ref without sentences" {
		t.Fatalf("rejects = %v", rr)
	}
	splits := map[string]string{}
	for _, im := range ds.Images {
		splits[im.ID] = im.Split
	}
	if splits["581857"] != "testB" || splits["42"] != "train" {
		t.Fatalf("image splits = %v", splits)
	}
	o := objectsByID(ds)["1719310"]
	if !boxNear(o.Box, dataset.Box{X1: 103.93, Y1: 299.99, X2: 103.93 + 134.22, Y2: 299.99 + 177.01}) || o.Category != "person" {
		t.Fatalf("object = %+v", o)
	}
}

func TestVGQuirks(t *testing.T) {
	res := read(t, FormatVG, "testdata/vg")
	ds := res.Dataset
	if len(ds.Images) != 1 || ds.Images[0].ID != "7" || ds.Images[0].File != "VG_100K/7.jpg" || ds.Images[0].Width != 0 {
		t.Fatalf("images = %+v", ds.Images)
	}
	objs := objectsByID(ds)
	if objs["70"].Category != "cat" || objs["71"].Category != "mat" || objs["71"].Attributes["names"] != "mat|rug" {
		t.Fatalf("objects = %+v", ds.Objects)
	}
	// The relationship's object 73 exists only nested in relationships.json.
	if objs["73"].Category != "floor" || len(ds.Objects) != 3 {
		t.Fatalf("objects = %+v", ds.Objects)
	}
	if !reflect.DeepEqual(ds.Relations, []dataset.Relation{{ID: "700", ImageID: "7", SubjectID: "70", Predicate: "sitting on", ObjectID: "73"}}) {
		t.Fatalf("relations = %+v", ds.Relations)
	}
	if len(ds.Regions) != 1 || ds.Regions[0].Box != (dataset.Box{X1: 0, Y1: 1, X2: 20, Y2: 26}) {
		t.Fatalf("regions = %+v", ds.Regions)
	}
	if rr := rejectReasons(res); rr["object 72"] != "object without a name" {
		t.Fatalf("rejects = %v", rr)
	}
}

func TestFlickrQuirks(t *testing.T) {
	res := read(t, FormatFlickr30k, "testdata/flickr")
	ds := res.Dataset
	if len(ds.Images) != 1 || ds.Images[0].ID != "1000" || ds.Images[0].Split != "val" || ds.Images[0].File != "flickr30k-images/1000.jpg" {
		t.Fatalf("images = %+v", ds.Images)
	}
	if rr := rejectReasons(res); !strings.HasPrefix(rr["image 1001"], "annotation xml") {
		t.Fatalf("rejects = %v", rr)
	}
	var cats []string
	for _, o := range ds.Objects {
		cats = append(cats, o.ID+"="+o.Category)
	}
	sort.Strings(cats)
	want := []string{"1000_1_0=people", "1000_2_0=clothing", "1000_3_0=scene", "1000_4_0=people", "1000_4_1=people"}
	if !reflect.DeepEqual(cats, want) {
		t.Fatalf("objects = %v", cats)
	}
	objs := objectsByID(ds)
	if objs["1000_3_0"].Attributes["scene"] != "1" || objs["1000_1_0"].Box != (dataset.Box{X1: 0, Y1: 0, X2: 40, Y2: 80}) {
		t.Fatalf("objects = %+v", ds.Objects)
	}
	phrases := map[string]dataset.Box{}
	for _, r := range ds.Regions {
		phrases[r.Phrase] = r.Box
	}
	if _, ok := phrases["someone"]; ok {
		t.Fatal("notvisual phrase became a region")
	}
	if _, ok := phrases["a parade"]; ok {
		t.Fatal("nobndbox phrase became a region")
	}
	if phrases["Two people"] != (dataset.Box{X1: 0, Y1: 0, X2: 90, Y2: 80}) || phrases["a blue shirt"] != (dataset.Box{X1: 9, Y1: 19, X2: 30, Y2: 40}) {
		t.Fatalf("regions = %+v", ds.Regions)
	}
	if len(ds.Regions) != 4 {
		t.Fatalf("regions = %+v", ds.Regions)
	}
}

func TestODVG(t *testing.T) {
	res := read(t, FormatODVG, "testdata/odvg")
	ds := res.Dataset
	splits := map[string]string{}
	for _, im := range ds.Images {
		splits[im.ID] = im.Split
	}
	if !reflect.DeepEqual(splits, map[string]string{"a.jpg": "train", "b.jpg": "val", "c.jpg": "val"}) {
		t.Fatalf("images = %+v", ds.Images)
	}
	objs := objectsByID(ds)
	if objs["a.jpg#0"].Category != "dog" || objs["a.jpg#1"].Category != "cat" || objs["a.jpg#0"].Box != (dataset.Box{X1: 1, Y1: 2, X2: 30, Y2: 40}) {
		t.Fatalf("objects = %+v", ds.Objects)
	}
	var ids []string
	for _, r := range ds.Regions {
		ids = append(ids, r.ID+"="+r.Phrase)
	}
	if !reflect.DeepEqual(ids, []string{"b.jpg#r0.0=two birds", "b.jpg#r0.1=two birds", "b.jpg#r1=a tree"}) {
		t.Fatalf("regions = %v", ids)
	}
	rr := rejectReasons(res)
	if !strings.Contains(rr["object a.jpg#2"], "unknown category id") || !strings.HasPrefix(rr["image line 2"], "malformed jsonl") ||
		!strings.Contains(rr["region c.jpg#r0"], "3 numbers") {
		t.Fatalf("rejects = %v", rr)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	if _, err := Read(context.Background(), "pascal", dir, Options{}); !errors.Is(err, ErrFormat) {
		t.Fatalf("unknown format: %v", err)
	}
	for _, f := range []string{FormatCOCO, FormatRefCOCO, FormatVG, FormatFlickr30k, FormatODVG, FormatScenes} {
		if _, err := Read(context.Background(), f, dir, Options{}); !errors.Is(err, ErrFormat) {
			t.Fatalf("%s on empty dir: %v", f, err)
		}
	}
	if _, err := Read(context.Background(), FormatCOCO, filepath.Join(dir, "nope"), Options{}); !errors.Is(err, ErrFormat) {
		t.Fatalf("missing path: %v", err)
	}
	bad := filepath.Join(dir, "instances_train.json")
	if err := os.WriteFile(bad, []byte(`{"images": [{"id": 1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(context.Background(), FormatCOCO, bad, Options{}); !errors.Is(err, ErrFormat) {
		t.Fatalf("truncated json: %v", err)
	}
}

func TestSplitOf(t *testing.T) {
	cases := map[string]string{
		"instances_val2017.json": "val", "instances_train2014.json": "train", "coco2017_train_odvg.jsonl": "train",
		"refcocog_val.json": "val", "instances_heldout.json": "heldout", "foo.json": "fb", "instances_testA.json": "testA",
	}
	for in, want := range cases {
		if got := splitOf(in, "fb"); got != want {
			t.Errorf("splitOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
