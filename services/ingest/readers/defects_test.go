package readers_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/services/ingest/internal/validate"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
)

// Regression tests for the defects found on real published files (issue
// 22). Each writes a small file with the structure of the real one.

func write(t *testing.T, p, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustRead(t *testing.T, format, p string) *readers.Result {
	t.Helper()
	res, err := readers.Read(context.Background(), format, p, readers.Options{})
	if err != nil {
		t.Fatalf("read %s %s: %v", format, p, err)
	}
	return res
}

// MiniGPT-v2's refcoco and refcoco+ eval files end img_id in an index
// within the image (refcocog: the COCO annotation id), so the same suffix
// recurs across images.
func TestMiniGPTRefCOCOIndexSuffixIsNotAGlobalID(t *testing.T) {
	var entries []string
	for _, img := range []int{581857, 9, 44} {
		for k := range 2 {
			for s := range 2 {
				entries = append(entries, fmt.Sprintf(`{"img_id": "COCO_train2014_%012d_%d", "sents": "object %d sentence %d", "bbox": [%d, 10.5, 20, 30], "height": 480, "width": 640}`,
					img, k, k, s, 10+50*k))
			}
		}
	}
	p := write(t, filepath.Join(t.TempDir(), "refcoco_testA.json"), "["+strings.Join(entries, ", ")+"]")
	res := mustRead(t, readers.FormatRefCOCO, p)
	rep, err := validate.Dataset(context.Background(), res.Dataset, res.Rejected, validate.Options{SkipImageFiles: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rejected) != 0 {
		t.Fatalf("rejected %d records, first %+v", len(rep.Rejected), rep.Rejected[0])
	}
	ds := res.Dataset
	if len(ds.Images) != 3 || len(ds.Objects) != 6 || len(ds.Refs) != 6 {
		t.Fatalf("images %d objects %d refs %d, want 3 6 6", len(ds.Images), len(ds.Objects), len(ds.Refs))
	}
	for _, r := range ds.Refs {
		if len(r.Sentences) != 2 {
			t.Fatalf("ref %s has %d sentences", r.ID, len(r.Sentences))
		}
	}
	if ds.Refs[2].ObjectID != "COCO_train2014_000000000009_0" || ds.Refs[2].ImageID != "9" {
		t.Fatalf("ref 2 = %+v", ds.Refs[2])
	}
}

// Shared storage often holds trees of symbolic links to the real files.
func TestSymlinkedAnnotationFilesAreFound(t *testing.T) {
	real := write(t, filepath.Join(t.TempDir(), "store", "instances_val2017.json"), tinyCOCO)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "annotations"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "annotations", "instances_val2017.json")); err != nil {
		t.Fatal(err)
	}
	res := mustRead(t, readers.FormatCOCO, dir)
	if len(res.Dataset.Images) != 1 || len(res.Dataset.Objects) != 2 || res.Files[0] != "annotations/instances_val2017.json" {
		t.Fatalf("images %d objects %d files %v", len(res.Dataset.Images), len(res.Dataset.Objects), res.Files)
	}
}

// Visual Genome 1.0's attributes.json names objects with "object_names"
// and its image_data.json calls the image id "id".
func TestVG10AttributesObjectNames(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "image_data.json"), `[{"id": 1, "width": 800, "height": 600, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg"}]`)
	write(t, filepath.Join(dir, "attributes.json"), `[{"id": 1, "attributes": [
		{"id": 1058498, "object_names": ["clock"], "attributes": ["green", "tall"], "x": 421, "y": 91, "w": 79, "h": 339},
		{"id": 5046, "object_names": ["street", "road"], "x": 77, "y": 328, "w": 714, "h": 262}]}]`)
	res := mustRead(t, readers.FormatVG, dir)
	if len(res.Rejected) != 0 {
		t.Fatalf("rejected %+v", res.Rejected)
	}
	objs := map[string]int{}
	for i, o := range res.Dataset.Objects {
		objs[o.ID] = i
	}
	clock := res.Dataset.Objects[objs["1058498"]]
	street := res.Dataset.Objects[objs["5046"]]
	if len(res.Dataset.Objects) != 2 || clock.Category != "clock" || clock.Attributes["attributes"] != "green|tall" ||
		street.Category != "street" || street.Attributes["names"] != "street|road" {
		t.Fatalf("objects = %+v", res.Dataset.Objects)
	}
}

// A JSON Lines file cut in the middle of its last line lost whatever came
// after: the read fails and says where, instead of rejecting one line.
func TestJSONLCutMidLineFails(t *testing.T) {
	dir := t.TempDir()
	line := `{"filename": "%s.jpg", "height": 100, "width": 100, "detection": {"instances": [{"bbox": [1, 2, 30, 40], "category": "dog"}]}}`
	full := fmt.Sprintf(line, "a") + "\n" + fmt.Sprintf(line, "b") + "\n" + fmt.Sprintf(line, "c")
	p := write(t, filepath.Join(dir, "train_odvg.jsonl"), full[:len(full)-40])
	_, err := readers.Read(context.Background(), readers.FormatODVG, p, readers.Options{})
	if err == nil || !strings.Contains(err.Error(), "truncated") || !strings.Contains(err.Error(), "line 3") ||
		!strings.Contains(err.Error(), "train_odvg.jsonl") {
		t.Fatalf("err = %v, want the file named as truncated at line 3", err)
	}
	// A complete last line without a newline is fine.
	write(t, p, full)
	if res := mustRead(t, readers.FormatODVG, p); len(res.Dataset.Images) != 3 || len(res.Rejected) != 0 {
		t.Fatalf("images %d rejected %v", len(res.Dataset.Images), res.Rejected)
	}
}

// VG objects keep every synset, not only the first.
func TestVGKeepsAllObjectSynsets(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "objects.json"), `[{"image_id": 1, "objects": [
		{"object_id": 7, "names": ["man"], "synsets": ["man.n.01", "person.n.01"], "x": 1, "y": 2, "w": 3, "h": 4}]}]`)
	res := mustRead(t, readers.FormatVG, dir)
	o := res.Dataset.Objects[0]
	if o.Attributes["synset"] != "man.n.01" || o.Attributes["synsets"] != "man.n.01|person.n.01" {
		t.Fatalf("attributes = %v", o.Attributes)
	}
}

// A crowd box (iscrowd 1) is kept, marked, and never the single object a
// referring expression points at.
func TestCrowdBoxIsNotAReferredObject(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "instances.json"), tinyCOCO)
	write(t, filepath.Join(dir, "refs(unc).json"), `[
		{"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 1, "sentences": [{"sent": "the dog on the left"}]},
		{"ref_id": 2, "ann_id": 12, "image_id": 1, "split": "train", "category_id": 1, "sentences": [{"sent": "the people"}]}]`)
	res := mustRead(t, readers.FormatRefCOCO, dir)
	if len(res.Dataset.Refs) != 1 || res.Dataset.Refs[0].ObjectID != "11" {
		t.Fatalf("refs = %+v", res.Dataset.Refs)
	}
	if len(res.Rejected) != 1 || !strings.Contains(res.Rejected[0].Reason, "crowd") || res.Rejected[0].File != "refs(unc).json" {
		t.Fatalf("rejected = %+v", res.Rejected)
	}
	crowd := 0
	for _, o := range res.Dataset.Objects {
		if o.Attributes["iscrowd"] == "1" {
			crowd++
		}
	}
	if crowd != 1 {
		t.Fatalf("crowd objects kept: %d, want 1", crowd)
	}
}

// A COCO results file is a JSON list of detections: say so, not
// "malformed JSON".
func TestCOCOResultsFileIsNamed(t *testing.T) {
	p := write(t, filepath.Join(t.TempDir(), "instances_val2017_fakebbox100_results.json"),
		`[{"image_id": 42, "category_id": 18, "bbox": [258.15, 41.29, 348.26, 243.78], "score": 0.236}]`)
	_, err := readers.Read(context.Background(), readers.FormatCOCO, p, readers.Options{})
	if err == nil || !strings.Contains(err.Error(), "results file") || strings.Contains(err.Error(), "malformed JSON") {
		t.Fatalf("err = %v", err)
	}
}

// A syntax error in a JSON document says where it is.
func TestJSONSyntaxErrorSaysWhere(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "objects.json"), `[{"image_id": 1, "objects": []},`+"\n"+`{"image_id": 2, "objects": [}]`)
	_, err := readers.Read(context.Background(), readers.FormatVG, dir, readers.Options{})
	if err == nil || !strings.Contains(err.Error(), "objects.json: malformed JSON at byte 60") {
		t.Fatalf("err = %v", err)
	}
}

// A ZIP archive given as an annotation file is named as one.
func TestZIPArchiveIsNamed(t *testing.T) {
	p := write(t, filepath.Join(t.TempDir(), "instances_val2017.json"), "PK\x03\x04 rest of a zip")
	_, err := readers.Read(context.Background(), readers.FormatCOCO, p, readers.Options{})
	if err == nil || !strings.Contains(err.Error(), "is a ZIP archive") {
		t.Fatalf("err = %v", err)
	}
}

// Compressed annotation files are read as they are.
func TestGzipAnnotationFileIsRead(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(tinyCOCO))
	zw.Close()
	write(t, filepath.Join(dir, "annotations", "instances_val2017.json.gz"), buf.String())
	res := mustRead(t, readers.FormatCOCO, dir)
	if len(res.Dataset.Images) != 1 || len(res.Dataset.Objects) != 2 || res.Dataset.Images[0].Split != "val" ||
		res.Dataset.Images[0].File != "val2017/000000000001.jpg" {
		t.Fatalf("images %+v objects %d", res.Dataset.Images, len(res.Dataset.Objects))
	}
}

// One huge field that must be kept (not a skipped segmentation) is refused
// with a clear error instead of being buffered several times over.
func TestCOCOHugeKeptFieldIsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 20 MB file")
	}
	huge := strings.Repeat("x", 20<<20)
	doc := strings.Replace(tinyCOCO, `"attributes": {"occluded": false}`, `"attributes": {"note": "`+huge+`"}`, 1)
	if doc == tinyCOCO {
		t.Fatal("test file has no attributes to grow")
	}
	p := write(t, filepath.Join(t.TempDir(), "instances_val2017.json"), doc)
	_, err := readers.Read(context.Background(), readers.FormatCOCO, p, readers.Options{})
	if err == nil || !strings.Contains(err.Error(), "larger than") || !strings.Contains(err.Error(), "instances_val2017.json") {
		t.Fatalf("err = %v", err)
	}
}

// tinyCOCO is a COCO instances file: one image, a dog and a crowd of people.
const tinyCOCO = `{"info": {"year": 2017}, "licenses": [],
 "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 640, "height": 480}],
 "annotations": [
  {"id": 11, "image_id": 1, "category_id": 1, "bbox": [10, 20, 100, 50], "area": 5000, "iscrowd": 0, "segmentation": [[10, 20, 110, 20, 110, 70]], "attributes": {"occluded": false}},
  {"id": 12, "image_id": 1, "category_id": 2, "bbox": [200, 100, 300, 200], "area": 60000, "iscrowd": 1, "segmentation": {"counts": [5, 10, 5], "size": [480, 640]}}],
 "categories": [{"id": 1, "name": "dog", "supercategory": "animal"}, {"id": 2, "name": "person", "supercategory": "person"}]}`
