package readers

import (
	"bytes"
	"context"
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
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // third-party fixtures may be absent
		}
		// Small seeds keep the fuzzer fast: minimizing a large new input
		// stalls it for up to a minute.
		if len(b) > 8<<10 {
			b = b[:8<<10]
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
		if err := decodeODVG(context.Background(), bytes.NewReader(data), "train", "", map[string]string{"0": "dog"}, b); err != nil {
			t.Fatalf("decodeODVG from memory returned %v: bad lines must be rejects", err)
		}
		checkDataset(t, b)
	})
}
