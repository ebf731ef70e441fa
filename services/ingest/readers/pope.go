package readers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"regexp"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// POPE question files (github.com/AoiDragon/POPE, output/coco/coco_pope_<split>.json):
// JSON Lines despite the .json extension, one question per line,
//   {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"}.
// Each question becomes a Question; its image an Image whose id is the
// COCO image id (310196), so that it matches a COCO ingest of the same
// images, with the file under val2014/ (or images/val2014/, images/, the
// root; Options.ImageDir wins). Sizes come from the image files. The split
// is the POPE sampling strategy named by the file (random, popular,
// adversarial), else "pope". A JSON list of the same objects is accepted.

// Question is one yes/no evaluation question about an image.
type Question struct {
	ID      string `json:"id"`
	ImageID string `json:"image_id"`
	Text    string `json:"text"`
	// Label is the expected answer, "yes" or "no".
	Label string `json:"label"`
	// Object is what the question asks about when it follows POPE's
	// template ("Is there a <object> in the image?"), else "".
	Object string `json:"object,omitempty"`
	// Split is the POPE sampling strategy: random, popular, adversarial.
	Split string `json:"split"`
	File  string `json:"file"`
	Line  int    `json:"line,omitempty"`
}

type popeRecord struct {
	QuestionID flexID `json:"question_id"`
	Image      string `json:"image"`
	Text       string `json:"text"`
	Label      string `json:"label"`
}

var popeObject = regexp.MustCompile(`^Is there an? (.+) in the image\?$`)

var cocoFileID = regexp.MustCompile(`^COCO_[A-Za-z]+[0-9]*_0*([0-9]+)$`)

func (r *run) readPOPEDir(files []string) error {
	if files == nil {
		match := func(n string) bool { return hasExt(n, ".json") || hasExt(n, ".jsonl") }
		files = append(r.glob("", match), r.glob("annotations", match)...)
	}
	if len(files) == 0 {
		return fmt.Errorf("%w: no POPE question files (*.json, *.jsonl) under %s", ErrFormat, r.root)
	}
	imgDir := r.imageDir("", "val2014", "images/val2014", "images")
	p := &popeState{b: r.b, imgDir: imgDir, images: map[string]string{}, ids: map[string]bool{}}
	for _, rel := range files {
		split := popeSplit(rel)
		err := r.withFile(rel, func(f io.Reader) error {
			if err := p.decode(r.ctx, f, split); err != nil {
				return formatErr(rel, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func popeSplit(rel string) string {
	base := strings.ToLower(trimExt(trimExt(path.Base(rel), ".json"), ".jsonl"))
	for _, s := range []string{"random", "popular", "adversarial"} {
		if strings.Contains(base, s) {
			return s
		}
	}
	return "pope"
}

type popeState struct {
	b      *builder
	imgDir string
	images map[string]string // image id -> file, to report one image under two names
	ids    map[string]bool   // question ids (split-qualified)
}

func (p *popeState) decode(ctx context.Context, f io.Reader, split string) error {
	return forEachRecord(ctx, f, KindQuestion, p.b, func(raw []byte, pos string) {
		p.add(raw, pos, split)
	})
}

func (p *popeState) add(raw []byte, pos, split string) {
	b := p.b
	var rec popeRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		b.reject(KindQuestion, pos, "malformed question: "+err.Error())
		return
	}
	qid := string(rec.QuestionID)
	if qid == "" {
		b.reject(KindQuestion, pos, "question without question_id")
		return
	}
	id := split + "/" + qid
	label := strings.ToLower(strings.TrimSpace(rec.Label))
	switch {
	case p.ids[id]:
		b.reject(KindQuestion, qid, fmt.Sprintf("duplicate question_id %s in the %s questions", qid, split))
		return
	case strings.TrimSpace(rec.Text) == "":
		b.reject(KindQuestion, qid, "question without text")
		return
	case label != "yes" && label != "no":
		b.reject(KindQuestion, qid, fmt.Sprintf("label %q is neither \"yes\" nor \"no\"", rec.Label))
		return
	case strings.TrimSpace(rec.Image) == "":
		b.reject(KindQuestion, qid, "question without image")
		return
	}
	imageID := strings.TrimSuffix(rec.Image, path.Ext(rec.Image))
	if m := cocoFileID.FindStringSubmatch(path.Base(imageID)); m != nil {
		imageID = m[1]
	}
	file := joinFile(p.imgDir, rec.Image)
	if prev, ok := p.images[imageID]; !ok {
		p.images[imageID] = file
		b.ds.Images = append(b.ds.Images, dataset.Image{ID: imageID, File: file, Split: dataset.SplitVal})
		b.markLines()
	} else if prev != file {
		b.reject(KindQuestion, qid, fmt.Sprintf("image %q has COCO id %s, which %q already has", rec.Image, imageID, prev))
		return
	}
	p.ids[id] = true
	q := Question{ID: id, ImageID: imageID, Text: rec.Text, Label: label, Split: split, File: b.file, Line: b.line}
	if m := popeObject.FindStringSubmatch(strings.TrimSpace(rec.Text)); m != nil {
		q.Object = m[1]
	}
	b.questions = append(b.questions, q)
}

// KindQuestion and KindInstruction name the records of the evaluation and
// instruction formats in rejects.
const (
	KindQuestion    = "question"
	KindInstruction = "instruction"
)
