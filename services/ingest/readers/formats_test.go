package readers_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

// VG relationship synsets and ODVG grounding captions have no field in
// dataset.Dataset yet: they are kept in Result.Extra.
func TestRelationSynsetsAndCaptionsAreKept(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "relationships.json"), `[{"image_id": 1, "relationships": [
		{"relationship_id": 15927, "predicate": "ON", "synsets": ["along.r.01"],
		 "subject": {"object_id": 5045, "name": "shade", "synsets": ["shade.n.01"], "x": 119, "y": 338, "w": 274, "h": 192},
		 "object": {"object_id": 5046, "name": "street", "synsets": ["street.n.01"], "x": 77, "y": 328, "w": 714, "h": 262}}]}]`)
	res := mustRead(t, readers.FormatVG, dir)
	if got := res.Extra.RelationSynsets["15927"]; !reflect.DeepEqual(got, []string{"along.r.01"}) {
		t.Fatalf("relation synsets = %v", res.Extra.RelationSynsets)
	}
	p := write(t, filepath.Join(t.TempDir(), "grit_odvg.jsonl"),
		`{"filename": "a.jpg", "height": 100, "width": 100, "grounding": {"caption": "a dog on a sofa", "regions": [{"bbox": [1, 2, 30, 40], "phrase": "a dog"}]}}`+"\n")
	res = mustRead(t, readers.FormatODVG, p)
	if res.Extra.Captions["a.jpg"] != "a dog on a sofa" || len(res.Dataset.Regions) != 1 {
		t.Fatalf("captions = %v regions = %v", res.Extra.Captions, res.Dataset.Regions)
	}
}

// A gzip file that expands past the limit fails instead of filling memory
// or disk.
func TestGzipBombIsRefused(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(`{"images": [], "info": "`))
	zw.Write(bytes.Repeat([]byte{'a'}, 4<<20))
	zw.Write([]byte(`"}`))
	zw.Close()
	p := write(t, filepath.Join(t.TempDir(), "instances_val2017.json.gz"), buf.String())
	_, err := readers.Read(context.Background(), readers.FormatCOCO, p, readers.Options{MaxDecompressed: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), "decompresses to more than 1048576 bytes") {
		t.Fatalf("err = %v", err)
	}
	if _, err := readers.Read(context.Background(), readers.FormatCOCO, p, readers.Options{}); err != nil {
		t.Fatalf("under the default limit: %v", err)
	}
}

// Every record knows its file, and in JSON Lines its line, so that the
// validator's rejects can say where.
func TestResultWhere(t *testing.T) {
	dir := t.TempDir()
	line := `{"filename": "%s.jpg", "height": 100, "width": 100, "detection": {"instances": [{"bbox": [1, 2, 30, 40], "category": "dog"}, {"bbox": [5, 5, 9, 9], "category": "cat"}]}}`
	write(t, filepath.Join(dir, "a_train.jsonl"), fmt.Sprintf(line, "a")+"\n\n"+fmt.Sprintf(line, "b")+"\n")
	write(t, filepath.Join(dir, "b_val.jsonl"), fmt.Sprintf(line, "c")+"\n")
	res := mustRead(t, readers.FormatODVG, dir)
	for _, c := range []struct {
		kind string
		i    int
		file string
		line int
	}{
		{readers.KindImage, 0, "a_train.jsonl", 1}, {readers.KindImage, 1, "a_train.jsonl", 3}, {readers.KindImage, 2, "b_val.jsonl", 1},
		{readers.KindObject, 1, "a_train.jsonl", 1}, {readers.KindObject, 3, "a_train.jsonl", 3}, {readers.KindObject, 5, "b_val.jsonl", 1},
	} {
		if f, l := res.Where(c.kind, c.i); f != c.file || l != c.line {
			t.Errorf("Where(%s, %d) = %s:%d, want %s:%d", c.kind, c.i, f, l, c.file, c.line)
		}
	}
	coco := mustRead(t, readers.FormatCOCO, write(t, filepath.Join(t.TempDir(), "instances_val2017.json"), tinyCOCO))
	if f, l := coco.Where(readers.KindObject, 1); f != "instances_val2017.json" || l != 0 {
		t.Errorf("coco Where = %s:%d", f, l)
	}
}

func TestSourceBoxShowsTheFilesValues(t *testing.T) {
	b := dataset.Box{X1: 285.04, Y1: 23.29, X2: 285.04 + 139.74, Y2: 23.29 + 123.11}
	if got := readers.SourceBox(readers.FormatCOCO)(b); got != "bbox [285.04, 23.29, 139.74, 123.11]" {
		t.Fatalf("coco: %s", got)
	}
	if got := readers.SourceBox(readers.FormatODVG)(dataset.Box{X1: 1, Y1: 2, X2: 30.5, Y2: 40}); got != "bbox [1, 2, 30.5, 40]" {
		t.Fatalf("odvg: %s", got)
	}
	if got := readers.SourceBox(readers.FormatFlickr30k)(dataset.Box{X1: 0, Y1: 9, X2: 20, Y2: 30}); got != "xmin 1, ymin 10, xmax 20, ymax 30" {
		t.Fatalf("flickr: %s", got)
	}
}

// POPE question files in the published form (JSON Lines named .json),
// with the mistakes a hand-edited copy gets.
func TestPOPEQuestions(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "coco_pope_adversarial.json"), strings.Join([]string{
		`{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"}`,
		`{"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there an apple in the image?", "label": "no"}`,
		`{"question_id": 3, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a car in the image?", "label": "maybe"}`,
		`{"question_id": 2, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a car in the image?", "label": "no"}`,
		`{"question_id": 5, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a car in the image?", "label": "No"}`,
		`not json`,
	}, "\n")+"\n")
	res := mustRead(t, readers.FormatPOPE, dir)
	want := []readers.Question{
		{ID: "adversarial/1", ImageID: "310196", Text: "Is there a snowboard in the image?", Label: "yes", Object: "snowboard", Split: "adversarial", File: "coco_pope_adversarial.json", Line: 1},
		{ID: "adversarial/2", ImageID: "310196", Text: "Is there an apple in the image?", Label: "no", Object: "apple", Split: "adversarial", File: "coco_pope_adversarial.json", Line: 2},
		{ID: "adversarial/5", ImageID: "42", Text: "Is there a car in the image?", Label: "no", Object: "car", Split: "adversarial", File: "coco_pope_adversarial.json", Line: 5},
	}
	if !reflect.DeepEqual(res.Questions, want) {
		t.Fatalf("questions = %+v", res.Questions)
	}
	if len(res.Dataset.Images) != 2 || res.Dataset.Images[0].File != "COCO_val2014_000000310196.jpg" {
		t.Fatalf("images = %+v", res.Dataset.Images)
	}
	var got []string
	for _, r := range res.Rejected {
		got = append(got, r.Where()+" "+r.ID+": "+r.Reason)
	}
	wantRejects := []string{
		`coco_pope_adversarial.json:3 3: label "maybe" is neither "yes" nor "no"`,
		`coco_pope_adversarial.json:4 2: duplicate question_id 2 in the adversarial questions`,
		`coco_pope_adversarial.json:6 line 6: malformed question: invalid character 'o' in literal null (expecting 'u')`,
	}
	if !reflect.DeepEqual(got, wantRejects) {
		t.Fatalf("rejects =\n%s", strings.Join(got, "\n"))
	}
}

// LLaVA-style conversations with boxes inline (normalized) or as pixel
// fields, and the records that must be refused rather than misread.
func TestLLaVAConversations(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "grounded_train.json"), `[
 {"id": "a1", "image": "000000000001.jpg", "width": 200, "height": 100, "conversations": [
   {"from": "human", "value": "<image>\nWhere is the dog?"}, {"from": "gpt", "value": "The dog is at [0.050, 0.300, 0.550, 0.700]."}]},
 {"id": 7, "image": "000000000002.jpg", "width": 200, "height": 100, "boxes": [[10, 20, 110, 70]], "conversations": [
   {"from": "human", "value": "<image>\nFind the cat."}, {"from": "gpt", "value": "Here: <box>"}]},
 {"id": "bad-ferret", "image": "000000000003.jpg", "conversations": [
   {"from": "human", "value": "<image>\nWhere is it?"}, {"from": "gpt", "value": "[120, 340, 560, 999]"}]},
 {"id": "bad-turn", "image": "000000000003.jpg", "conversations": [{"from": "system", "value": "hi"}]},
 {"id": "a1", "image": "000000000001.jpg", "conversations": [{"from": "human", "value": "again"}, {"from": "gpt", "value": "no"}]}
]`)
	res := mustRead(t, readers.FormatLLaVA, dir)
	if len(res.Instructions) != 2 {
		t.Fatalf("instructions = %+v", res.Instructions)
	}
	a := res.Instructions[0]
	if a.ID != "a1" || a.Stage != "stage3" || a.Task != "conversation" || a.Split != "train" ||
		!reflect.DeepEqual(a.Images, []model.ImageRef{{Kind: "image", Path: "000000000001.jpg", Width: 200, Height: 100}}) {
		t.Fatalf("a1 = %+v", a)
	}
	// [0.05, 0.3, 0.55, 0.7] of a 200x100 image padded to 200x200.
	if len(a.Answer.Boxes) != 1 || !near4(a.Answer.Boxes[0], [4]float64{10, 10, 110, 90}) {
		t.Fatalf("a1 answer boxes = %v", a.Answer.Boxes)
	}
	b := res.Instructions[1]
	wantText := "Here: " + model.FormatBox(model.Normalize(dataset.Box{X1: 10, Y1: 20, X2: 110, Y2: 70}, 200, 100))
	if b.ID != "7" || b.Conversations[1].Value != wantText || !reflect.DeepEqual(b.Answer.Boxes, [][4]float64{{10, 20, 110, 70}}) {
		t.Fatalf("7 = %+v", b)
	}
	reasons := map[string]string{}
	for _, r := range res.Rejected {
		if r.File != "grounded_train.json" {
			t.Errorf("reject without its file: %+v", r)
		}
		reasons[r.ID] = r.Reason
	}
	want := map[string]string{
		"bad-ferret": "conversations[1]: box [120, 340, 560, 999] is not normalized to [0, 1]",
		"bad-turn":   `conversations[0] is from "system", want "human" or "gpt"`,
		"a1":         "duplicate id",
	}
	if !reflect.DeepEqual(reasons, want) {
		t.Fatalf("rejects = %v", reasons)
	}
	if len(res.Dataset.Images) != 2 {
		t.Fatalf("images = %+v", res.Dataset.Images)
	}
}

func near4(a, b [4]float64) bool {
	for i := range a {
		if d := a[i] - b[i]; d > 1e-9 || d < -1e-9 {
			return false
		}
	}
	return true
}

// What synth writes (gzip JSONL of model.Record) reads back as the same
// records, byte for byte once re-encoded as synth encodes them.
func TestSynthShardsRoundTrip(t *testing.T) {
	tmp := t.TempDir()
	ds, err := synthtest.World(filepath.Join(tmp, "world"), synthtest.Options{Seed: 4, Images: 24, Size: 64, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := blob.NewLocal(filepath.Join(tmp, "blob"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m, err := synth.Build(ctx, ds, synth.BuildOptions{DatasetID: "ds-roundtrip", Seed: 2, Samples: 400, Workers: 1}, b, "sets/rt", nil)
	if err != nil {
		t.Fatal(err)
	}
	var want []*model.Record
	if err := synth.ReadRecords(ctx, b, m, nil, func(r *model.Record) error { want = append(want, r); return nil }); err != nil {
		t.Fatal(err)
	}
	shards, err := b.Path("sets/rt/shards")
	if err != nil {
		t.Fatal(err)
	}
	res := mustRead(t, readers.FormatLLaVA, shards)
	if len(res.Rejected) != 0 {
		t.Fatalf("%d rejected, first %+v", len(res.Rejected), res.Rejected[0])
	}
	if len(res.Instructions) != len(want) || len(want) < 100 {
		t.Fatalf("read back %d records, synth wrote %d", len(res.Instructions), len(want))
	}
	// The reader reads shards in name order, synth's manifest in its own:
	// compare by id.
	byID := map[string]*model.Record{}
	for _, r := range want {
		byID[r.ID] = r
	}
	tasks := map[string]bool{}
	for i := range res.Instructions {
		got := &res.Instructions[i]
		w := byID[got.ID]
		if w == nil || !reflect.DeepEqual(got, w) {
			t.Fatalf("record %s read back as\n%+v\nwant\n%+v", got.ID, got, w)
		}
		tasks[got.Task] = true
	}
	if len(tasks) < 5 {
		t.Fatalf("only tasks %v: the round trip should cover every stage", tasks)
	}
	// Byte for byte: encode as synth does and compare with the shard lines.
	lines := map[string][]byte{}
	for _, sh := range m.Shards {
		f, err := b.Open(sh.Key)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(zr)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			var id struct {
				ID string `json:"id"`
			}
			json.Unmarshal(sc.Bytes(), &id)
			lines[id.ID] = append([]byte(nil), sc.Bytes()...)
		}
		f.Close()
		if sc.Err() != nil && sc.Err() != io.EOF {
			t.Fatal(sc.Err())
		}
	}
	for i := range res.Instructions {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(&res.Instructions[i]); err != nil {
			t.Fatal(err)
		}
		if got := bytes.TrimRight(buf.Bytes(), "\n"); !bytes.Equal(got, lines[res.Instructions[i].ID]) {
			t.Fatalf("record %s re-encodes as\n%s\nsynth wrote\n%s", res.Instructions[i].ID, got, lines[res.Instructions[i].ID])
		}
	}
	_ = os.Remove
}
