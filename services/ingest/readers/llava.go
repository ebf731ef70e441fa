package readers

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// LLaVA-style conversation data (the form LLaVA, GroundingGPT, Shikra and
// Ferret train and evaluate on), a JSON list or JSON Lines of
//   {"id", "image": "file.jpg" (or a list), "conversations": [{"from": "human"|"gpt", "value": "..."}]}
// with boxes either inline in the text as "[x1, y1, x2, y2]" normalized to
// [0, 1] over the image padded to a square (GroundingGPT's convention, the
// one synth writes and the model reads: model's box codec), or as
// a separate "boxes" list of pixel xyxy boxes that "<box>" placeholders in
// the text refer to in order (rewritten to the inline form; this needs the
// record's "width" and "height"). Records in synth's own form (the
// model.Record JSONL of its gzip shards, "images" instead of "image") are
// read back exactly.
//
// Each record becomes a model.Record (Result.Instructions) that a training
// stage can mix with synthesized records: Stage "stage3" and Task
// "conversation" unless the record says otherwise, Split from the record or
// the file name (default train), Answer.Boxes the pixel boxes of the last
// answer when the image size is known. Full images become dataset images
// (id and file: the path, under Options.ImageDir when set), validated and
// hashed like any other; crops (synth's "crop" images) are blob keys and
// are kept as they are.

// llavaExtra holds the fields of the LLaVA form that model.Record lacks;
// its id may be a number.
type llavaExtra struct {
	model.Record
	ID     flexID          `json:"id"`
	Image  json.RawMessage `json:"image"`
	Width  float64         `json:"width"`
	Height float64         `json:"height"`
	Boxes  [][]float64     `json:"boxes"`
}

// inlineBox finds "[a, b, c, d]" groups of four numbers in text.
var inlineBox = regexp.MustCompile(`\[\s*(-?[0-9][0-9.eE+-]*)\s*,\s*(-?[0-9][0-9.eE+-]*)\s*,\s*(-?[0-9][0-9.eE+-]*)\s*,\s*(-?[0-9][0-9.eE+-]*)\s*\]`)

func (r *run) readLLaVADir(files []string) error {
	if files == nil {
		match := func(n string) bool { return hasExt(n, ".json") || hasExt(n, ".jsonl") }
		files = append(r.glob("", match), r.glob("annotations", match)...)
	}
	if len(files) == 0 {
		return fmt.Errorf("%w: no conversation files (*.json, *.jsonl, optionally .gz) under %s", ErrFormat, r.root)
	}
	l := &llavaState{b: r.b, imgDir: strings.Trim(filepath2slash(r.opts.ImageDir), "/"), images: map[string]bool{}, ids: map[string]bool{}}
	for _, rel := range files {
		split := splitOf(trimExt(trimExt(rel, ".json"), ".jsonl"), dataset.SplitTrain)
		stem := trimExt(trimExt(path.Base(rel), ".json"), ".jsonl")
		err := r.withFile(rel, func(f io.Reader) error {
			err := forEachRecord(r.ctx, f, KindInstruction, r.b, func(raw []byte, pos string) { l.add(raw, pos, stem, split) })
			if err != nil {
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

func filepath2slash(p string) string { return strings.ReplaceAll(p, "\\", "/") }

type llavaState struct {
	b      *builder
	imgDir string
	images map[string]bool
	ids    map[string]bool
}

func (l *llavaState) add(raw []byte, pos, stem, split string) {
	b := l.b
	var ex llavaExtra
	if err := json.Unmarshal(raw, &ex); err != nil {
		b.reject(KindInstruction, pos, "malformed conversation record: "+err.Error())
		return
	}
	rec := ex.Record
	id := string(ex.ID)
	if id == "" {
		id = stem + "#" + pos
	}
	rec.ID = id
	if l.ids[id] {
		b.reject(KindInstruction, id, "duplicate id")
		return
	}
	if reason := l.complete(&rec, &ex, split); reason != "" {
		b.reject(KindInstruction, id, reason)
		return
	}
	l.ids[id] = true
	for _, im := range rec.Images {
		if im.Kind != "image" || l.images[im.Path] {
			continue
		}
		l.images[im.Path] = true
		b.ds.Images = append(b.ds.Images, dataset.Image{ID: im.Path, File: im.Path, Width: im.Width, Height: im.Height, Split: rec.Split})
	}
	b.markLines()
	b.instructions = append(b.instructions, rec)
	b.instructionSrc = append(b.instructionSrc, recordPos{file: b.file, line: b.line})
}

// complete checks rec and fills what the LLaVA form leaves implicit; it
// returns a reject reason or "".
func (l *llavaState) complete(rec *model.Record, ex *llavaExtra, split string) string {
	llavaForm := len(rec.Images) == 0 // else synth's own form, kept as written
	if len(rec.Images) == 0 && len(ex.Image) > 0 && string(ex.Image) != "null" {
		var names []string
		var one string
		if err := json.Unmarshal(ex.Image, &one); err == nil {
			names = []string{one}
		} else if err := json.Unmarshal(ex.Image, &names); err != nil {
			return fmt.Sprintf("image %.80s is neither a file name nor a list of them", ex.Image)
		}
		for _, n := range names {
			if strings.TrimSpace(n) == "" {
				return "empty image file name"
			}
			rec.Images = append(rec.Images, model.ImageRef{Kind: "image", Path: joinFile(l.imgDir, n), Width: dim(ex.Width), Height: dim(ex.Height)})
		}
	}
	for i, im := range rec.Images {
		if im.Kind != "image" && im.Kind != "crop" {
			return fmt.Sprintf("images[%d] has kind %q, want \"image\" or \"crop\"", i, im.Kind)
		}
		if strings.TrimSpace(im.Path) == "" {
			return fmt.Sprintf("images[%d] has no path", i)
		}
		if im.Width < 0 || im.Height < 0 {
			return fmt.Sprintf("images[%d] has size %dx%d", i, im.Width, im.Height)
		}
	}
	if len(rec.Conversations) == 0 {
		return "no conversations"
	}
	placeholders := 0
	lastGPT := -1
	for i, t := range rec.Conversations {
		if t.From != "human" && t.From != "gpt" {
			return fmt.Sprintf("conversations[%d] is from %q, want \"human\" or \"gpt\"", i, t.From)
		}
		if strings.TrimSpace(t.Value) == "" {
			return fmt.Sprintf("conversations[%d] has no text", i)
		}
		placeholders += strings.Count(t.Value, "<image>")
		if t.From == "gpt" {
			lastGPT = i
		}
	}
	if lastGPT < 0 {
		return "no answer (no turn from \"gpt\")"
	}
	if placeholders > len(rec.Images) {
		return fmt.Sprintf("%d <image> placeholders but %d images", placeholders, len(rec.Images))
	}
	var w, h int
	if len(rec.Images) > 0 {
		w, h = rec.Images[0].Width, rec.Images[0].Height
	}
	if len(ex.Boxes) > 0 {
		if reason := l.placeBoxes(rec, ex.Boxes, w, h, lastGPT); reason != "" {
			return reason
		}
	}
	// Inline boxes must be normalized: a pixel or 0-999 box read as
	// normalized would silently point elsewhere.
	var answer [][4]float64
	for i, t := range rec.Conversations {
		for _, m := range inlineBox.FindAllStringSubmatch(t.Value, -1) {
			var n model.NormBox
			for k := range 4 {
				v, err := strconv.ParseFloat(m[k+1], 64)
				if err != nil || math.IsNaN(v) || v < 0 || v > 1 {
					return fmt.Sprintf("conversations[%d]: box %s is not normalized to [0, 1]", i, m[0])
				}
				n[k] = v
			}
			if n[0] > n[2] || n[1] > n[3] {
				return fmt.Sprintf("conversations[%d]: box %s has its corners out of order", i, m[0])
			}
			if i == lastGPT && w > 0 && h > 0 {
				bx := model.Denormalize(n, w, h)
				answer = append(answer, [4]float64{bx.X1, bx.Y1, bx.X2, bx.Y2})
			}
		}
	}
	if llavaForm && len(rec.Answer.Boxes) == 0 && len(answer) > 0 {
		rec.Answer.Boxes = answer
	}
	if rec.Stage == "" {
		rec.Stage = "stage3"
	}
	if rec.Task == "" {
		rec.Task = "conversation"
	}
	if rec.Split == "" {
		rec.Split = split
	}
	if rec.Lineage.ImageID == "" && len(rec.Images) > 0 && rec.Images[0].Kind == "image" {
		rec.Lineage.ImageID = rec.Images[0].Path
	}
	return ""
}

// placeBoxes rewrites the "<box>" placeholders of rec's turns, in order, to
// the inline form of the pixel boxes.
func (l *llavaState) placeBoxes(rec *model.Record, boxes [][]float64, w, h, lastGPT int) string {
	if w <= 0 || h <= 0 {
		return fmt.Sprintf("%d pixel boxes but no image width and height to normalize them", len(boxes))
	}
	n := 0
	for _, t := range rec.Conversations {
		n += strings.Count(t.Value, "<box>")
	}
	if n != len(boxes) {
		return fmt.Sprintf("%d <box> placeholders for %d boxes", n, len(boxes))
	}
	k := 0
	for i := range rec.Conversations {
		t := &rec.Conversations[i]
		var sb strings.Builder
		rest := t.Value
		for {
			j := strings.Index(rest, "<box>")
			if j < 0 {
				break
			}
			bx, err := xyxy(boxes[k])
			if err != nil {
				return fmt.Sprintf("boxes[%d] %v: %v", k, boxes[k], err)
			}
			if bx.X2 <= bx.X1 || bx.Y2 <= bx.Y1 || bx.X1 < 0 || bx.Y1 < 0 || bx.X2 > float64(w) || bx.Y2 > float64(h) {
				return fmt.Sprintf("boxes[%d] %v is empty or outside the %dx%d image", k, boxes[k], w, h)
			}
			sb.WriteString(rest[:j])
			sb.WriteString(model.FormatBox(model.Normalize(bx, w, h)))
			if i == lastGPT {
				rec.Answer.Boxes = append(rec.Answer.Boxes, [4]float64{bx.X1, bx.Y1, bx.X2, bx.Y2})
			}
			rest = rest[j+len("<box>"):]
			k++
		}
		sb.WriteString(rest)
		t.Value = sb.String()
	}
	return ""
}
