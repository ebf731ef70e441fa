package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/services/ingest"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
)

// Reports on real files: every reject says where it is and shows the
// file's own values; failures name the file; names follow the help.

func writeFile(t *testing.T, p, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func writePNG(t *testing.T, p string, w, h int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, image.NewGray(image.Rect(0, 0, w, h))); err != nil {
		t.Fatal(err)
	}
}

// odvgLines writes n ODVG lines; the lines in bad have a box past the
// 100x100 image.
func odvgLines(prefix string, n int, bad ...int) string {
	var sb strings.Builder
	for i := 1; i <= n; i++ {
		x2 := 30
		for _, b := range bad {
			if b == i {
				x2 = 300
			}
		}
		fmt.Fprintf(&sb, `{"filename": "%s%d.jpg", "height": 100, "width": 100, "detection": {"instances": [{"bbox": [1, 2, %d, 40], "category": "dog"}]}}`+"\n", prefix, i, x2)
	}
	return sb.String()
}

func TestValidationRejectsSayWhereWithTheFilesValues(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a_train.jsonl"), odvgLines("im", 3, 2))
	cfg := ingest.Config{DataDir: t.TempDir(), SkipImageFiles: true}
	res, err := ingest.DryRun(context.Background(), cfg, events.IngestRequested{Format: "odvg", Path: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []readers.Reject{{Kind: "object", ID: "im2.jpg#0", File: "a_train.jsonl", Line: 2, Reason: "box outside image: bbox [1, 2, 300, 40] in 100x100"}}
	if !reflect.DeepEqual(res.Rejected, want) {
		t.Fatalf("rejected = %+v", res.Rejected)
	}

	coco := writeFile(t, filepath.Join(t.TempDir(), "annotations", "instances_val2017.json"), `{
 "images": [{"id": 1, "file_name": "1.jpg", "width": 640, "height": 480}],
 "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [285.04, 23.29, 639.74, 123.11]}],
 "categories": [{"id": 1, "name": "dog"}]}`)
	res, err = ingest.DryRun(context.Background(), cfg, events.IngestRequested{Format: "coco", Path: coco}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want = []readers.Reject{{Kind: "object", ID: "5", File: "annotations/instances_val2017.json", Reason: "box outside image: bbox [285.04, 23.29, 639.74, 123.11] in 640x480"}}
	if !reflect.DeepEqual(res.Rejected, want) {
		t.Fatalf("rejected = %+v", res.Rejected)
	}
}

// The help says the default name is the folder's.
func TestDefaultNameIsTheFolder(t *testing.T) {
	root := filepath.Join(t.TempDir(), "mycoco")
	p := writeFile(t, filepath.Join(root, "annotations", "instances_val2017.json"), `{"images": [{"id": 1, "file_name": "1.jpg", "width": 4, "height": 4}], "annotations": [], "categories": []}`)
	cfg := ingest.Config{DataDir: t.TempDir(), SkipImageFiles: true}
	for _, path := range []string{p, root} {
		res, err := ingest.DryRun(context.Background(), cfg, events.IngestRequested{Format: "coco", Path: path}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Dataset.Name != "mycoco" {
			t.Fatalf("%s: name %q, want mycoco", path, res.Dataset.Name)
		}
	}
	if got := ingest.DefaultName(p); got != "mycoco" {
		t.Fatalf("DefaultName = %q", got)
	}
}

// Too many rejects in a folder of several files: the error says which file
// and line, and nothing is recorded.
func TestTooManyRejectsNameTheFile(t *testing.T) {
	svc, pool := newService(t, ingest.Config{SkipImageFiles: true})
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a_train.jsonl"), odvgLines("a", 5))
	writeFile(t, filepath.Join(dir, "b_val.jsonl"), odvgLines("b", 5, 4, 5))
	_, err := svc.Ingest(context.Background(), events.IngestRequested{Format: "odvg", Path: dir}, nil)
	var rej *ingest.RejectedError
	if !errors.As(err, &rej) || !strings.Contains(err.Error(), "b_val.jsonl:4") {
		t.Fatalf("err = %v, want the file and line of the first reject", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM dataset_versions`); n != 0 {
		t.Fatalf("%d versions recorded by a failed ingest", n)
	}
}

// A successful ingest with rejects can list them, with file and line, and
// summarize their reasons.
func TestRejectsAreListed(t *testing.T) {
	svc, _ := newService(t, ingest.Config{SkipImageFiles: true})
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a_train.jsonl"), odvgLines("im", 30, 17))
	ctx := context.Background()
	res, err := svc.Ingest(ctx, events.IngestRequested{Format: "odvg", Path: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sum, rj, err := svc.Rejects(ctx, res.DatasetID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(sum.ByReason, map[string]int64{"box outside image": 1}) || sum.Rejected != 1 {
		t.Fatalf("summary = %+v", sum)
	}
	want := []readers.Reject{{Kind: "object", ID: "im17.jpg#0", File: "a_train.jsonl", Line: 17, Reason: "box outside image: bbox [1, 2, 300, 40] in 100x100"}}
	if !reflect.DeepEqual(rj, want) {
		t.Fatalf("rejects = %+v", rj)
	}
}

// POPE questions and LLaVA conversations are ingested over real image
// files; those whose image is rejected are rejected with it, where their
// file holds them; Load gives the rest back.
func TestQuestionsAndInstructionsIngest(t *testing.T) {
	svc, _ := newService(t, ingest.Config{})
	ctx := context.Background()

	pope := t.TempDir()
	writePNG(t, filepath.Join(pope, "val2014", "COCO_val2014_000000000001.jpg"), 64, 48)
	var lines []string
	for i := 1; i <= 40; i++ {
		img := 1
		if i == 40 {
			img = 2 // no such file
		}
		lines = append(lines, fmt.Sprintf(`{"question_id": %d, "image": "COCO_val2014_%012d.jpg", "text": "Is there a dog in the image?", "label": "yes"}`, i, img))
	}
	writeFile(t, filepath.Join(pope, "coco_pope_popular.json"), strings.Join(lines, "\n")+"\n")
	res, err := svc.Ingest(ctx, events.IngestRequested{Format: "pope", Path: pope, MaxBadFraction: 0.1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts["questions"] != 39 || res.Counts["images"] != 1 || res.Counts["rejected"] != 2 {
		t.Fatalf("counts = %v", res.Counts)
	}
	l, err := svc.LoadAll(ctx, res.DatasetID)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Questions) != 39 || l.Questions[0].ImageID != "1" || l.Questions[0].Split != "popular" {
		t.Fatalf("loaded questions %d, first %+v", len(l.Questions), l.Questions[0])
	}
	_, rj, err := svc.Rejects(ctx, res.DatasetID)
	if err != nil {
		t.Fatal(err)
	}
	if len(rj) != 2 || rj[1].Kind != readers.KindQuestion || rj[1].File != "coco_pope_popular.json" || rj[1].Line != 40 {
		t.Fatalf("rejects = %+v", rj)
	}

	llava := t.TempDir()
	writeFile(t, filepath.Join(llava, "conv_train.jsonl"),
		`{"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhere is the dog?"}, {"from": "gpt", "value": "[0.050, 0.300, 0.550, 0.700]"}]}`+"\n")
	svc2, _ := newService(t, ingest.Config{})
	writePNG(t, filepath.Join(llava, "a.png"), 200, 100)
	res, err = svc2.Ingest(ctx, events.IngestRequested{Format: "llava", Path: llava}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts["instructions"] != 1 || res.Name != filepath.Base(llava) {
		t.Fatalf("llava: %+v", res)
	}
	l, err = svc2.LoadAll(ctx, res.DatasetID)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Instructions) != 1 || l.Instructions[0].Task != "conversation" || len(l.Instructions[0].Answer.Boxes) != 0 {
		// The record gave no size: the box stays in the text, Answer.Boxes
		// needs the size the reader did not know.
		t.Fatalf("instructions = %+v", l.Instructions)
	}
}
