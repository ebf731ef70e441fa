package synth_test

import (
	"image/color"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/synth"
)

// Each test below re-derives the answer of every record of one direction
// from the dataset alone and compares it with what synth wrote.

func needRecords(t *testing.T, recs []*model.Record, min int) {
	t.Helper()
	if len(recs) < min {
		t.Fatalf("only %d records, want at least %d", len(recs), min)
	}
}

// T->C: the answer box equals the referent's box after the codec round
// trip, and the expression in the prompt selects exactly the referent.
func TestTextToCoordinates(t *testing.T) {
	f := sharedSet(t)
	recs := f.of(synth.TaskREC)
	needRecords(t, recs, 100)
	fromRefs := map[bool]int{}
	for _, r := range recs {
		if r.Direction != synth.DirTC || r.Stage != synth.Stage2 {
			t.Fatalf("%s: direction %q stage %q", r.ID, r.Direction, r.Stage)
		}
		o := f.objs[r.Lineage.AnnotationIDs[0]]
		if o == nil || o.ImageID != r.Lineage.ImageID {
			t.Fatalf("%s: referent %v not an object of the image", r.ID, r.Lineage.AnnotationIDs)
		}
		im := f.img[o.ImageID]
		want := model.FormatBox(model.Normalize(o.Box, im.Width, im.Height))
		if got := lastGPT(r); got != want {
			t.Fatalf("%s: answer %q, want %q", r.ID, got, want)
		}
		if back := f.parseBoxPixels(t, lastGPT(r), im.ID); !near(boxOf(back), boxOf(o.Box), codecTol(im.Width, im.Height)) {
			t.Fatalf("%s: round trip %v, referent %v", r.ID, back, o.Box)
		}
		if len(r.Answer.Boxes) != 1 || r.Answer.Boxes[0] != boxOf(o.Box) {
			t.Fatalf("%s: structured answer %v, want %v", r.ID, r.Answer.Boxes, o.Box)
		}
		expr := r.Answer.Phrases[0]
		if !strings.Contains(humanText(r), expr) {
			t.Fatalf("%s: expression %q not in prompt %q", r.ID, expr, humanText(r))
		}
		if sel := f.resolve(im.ID, expr); len(sel) != 1 || sel[0] != o {
			t.Fatalf("%s: expression %q selects %d objects, want exactly the referent %s", r.ID, expr, len(sel), o.ID)
		}
		// A dataset sentence is credited to its ref; each referent's
		// distinct expressions (its refs' sentences and the synthesized
		// minimal one) are drawn alike.
		var refID string
		withRefs := false
		for _, rf := range f.ds.Refs {
			if rf.ObjectID == o.ID {
				withRefs = true
				if refID == "" && slices.Contains(rf.Sentences, expr) {
					refID = rf.ID
				}
			}
		}
		if refID != "" && (len(r.Lineage.AnnotationIDs) != 2 || r.Lineage.AnnotationIDs[1] != refID) {
			t.Fatalf("%s: expression %q is ref %s's, lineage %v", r.ID, expr, refID, r.Lineage.AnnotationIDs)
		}
		if withRefs {
			fromRefs[refID != ""]++
		}
	}
	if n := fromRefs[true] + fromRefs[false]; n < 20 || 2*fromRefs[true] <= n {
		t.Fatalf("of %d records on referents with refs, %d ask a ref's sentence: want more than half", n, fromRefs[true])
	}
}

// resolve interprets an expression of the test world: optional "the", an
// optional extreme-position word, attribute values, then the category (or a
// ref sentence "color category").
func (f *fixture) resolve(imgID, expr string) []*dataset.Object {
	words := strings.Fields(strings.TrimPrefix(expr, "the "))
	pos := ""
	if len(words) > 0 && strings.HasSuffix(words[0], "most") {
		pos, words = words[0], words[1:]
	}
	cat, attrs := words[len(words)-1], words[:len(words)-1]
	var match []*dataset.Object
	for _, o := range f.byIm[imgID] {
		if o.Category != cat {
			continue
		}
		ok := true
		for _, a := range attrs {
			if a != o.Attributes["size"] && a != o.Attributes["color"] && a != o.Attributes["texture"] {
				ok = false
			}
		}
		if ok {
			match = append(match, o)
		}
	}
	if pos == "" || len(match) < 2 {
		return match
	}
	key := func(o *dataset.Object) float64 {
		switch pos {
		case "leftmost":
			return (o.Box.X1 + o.Box.X2) / 2
		case "rightmost":
			return -(o.Box.X1 + o.Box.X2) / 2
		case "topmost":
			return (o.Box.Y1 + o.Box.Y2) / 2
		}
		return -(o.Box.Y1 + o.Box.Y2) / 2
	}
	slices.SortFunc(match, func(a, b *dataset.Object) int {
		switch {
		case key(a) < key(b):
			return -1
		case key(a) > key(b):
			return 1
		}
		return 0
	})
	if key(match[0]) == key(match[1]) {
		return match // a tie selects nothing unique
	}
	return match[:1]
}

// C->T: the object at the prompt's box is described by the answer.
func TestCoordinatesToText(t *testing.T) {
	f := sharedSet(t)
	recs := f.of(synth.TaskREG)
	needRecords(t, recs, 100)
	for _, r := range recs {
		b := f.parseBoxPixels(t, boxRe.FindString(humanText(r)), r.Lineage.ImageID)
		o, iou := f.objectAt(r.Lineage.ImageID, b)
		if o == nil || iou < 0.9 {
			t.Fatalf("%s: no object at the prompt's box %v (best IoU %.2f)", r.ID, b, iou)
		}
		if o.ID != r.Lineage.AnnotationIDs[0] {
			t.Fatalf("%s: box selects %s, lineage says %s", r.ID, o.ID, r.Lineage.AnnotationIDs[0])
		}
		if r.Answer.Text != desc(o) || !strings.Contains(lastGPT(r), desc(o)) {
			t.Fatalf("%s: answer %q / %q, want the description %q", r.ID, r.Answer.Text, lastGPT(r), desc(o))
		}
	}
}

// I->T: the crop is the pixels of its box in the source image, centred on
// the object the answer names.
func TestCropToText(t *testing.T) {
	f := sharedSet(t)
	recs := f.of(synth.TaskCropName)
	needRecords(t, recs, 100)
	for i, r := range recs {
		if len(r.Images) != 1 || r.Images[0].Kind != "crop" {
			t.Fatalf("%s: images %+v, want one crop", r.ID, r.Images)
		}
		c := r.Images[0]
		o := f.objectForCrop(c.Source, *c.CropBox, r.Scale)
		if o == nil || o.ID != r.Lineage.AnnotationIDs[0] {
			t.Fatalf("%s: crop box %v at scale %s is not the crop of %v", r.ID, *c.CropBox, r.Scale, r.Lineage.AnnotationIDs)
		}
		if r.Answer.Text != desc(o) || !strings.Contains(lastGPT(r), desc(o)) {
			t.Fatalf("%s: answer %q, want %q", r.ID, lastGPT(r), desc(o))
		}
		if i < 40 { // pixel check on a sample: decoding every crop is slow
			f.checkCropPixels(t, r.ID, c)
		}
	}
}

func (f *fixture) checkCropPixels(t *testing.T, id string, c model.ImageRef) {
	t.Helper()
	src := decodeFile(t, f.ds.Root+"/"+f.img[c.Source].File)
	crop := decodeBlobPNG(t, f.b, c.Path)
	b := crop.Bounds()
	if b.Dx() != c.Width || b.Dy() != c.Height || float64(b.Dx()) != c.CropBox[2]-c.CropBox[0] || float64(b.Dy()) != c.CropBox[3]-c.CropBox[1] {
		t.Fatalf("%s: crop %dx%d, ref says %dx%d box %v", id, b.Dx(), b.Dy(), c.Width, c.Height, *c.CropBox)
	}
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			got := color.NRGBAModel.Convert(crop.At(b.Min.X+x, b.Min.Y+y))
			want := color.NRGBAModel.Convert(src.At(int(c.CropBox[0])+x, int(c.CropBox[1])+y))
			if got != want {
				t.Fatalf("%s: crop pixel (%d,%d) = %v, source %v", id, x, y, got, want)
			}
		}
	}
}

// T->I: the answer index points at the crop of the described object; no
// other candidate fits the description; every candidate is of the split.
func TestTextToCrop(t *testing.T) {
	f := sharedSet(t)
	recs := f.of(synth.TaskCropPick)
	needRecords(t, recs, 100)
	for _, r := range recs {
		checkPick(t, f, r, 0, func(o *dataset.Object) bool {
			return containsPhrase(humanText(r), "the "+desc(o))
		})
	}
}

// C->I: the answer index points at the crop of the object at the prompt's
// box.
func TestCoordinatesToCrop(t *testing.T) {
	f := sharedSet(t)
	recs := f.of(synth.TaskBoxPick)
	needRecords(t, recs, 100)
	for _, r := range recs {
		if r.Images[0].Kind != "image" || r.Images[0].Path != f.img[r.Lineage.ImageID].File {
			t.Fatalf("%s: first image %+v, want the full image", r.ID, r.Images[0])
		}
		b := f.parseBoxPixels(t, boxRe.FindString(humanText(r)), r.Lineage.ImageID)
		target, iou := f.objectAt(r.Lineage.ImageID, b)
		if iou < 0.9 {
			t.Fatalf("%s: no object at %v", r.ID, b)
		}
		checkPick(t, f, r, 1, func(o *dataset.Object) bool { return o == target })
	}
}

// containsPhrase reports whether phrase occurs in s as whole words.
func containsPhrase(s, phrase string) bool {
	for i := 0; ; {
		j := strings.Index(s[i:], phrase)
		if j < 0 {
			return false
		}
		end := i + j + len(phrase)
		if end == len(s) || !('a' <= s[end] && s[end] <= 'z') {
			return true
		}
		i = i + j + 1
	}
}

// checkPick verifies a pick record whose candidates start at images[off]:
// exactly the candidate at the answer index satisfies isTarget.
func checkPick(t *testing.T, f *fixture, r *model.Record, off int, isTarget func(*dataset.Object) bool) {
	t.Helper()
	if r.Answer.Index == nil {
		t.Fatalf("%s: no answer index", r.ID)
	}
	cands := r.Images[off:]
	if len(cands) != 3 { // the default BuildOptions.Candidates
		t.Fatalf("%s: %d candidates, want 3", r.ID, len(cands))
	}
	at := *r.Answer.Index
	if lastGPT(r) != strconv.Itoa(at+1) && !strings.Contains(lastGPT(r), " "+strconv.Itoa(at+1)+".") {
		t.Fatalf("%s: answer %q does not name candidate %d", r.ID, lastGPT(r), at+1)
	}
	for i, c := range cands {
		if c.Kind != "crop" || f.img[c.Source] == nil || f.img[c.Source].Split != r.Split {
			t.Fatalf("%s: candidate %d %+v is not a crop of the record's split %s", r.ID, i, c, r.Split)
		}
		o := f.objectForCrop(c.Source, *c.CropBox, r.Scale)
		if o == nil {
			t.Fatalf("%s: candidate %d box %v is no object's crop at %s", r.ID, i, *c.CropBox, r.Scale)
		}
		if i == at && (c.Source != r.Lineage.ImageID || !isTarget(o)) {
			t.Fatalf("%s: answer candidate %d is %s of %s, not the target", r.ID, i+1, o.ID, c.Source)
		}
		if i != at && isTarget(o) {
			t.Fatalf("%s: candidate %d (%s) also fits, the pick is ambiguous", r.ID, i+1, desc(o))
		}
	}
}

// I->C: the answer box is the crop's box in the full image.
func TestCropToCoordinates(t *testing.T) {
	f := sharedSet(t)
	recs := f.of(synth.TaskCropLocate)
	needRecords(t, recs, 100)
	for _, r := range recs {
		if len(r.Images) != 2 || r.Images[0].Kind != "image" || r.Images[1].Kind != "crop" || r.Images[1].Source != r.Lineage.ImageID {
			t.Fatalf("%s: images %+v, want the full image then its crop", r.ID, r.Images)
		}
		im := f.img[r.Lineage.ImageID]
		cb := *r.Images[1].CropBox
		want := model.FormatBox(model.Normalize(dataset.Box{X1: cb[0], Y1: cb[1], X2: cb[2], Y2: cb[3]}, im.Width, im.Height))
		if got := lastGPT(r); got != want {
			t.Fatalf("%s: answer %q, want the crop box %q", r.ID, got, want)
		}
		if back := f.parseBoxPixels(t, lastGPT(r), im.ID); !near(boxOf(back), cb, codecTol(im.Width, im.Height)) {
			t.Fatalf("%s: round trip %v, crop box %v", r.ID, back, cb)
		}
		if r.Answer.Boxes[0] != cb {
			t.Fatalf("%s: structured answer %v, want %v", r.ID, r.Answer.Boxes[0], cb)
		}
		if o := f.objectForCrop(im.ID, cb, r.Scale); o == nil || o.ID != r.Lineage.AnnotationIDs[0] {
			t.Fatalf("%s: crop is not the %s crop of %v", r.ID, r.Scale, r.Lineage.AnnotationIDs)
		}
	}
}
