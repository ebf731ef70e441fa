package validate

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
)

func writePNG(t *testing.T, p string, w, h int) {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	img.Set(0, 0, color.RGBA{255, 0, 0, 255})
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	writeFile(t, p, buf.Bytes())
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// hugePNGHeader is a PNG signature and a valid IHDR chunk declaring w x h
// pixels, and nothing else: enough for image.DecodeConfig.
func hugePNGHeader(w, h uint32) []byte {
	var ihdr bytes.Buffer
	ihdr.WriteString("IHDR")
	_ = binary.Write(&ihdr, binary.BigEndian, w)
	_ = binary.Write(&ihdr, binary.BigEndian, h)
	ihdr.Write([]byte{8, 2, 0, 0, 0})
	var out bytes.Buffer
	out.WriteString("\x89PNG\r\n\x1a\n")
	_ = binary.Write(&out, binary.BigEndian, uint32(13))
	out.Write(ihdr.Bytes())
	_ = binary.Write(&out, binary.BigEndian, crc32.ChecksumIEEE(ihdr.Bytes()))
	return out.Bytes()
}

func box(x1, y1, x2, y2 float64) dataset.Box { return dataset.Box{X1: x1, Y1: y1, X2: x2, Y2: y2} }

func TestValidate(t *testing.T) {
	root := t.TempDir()
	writePNG(t, filepath.Join(root, "img/ok.png"), 40, 30)
	writePNG(t, filepath.Join(root, "img/nosize.png"), 20, 10)
	writePNG(t, filepath.Join(root, "img/small.png"), 8, 8)
	writeFile(t, filepath.Join(root, "img/corrupt.png"), []byte("not an image at all"))
	writeFile(t, filepath.Join(root, "img/huge.png"), hugePNGHeader(100000, 100000))
	var jb bytes.Buffer
	if err := jpeg.Encode(&jb, image.NewGray(image.Rect(0, 0, 16, 12)), nil); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "img/photo.jpg"), jb.Bytes())
	if err := os.MkdirAll(filepath.Join(root, "img/dir.png"), 0o755); err != nil {
		t.Fatal(err)
	}

	ds := &dataset.Dataset{
		Root: root,
		Images: []dataset.Image{
			{ID: "1", File: "img/ok.png", Width: 40, Height: 30, Split: "train"},
			{ID: "2", File: "img/nosize.png", Split: "train"},                     // size from header
			{ID: "3", File: "img/missing.png", Width: 5, Height: 5, Split: "val"}, // missing
			{ID: "4", File: "img/corrupt.png", Width: 5, Height: 5},
			{ID: "5", File: "img/huge.png"},
			{ID: "6", File: "img/small.png", Width: 9, Height: 8}, // mismatch
			{ID: "7", File: "../outside.png", Width: 5, Height: 5},
			{ID: "8", File: "/etc/passwd", Width: 5, Height: 5},
			{ID: "9", File: "img\\..\\..\\x.png", Width: 5, Height: 5},
			{ID: "1", File: "img/ok.png", Width: 40, Height: 30}, // duplicate
			{ID: "10", File: "img/photo.jpg", Split: "test"},
			{ID: "11", File: "img/dir.png", Width: 5, Height: 5},
			{ID: "12", File: "img/ok.png", Width: 40, Height: 30, Split: "bad\xffsplit"},
		},
		Objects: []dataset.Object{
			{ID: "o1", ImageID: "1", Category: "cat", Box: box(1, 1, 10, 10)},
			{ID: "o2", ImageID: "1", Category: "cat", Box: box(-0.5, 0, 40.8, 30)}, // clipped
			{ID: "o3", ImageID: "1", Category: "cat", Box: box(30, 20, 45, 29)},    // outside
			{ID: "o4", ImageID: "1", Category: "cat", Box: box(5, 5, 5, 9)},        // zero area
			{ID: "o5", ImageID: "1", Category: "cat", Box: box(9, 9, 3, 12)},       // negative
			{ID: "o6", ImageID: "3", Category: "cat", Box: box(1, 1, 2, 2)},        // image rejected
			{ID: "o7", ImageID: "99", Category: "cat", Box: box(1, 1, 2, 2)},       // unknown image
			{ID: "o1", ImageID: "1", Category: "dog", Box: box(1, 1, 2, 2)},        // duplicate
			{ID: "o8", ImageID: "1", Category: "ca\xfft", Box: box(1, 1, 2, 2)},    // bad bytes
			{ID: "o9", ImageID: "1", Category: "cat\uFFFD", Box: box(1, 1, 2, 2)},  // replacement char
			{ID: "o10", ImageID: "2", Category: "cat", Box: box(1, 1, 20, 10)},     // fits header size
			{ID: "o11", ImageID: "1", Category: "cat", Box: box(40, 0, 40.5, 5)},   // zero after clipping
			{ID: "o12", ImageID: "1", Category: " ", Box: box(1, 1, 2, 2)},         // empty category
			{ID: "o13", ImageID: "10", Category: "x", Attributes: map[string]string{"k": "v\x00"}, Box: box(1, 1, 2, 2)},
			{ID: "o14", ImageID: "1", Category: "cat", Box: box(math.NaN(), 1, 10, 10)},   // NaN passes every comparison
			{ID: "o15", ImageID: "1", Category: "cat", Box: box(1, 1, 10, math.Inf(1))},   // +Inf
			{ID: "o16", ImageID: "1", Category: "cat", Box: box(math.Inf(-1), 1, 10, 10)}, // -Inf
		},
		Refs: []dataset.Ref{
			{ID: "r1", ImageID: "1", ObjectID: "o1", Sentences: []string{"the cat"}, Split: "train"},
			{ID: "r2", ImageID: "1", ObjectID: "o3", Sentences: []string{"x"}},         // object rejected
			{ID: "r3", ImageID: "3", ObjectID: "o6", Sentences: []string{"x"}},         // image rejected
			{ID: "r4", ImageID: "1", ObjectID: "o10", Sentences: []string{"x"}},        // object in image 2
			{ID: "r5", ImageID: "1", ObjectID: "o1", Sentences: []string{"bad \xc3("}}, // invalid UTF-8
			{ID: "r1", ImageID: "1", ObjectID: "o1", Sentences: []string{"dup"}},
			{ID: "r6", ImageID: "1", ObjectID: "o1"},
			{ID: "r7", ImageID: "1", ObjectID: "nope", Sentences: []string{"x"}},
		},
		Relations: []dataset.Relation{
			{ID: "l1", ImageID: "1", SubjectID: "o1", Predicate: "left of", ObjectID: "o2"},
			{ID: "l2", ImageID: "1", SubjectID: "o1", Predicate: "on", ObjectID: "o4"},
			{ID: "l3", ImageID: "1", SubjectID: "o1", Predicate: "", ObjectID: "o2"},
		},
		Regions: []dataset.Region{
			{ID: "g1", ImageID: "10", Phrase: "a photo", Box: box(0, 0, 16, 12)},
			{ID: "g2", ImageID: "10", Phrase: "too wide", Box: box(0, 0, 18, 12)},
			{ID: "g3", ImageID: "5", Phrase: "huge", Box: box(0, 0, 1, 1)},
		},
	}
	prior := []readers.Reject{{Kind: "object", ID: "o0", Reason: "unknown category id \"99\""}}
	var progressed int64
	rep, err := Dataset(context.Background(), ds, prior, Options{Root: root, Workers: 3, Progress: func(done, total int64) { progressed = done }})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range rep.Rejected {
		key := r.Kind + " " + r.ID
		if _, dup := got[key]; dup {
			key += "#2"
		}
		got[key] = r.Reason
	}
	want := map[string]string{
		"object o0":   "unknown category id",
		"image 3":     ReasonMissingFile,
		"image 4":     ReasonCorruptImage,
		"image 5":     ReasonImageTooLarge,
		"image 6":     ReasonSizeMismatch,
		"image 7":     ReasonPathTraversal,
		"image 8":     ReasonPathTraversal,
		"image 9":     ReasonPathTraversal,
		"image 1":     ReasonDuplicateID,
		"image 11":    ReasonNotRegular,
		"image 12":    ReasonNonUTF8,
		"object o3":   ReasonBoxOutside,
		"object o4":   ReasonBoxArea,
		"object o5":   ReasonBoxArea,
		"object o6":   ReasonImageRejected,
		"object o7":   ReasonUnknownImage,
		"object o1":   ReasonDuplicateID,
		"object o8":   ReasonNonUTF8,
		"object o9":   ReasonNonUTF8,
		"object o11":  ReasonBoxArea,
		"object o12":  ReasonEmptyText,
		"object o13":  ReasonNonUTF8,
		"object o14":  ReasonBoxNonFinite,
		"object o15":  ReasonBoxNonFinite,
		"object o16":  ReasonBoxNonFinite,
		"ref r2":      ReasonObjectRejected,
		"ref r3":      ReasonImageRejected,
		"ref r4":      ReasonImageMismatch,
		"ref r5":      ReasonNonUTF8,
		"ref r1":      ReasonDuplicateID,
		"ref r6":      ReasonEmptyText,
		"ref r7":      ReasonUnknownObject,
		"relation l2": ReasonObjectRejected,
		"relation l3": ReasonEmptyText,
		"region g2":   ReasonBoxOutside,
		"region g3":   ReasonImageRejected,
	}
	for k, w := range want {
		if !strings.HasPrefix(got[k], w) {
			t.Errorf("%s: reason %q, want %q", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		for k, r := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected reject %s: %s", k, r)
			}
		}
	}
	// Kept records.
	ids := func(n int, f func(i int) string) string {
		var s []string
		for i := 0; i < n; i++ {
			s = append(s, f(i))
		}
		return strings.Join(s, ",")
	}
	if g := ids(len(ds.Images), func(i int) string { return ds.Images[i].ID }); g != "1,2,10" {
		t.Errorf("kept images %s", g)
	}
	if g := ids(len(ds.Objects), func(i int) string { return ds.Objects[i].ID }); g != "o1,o2,o10" {
		t.Errorf("kept objects %s", g)
	}
	if g := ids(len(ds.Refs), func(i int) string { return ds.Refs[i].ID }); g != "r1" {
		t.Errorf("kept refs %s", g)
	}
	if len(ds.Relations) != 1 || len(ds.Regions) != 1 {
		t.Errorf("kept relations %v regions %v", ds.Relations, ds.Regions)
	}
	// Header sizes filled in, hashes set, the small overshoot clipped.
	if im := ds.Images[1]; im.Width != 20 || im.Height != 10 || len(im.SHA256) != 64 {
		t.Errorf("image 2 = %+v", im)
	}
	if im := ds.Images[2]; im.Width != 16 || im.Height != 12 {
		t.Errorf("jpeg = %+v", im)
	}
	if ds.Objects[1].Box != box(0, 0, 40, 30) || rep.Clipped != 1 {
		t.Errorf("clipped box %+v, clipped %d", ds.Objects[1].Box, rep.Clipped)
	}
	total := int64(13 + 17 + 8 + 3 + 3 + 1)
	if rep.Records != total || len(rep.Rejected) != len(want) {
		t.Errorf("records %d rejected %d", rep.Records, len(rep.Rejected))
	}
	if bf := rep.BadFraction(); bf != float64(len(want))/float64(total) {
		t.Errorf("bad fraction %v", bf)
	}
	if rep.ByReason()[ReasonPathTraversal] != 3 {
		t.Errorf("by reason %v", rep.ByReason())
	}
	if progressed != 8 { // images that passed the lexical checks
		t.Errorf("progress ended at %d", progressed)
	}
}

func TestSkipImageFiles(t *testing.T) {
	ds := &dataset.Dataset{
		Images:  []dataset.Image{{ID: "1", File: "nowhere.png", Width: 10, Height: 10}, {ID: "2", File: "x.png"}},
		Objects: []dataset.Object{{ID: "a", ImageID: "1", Category: "c", Box: box(0, 0, 10, 10)}},
	}
	rep, err := Dataset(context.Background(), ds, nil, Options{Root: t.TempDir(), SkipImageFiles: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Images) != 1 || len(rep.Rejected) != 1 || !strings.HasPrefix(rep.Rejected[0].Reason, ReasonSizeUnknown) {
		t.Fatalf("images %+v rejects %+v", ds.Images, rep.Rejected)
	}
	if ds.Images[0].SHA256 != "" {
		t.Fatal("hashed without reading")
	}
}

func TestSafePath(t *testing.T) {
	for p, want := range map[string]bool{
		"a.png": true, "a/b/c.png": true, "a/../b.png": true, "./a.png": true,
		"": false, ".": false, "..": false, "../a.png": false, "a/../../b.png": false, "/abs.png": false,
		"a\\b.png": false, "a\x00.png": false,
	} {
		if got := SafePath(p); got != want {
			t.Errorf("SafePath(%q) = %v", p, got)
		}
	}
}

// An image file over MaxImageBytes is rejected by its size on disk, before
// it is decoded; one at the limit is kept.
func TestImageByteLimit(t *testing.T) {
	root := t.TempDir()
	writePNG(t, filepath.Join(root, "a.png"), 8, 8)
	st, err := os.Stat(filepath.Join(root, "a.png"))
	if err != nil {
		t.Fatal(err)
	}
	ds := &dataset.Dataset{Root: root, Images: []dataset.Image{{ID: "1", File: "a.png", Width: 8, Height: 8}}}
	rep, err := Dataset(context.Background(), ds, nil, Options{Root: root, MaxImageBytes: st.Size()})
	if err != nil || len(rep.Rejected) != 0 {
		t.Fatalf("at the limit: %v %+v", err, rep)
	}
	ds = &dataset.Dataset{Root: root, Images: []dataset.Image{{ID: "1", File: "a.png", Width: 8, Height: 8}}}
	rep, err = Dataset(context.Background(), ds, nil, Options{Root: root, MaxImageBytes: st.Size() - 1})
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%s: %d bytes > %d", ReasonImageTooLarge, st.Size(), st.Size()-1)
	if len(rep.Rejected) != 1 || rep.Rejected[0].Reason != want {
		t.Fatalf("rejects %+v, want one %q", rep.Rejected, want)
	}
}
