package readers

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// Fuzz targets: every parser must return an error or a dataset, never
// panic, hang or emit a non-finite box. Seeds are this package's testdata
// plus the third-party fixtures when they are present.

func addSeeds(f *testing.F, paths ...string) {
	addSeedsMax(f, 8<<10, paths...)
}

// addSeedsMax adds the first max bytes of each file as a seed.
func addSeedsMax(f *testing.F, max int, paths ...string) {
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // third-party fixtures may be absent
		}
		// Small seeds keep the fuzzer fast: minimizing a large new input
		// stalls it for up to a minute.
		if len(b) > max {
			b = b[:max]
		}
		f.Add(b)
	}
}

func checkDataset(t *testing.T, b *builder) {
	t.Helper()
	finite := func(x dataset.Box) bool {
		for _, v := range []float64{x.X1, x.Y1, x.X2, x.Y2} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return false
			}
		}
		return true
	}
	for _, o := range b.ds.Objects {
		if o.ID == "" || !finite(o.Box) {
			t.Fatalf("bad object %+v", o)
		}
	}
	for _, r := range b.ds.Regions {
		if r.ID == "" || !finite(r.Box) {
			t.Fatalf("bad region %+v", r)
		}
	}
	for _, im := range b.ds.Images {
		if im.Width < 0 || im.Height < 0 {
			t.Fatalf("bad image %+v", im)
		}
	}
}

func fixture(parts ...string) string {
	return filepath.Join(append([]string{"..", "..", "..", "..", "shared", "fixtures"}, parts...)...)
}

func FuzzCOCO(f *testing.F) {
	addSeeds(f, "testdata/coco/annotations/instances_val2017.json", "testdata/refcoco/instances.json",
		fixture("coco", "instances_val2017_1img-sample.json"))
	f.Add([]byte(`{"categories":[{"id":1,"name":"a"}],"images":[{"id":1,"file_name":"x","width":2,"height":2}],"annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[0,0,1,1]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newBuilder(FormatCOCO, "/")
		if err := decodeCOCO(context.Background(), bytes.NewReader(data), "train", "images", b); err != nil {
			return
		}
		checkDataset(t, b)
	})
}

func FuzzRefPickle(f *testing.F) {
	addSeeds(f, "testdata/refcoco/refs(unc).p", "testdata/refcoco/refs(google).p")
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newBuilder(FormatRefCOCO, "/")
		pending, err := decodeRefsPickle(bytes.NewReader(data), nil, b)
		if err != nil {
			return
		}
		addREFERRefs(pending, b, 0, true)
		for _, r := range b.ds.Refs {
			if r.ObjectID == "" || len(r.Sentences) == 0 {
				t.Fatalf("bad ref %+v", r)
			}
		}
	})
}

func FuzzRefJSON(f *testing.F) {
	addSeeds(f, "testdata/refcoco_json/refs(unc).json", fixture("refcoco", "minigptv2_eval_refcocog_val.json"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newBuilder(FormatRefCOCO, "/")
		pending, err := decodeRefsJSON(context.Background(), bytes.NewReader(data), nil, b, "val", "images")
		if err != nil {
			return
		}
		addREFERRefs(pending, b, 0, true)
		checkDataset(t, b)
	})
}

func FuzzVG(f *testing.F) {
	addSeeds(f, "testdata/vg/objects.json", "testdata/vg/relationships.json", "testdata/vg/region_descriptions.json",
		fixture("visual_genome", "hf_dummy_v1.2_relationships.json"), fixture("visual_genome", "hf_dummy_v1.2_image_data.json"))
	f.Fuzz(func(t *testing.T, data []byte) {
		st := newVGState(newBuilder(FormatVG, "/"), "")
		for _, kind := range vgKinds {
			_ = decodeVG(context.Background(), bytes.NewReader(data), kind, st)
		}
		checkDataset(t, st.b)
		seen := map[string]bool{}
		for _, o := range st.b.ds.Objects {
			seen[o.ID] = true
		}
		for _, r := range st.b.ds.Relations {
			if !seen[r.SubjectID] || !seen[r.ObjectID] {
				t.Fatalf("relation %+v points at an object the reader did not keep", r)
			}
		}
	})
}

func FuzzFlickr(f *testing.F) {
	sent, _ := os.ReadFile("testdata/flickr/Sentences/1000.txt")
	ann, _ := os.ReadFile("testdata/flickr/Annotations/1000.xml")
	f.Add(sent, ann)
	if s2, err := os.ReadFile(fixture("flickr30k_entities", "65567.txt")); err == nil {
		a2, _ := os.ReadFile(fixture("flickr30k_entities", "65567.xml"))
		f.Add(s2, a2)
	}
	f.Fuzz(func(t *testing.T, sentences, annotation []byte) {
		b := newBuilder(FormatFlickr30k, "/")
		phrases, err := decodeFlickrSentences(bytes.NewReader(sentences), "1", b)
		if err != nil {
			t.Fatalf("sentences from memory cannot fail with I/O: %v", err)
		}
		var x flickrXML
		if err := decodeFlickrXML(bytes.NewReader(annotation), &x); err != nil {
			return
		}
		addFlickrImage(b, "1", "train", "", &x, phrases)
		checkDataset(t, b)
	})
}

func FuzzODVG(f *testing.F) {
	addSeeds(f, "testdata/odvg/coco_train_odvg.jsonl", "testdata/odvg/grit_val_odvg.jsonl")
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newBuilder(FormatODVG, "/")
		err := decodeODVG(context.Background(), bytes.NewReader(data), "train", "", map[string]string{"0": "dog"}, b)
		// Only a cut last line (no newline after it) fails the file.
		if err != nil && !(errors.Is(err, errTruncated) && !bytes.HasSuffix(data, []byte("\n"))) {
			t.Fatalf("decodeODVG from memory returned %v: bad lines must be rejects", err)
		}
		checkDataset(t, b)
		checkLines(t, b)
	})
}

// checkLines: line-oriented readers give every record its line.
func checkLines(t *testing.T, b *builder) {
	t.Helper()
	for _, sg := range b.srcs {
		for k, n := range [5]int{len(b.ds.Images), len(b.ds.Objects), len(b.ds.Refs), len(b.ds.Relations), len(b.ds.Regions)} {
			if got := len(sg.lines[k]); got != n-sg.start[k] {
				t.Fatalf("%d %s records but %d lines", n-sg.start[k], kinds[k], got)
			}
		}
	}
}

func FuzzPOPE(f *testing.F) {
	// Three lines of the published file: a large seed stalls the fuzzer
	// in minimization (each new input from it takes up to a minute).
	addSeedsMax(f, 400, fixture("pope", "coco_pope_random.json"))
	f.Add([]byte(`{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"}` + "\n" +
		`{"question_id": 2, "image": "x.jpg", "text": "Is there an apple in the image?", "label": "No"}`))
	f.Add([]byte(`[{"question_id": "a", "image": "COCO_val2014_000000000001.jpg", "text": "t", "label": "no"}, {"question_id": null}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newBuilder(FormatPOPE, "/")
		b.setFile("q.json")
		p := &popeState{b: b, images: map[string]string{}, ids: map[string]bool{}}
		err := p.decode(context.Background(), bytes.NewReader(data), "random")
		if err != nil && !errors.Is(err, errTruncated) && !bytes.HasPrefix(bytes.TrimSpace(data), []byte("[")) {
			t.Fatalf("JSON Lines from memory returned %v: bad lines must be rejects", err)
		}
		images := map[string]bool{}
		for _, im := range b.ds.Images {
			if images[im.ID] {
				t.Fatalf("image %s twice", im.ID)
			}
			images[im.ID] = true
		}
		ids := map[string]bool{}
		for _, q := range b.questions {
			if q.Label != "yes" && q.Label != "no" || !images[q.ImageID] || ids[q.ID] || q.ID == "" || q.File != "q.json" {
				t.Fatalf("bad question %+v", q)
			}
			ids[q.ID] = true
		}
		checkDataset(t, b)
	})
}

func FuzzLLaVA(f *testing.F) {
	f.Add([]byte(`[{"id": "a1", "image": "1.jpg", "width": 200, "height": 100, "conversations": [{"from": "human", "value": "<image>\nWhere is the dog?"}, {"from": "gpt", "value": "At [0.050, 0.300, 0.550, 0.700]."}]},` +
		`{"id": 7, "image": ["2.jpg"], "width": 200, "height": 100, "boxes": [[10, 20, 110, 70]], "conversations": [{"from": "human", "value": "<image> cat?"}, {"from": "gpt", "value": "<box>"}]}]`))
	f.Add([]byte(`{"id":"s1","stage":"stage2","task":"crop_locate","direction":"C->I","scale":"tight","split":"train","images":[{"kind":"image","path":"images/train/0.png","width":64,"height":64},{"kind":"crop","path":"sets/x/crops/a.png","width":16,"height":16,"source":"0","crop_box":[1,2,17,18]}],"conversations":[{"from":"human","value":"<image>\n<image>\nWhere is this crop?"},{"from":"gpt","value":"[0.016, 0.031, 0.266, 0.281]"}],"answer":{"boxes":[[1,2,17,18]]},"lineage":{"dataset_id":"d","image_id":"0","annotation_ids":["3"],"source_files":{"images/train/0.png":"ab"}}}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b := newBuilder(FormatLLaVA, "/")
		b.setFile("c.json")
		l := &llavaState{b: b, images: map[string]bool{}, ids: map[string]bool{}}
		err := forEachRecord(context.Background(), bytes.NewReader(data), KindInstruction, b, func(raw []byte, pos string) { l.add(raw, pos, "c", "train") })
		if err != nil && !errors.Is(err, errTruncated) && !bytes.HasPrefix(bytes.TrimSpace(data), []byte("[")) {
			t.Fatalf("JSON Lines from memory returned %v: bad lines must be rejects", err)
		}
		if len(b.instructionSrc) != len(b.instructions) {
			t.Fatalf("%d instructions, %d places", len(b.instructions), len(b.instructionSrc))
		}
		ids := map[string]bool{}
		for _, r := range b.instructions {
			if r.ID == "" || ids[r.ID] || len(r.Conversations) == 0 || r.Stage == "" || r.Task == "" || r.Split == "" {
				t.Fatalf("bad record %+v", r)
			}
			ids[r.ID] = true
			gpt := false
			for _, turn := range r.Conversations {
				gpt = gpt || turn.From == "gpt"
				if turn.From != "gpt" && turn.From != "human" {
					t.Fatalf("turn from %q", turn.From)
				}
			}
			if !gpt {
				t.Fatalf("record %s without an answer", r.ID)
			}
			for _, bx := range r.Answer.Boxes {
				for _, v := range bx {
					if math.IsNaN(v) || math.IsInf(v, 0) {
						t.Fatalf("record %s answer box %v", r.ID, bx)
					}
				}
			}
		}
		checkDataset(t, b)
	})
}
