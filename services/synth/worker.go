package synth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// maxAttempts bounds the redraws of a sample that came out as a duplicate.
const maxAttempts = 4

// genRec is a generated record and the strings its human turns must not
// contain (the answer's box text or name).
type genRec struct {
	rec   model.Record
	leaks []string
	// leakTurn, when set, pairs each leak with the index of the answer turn
	// it comes from: only human turns before it are checked (in a
	// conversation, a later question may name what an earlier answer said).
	leakTurn []int
}

// batch is one image's encoded records, handed to the ordered writer.
type batch struct {
	idx        int
	data       []byte
	recs       []recMeta
	drops      []drop
	generated  int64
	cropRefs   int64
	unreadable bool
}

// drop is one record (or group) a quality check removed.
type drop struct {
	task   string
	reason string
	n      int64
}

// Drop reasons (Quality.Drops keys are "<task>/<reason>").
const (
	DropDuplicate      = "duplicate"
	DropLeak           = "leak"
	DropBoxOutside     = "box_outside"
	DropSplitViolation = "split_violation"
	DropUnfilled       = "unfilled"
)

type recMeta struct {
	end       int
	key       [16]byte
	stage     string
	split     string
	task      string
	dir       string
	scale     string
	bin       string
	popeSplit string
	yesNo     string
	crops     int32
}

type worker struct {
	b    *builder
	crop *cropper
	ii   *imgInfo
	// per image
	local   map[[16]byte]struct{}
	reading []int // object indices in reading order (top to bottom, left to right)
	fileSHA string
	// generation scratch
	group []genRec
	exprs []exprChoice
	out   *batch
	// encoding
	buf bytes.Buffer
	enc *json.Encoder
	h   hash.Hash
	tmp []byte
}

func newWorker(b *builder) *worker {
	w := &worker{b: b, crop: newCropper(b.crops, b.ds.Root), local: map[[16]byte]struct{}{}, h: sha256.New()}
	w.enc = json.NewEncoder(&w.buf)
	w.enc.SetEscapeHTML(false) // keep "<image>" readable
	return w
}

// image generates every record of one image.
func (w *worker) image(ii *imgInfo) (*batch, error) {
	w.ii = ii
	w.crop.reset(ii)
	clear(w.local)
	w.reading = w.reading[:0]
	w.fileSHA = ii.src.SHA256
	w.out = &batch{idx: ii.idx}
	unreadable := false
	if w.fileSHA == "" {
		// Lineage needs the file hash; hash the bytes we may decode anyway.
		if raw, err := w.crop.fileBytes(); err == nil {
			sum := sha256.Sum256(raw)
			w.fileSHA = hex.EncodeToString(sum[:])
		}
	}
	for _, task := range w.b.tasks {
		q := int(w.b.quota[task][ii.idx])
		for j := 0; j < q; j++ {
			filled := false
			for attempt := 0; attempt < maxAttempts && !filled; attempt++ {
				seed := newSeedHash(w.b.opts.Seed).str(ii.src.ID).str(task).int(uint64(j)).int(uint64(attempt)).sum()
				r := newRNG(seed)
				w.group = w.group[:0]
				err := w.generate(task, j, r)
				if err != nil {
					var u errUnreadable
					if errors.As(err, &u) {
						unreadable = true
						break
					}
					return nil, err
				}
				if len(w.group) == 0 {
					break // nothing this image can offer for the task
				}
				ok, dup, err := w.accept(task)
				if err != nil {
					return nil, err
				}
				filled = ok
				if !ok && !dup {
					break // dropped by a quality check: redrawing would hide it
				}
			}
			if !filled {
				w.out.drops = append(w.out.drops, drop{task, DropUnfilled, 1})
			}
		}
	}
	w.out.unreadable = unreadable
	w.out.data = slices.Clone(w.buf.Bytes())
	w.buf.Reset()
	return w.out, nil
}

func (w *worker) generate(task string, j int, r *rng) error {
	switch task {
	case TaskInventory:
		w.genInventory(j, r)
	case TaskRelation:
		w.genRelation(j, r)
	case TaskCaption:
		w.genCaption(j, r)
	case TaskREC:
		w.genREC(j, r)
	case TaskREG:
		w.genREG(j, r)
	case TaskCropName:
		return w.genCropName(j, r)
	case TaskCropPick, TaskBoxPick:
		return w.genPick(task, j, r)
	case TaskCropLocate:
		return w.genCropLocate(j, r)
	case TaskDense:
		w.genDense(j, r)
	case TaskConversation:
		w.genConversation(j, r)
	case TaskPOPE:
		w.genPOPE(j, r)
	default:
		return fmt.Errorf("generate: unknown task %q", task)
	}
	return nil
}

// accept runs the quality checks over the current group (a group is kept or
// dropped whole: a POPE yes/no pair stays balanced) and encodes it.
func (w *worker) accept(task string) (ok, dup bool, err error) {
	n := int64(len(w.group))
	w.out.generated += n
	keys := make([][16]byte, len(w.group))
	for i := range w.group {
		g := &w.group[i]
		reason := ""
		switch {
		case !w.boxesInside(&g.rec):
			reason = DropBoxOutside
		case !w.sameSplit(&g.rec):
			reason = DropSplitViolation
		case leaks(&g.rec, g.leaks, g.leakTurn):
			reason = DropLeak
		default:
			keys[i] = w.dedupKey(&g.rec)
			if _, seen := w.local[keys[i]]; seen {
				reason = DropDuplicate
			}
		}
		if reason != "" {
			w.out.drops = append(w.out.drops, drop{task, reason, n})
			return false, reason == DropDuplicate, nil
		}
	}
	for i := range w.group {
		w.local[keys[i]] = struct{}{}
		rec := &w.group[i].rec
		if err := w.enc.Encode(rec); err != nil {
			return false, false, fmt.Errorf("encode record %s: %w", rec.ID, err)
		}
		m := recMeta{
			end: w.buf.Len(), key: keys[i], stage: rec.Stage, split: rec.Split, task: rec.Task,
			dir: rec.Direction, scale: rec.Scale, bin: rec.SizeBin,
			popeSplit: rec.Answer.PopeSplit, yesNo: rec.Answer.YesNo,
		}
		for _, im := range rec.Images {
			if im.Kind == "crop" {
				m.crops++
			}
		}
		w.out.cropRefs += int64(m.crops)
		w.out.recs = append(w.out.recs, m)
	}
	return true, false, nil
}

func (w *worker) boxesInside(rec *model.Record) bool {
	inside := func(b [4]float64, wd, ht int) bool {
		return b[0] >= 0 && b[1] >= 0 && b[2] <= float64(wd) && b[3] <= float64(ht) && b[0] < b[2] && b[1] < b[3]
	}
	for _, b := range rec.Answer.Boxes {
		if !inside(b, w.ii.src.Width, w.ii.src.Height) {
			return false
		}
	}
	for _, im := range rec.Images {
		if im.CropBox != nil {
			src := w.b.ix.byID[im.Source]
			if src == nil || !inside(*im.CropBox, src.src.Width, src.src.Height) {
				return false
			}
		}
	}
	return true
}

// sameSplit checks that every image and crop a record reads comes from the
// record's split.
func (w *worker) sameSplit(rec *model.Record) bool {
	for _, im := range rec.Images {
		id := im.Source
		if im.Kind == "image" {
			id = w.ii.src.ID
			if im.Path != w.ii.src.File {
				return false
			}
		}
		if s, ok := w.b.ix.splitOf[id]; !ok || s != rec.Split {
			return false
		}
		if im.Kind == "crop" && !strings.Contains(im.Path, "/"+rec.Split+"/") {
			return false
		}
	}
	return true
}

// leaks reports whether a human turn contains one of the answer strings
// (before the answer's own turn, when turns are given).
func leaks(rec *model.Record, answers []string, turns []int) bool {
	for i, t := range rec.Conversations {
		if t.From != "human" {
			continue
		}
		for k, a := range answers {
			if a == "" || (turns != nil && i >= turns[k]) {
				continue
			}
			if strings.Contains(t.Value, a) {
				return true
			}
		}
	}
	return false
}

// dedupKey identifies a record by its images, prompts and answers.
func (w *worker) dedupKey(rec *model.Record) [16]byte {
	w.h.Reset()
	for _, im := range rec.Images {
		w.h.Write([]byte(im.Path))
		w.h.Write([]byte{0})
		if im.Transform != "" {
			// Only when set: keys of records without one stay as they were.
			w.h.Write([]byte(im.Transform))
			w.h.Write([]byte{0})
		}
	}
	w.h.Write([]byte{1})
	for _, t := range rec.Conversations {
		w.h.Write([]byte(t.From))
		w.h.Write([]byte{0})
		w.h.Write([]byte(t.Value))
		w.h.Write([]byte{0})
	}
	var k [16]byte
	w.tmp = w.h.Sum(w.tmp[:0])
	copy(k[:], w.tmp)
	return k
}

// --- record helpers -------------------------------------------------------

func (w *worker) newRec(task string, j int, suffix string) model.Record {
	ii := w.ii
	id := make([]byte, 0, len(ii.src.ID)+len(task)+12)
	id = append(id, ii.src.ID...)
	id = append(id, '/')
	id = append(id, task...)
	id = append(id, '/')
	id = strconv.AppendInt(id, int64(j), 10)
	id = append(id, suffix...)
	return model.Record{
		ID: string(id), Stage: taskStage[task], Task: task, Direction: taskDirection[task], Split: ii.src.Split,
		Lineage: model.Lineage{
			DatasetID: w.b.opts.DatasetID, ImageID: ii.src.ID,
			SourceFiles: map[string]string{ii.src.File: w.fileSHA},
		},
	}
}

func (w *worker) fullImage() model.ImageRef {
	return model.ImageRef{Kind: "image", Path: w.ii.src.File, Width: w.ii.src.Width, Height: w.ii.src.Height}
}

func cropImage(c cropRef) model.ImageRef {
	b := c.box
	return model.ImageRef{Kind: "crop", Path: c.key, Width: c.w, Height: c.h, Source: c.src.src.ID, CropBox: &b}
}

// addSource records a further source image (a distractor crop's) in the lineage.
func (w *worker) addSource(rec *model.Record, ii *imgInfo) {
	if _, ok := rec.Lineage.SourceFiles[ii.src.File]; ok {
		return
	}
	sum := ii.src.SHA256
	if sum == "" {
		sum = w.b.fileSHA[ii.src.ID]
	}
	rec.Lineage.SourceFiles[ii.src.File] = sum
}

func (w *worker) boxText(b dataset.Box) string {
	return model.FormatBox(model.Normalize(b, w.ii.src.Width, w.ii.src.Height))
}

func boxArr(b dataset.Box) [4]float64 { return [4]float64{b.X1, b.Y1, b.X2, b.Y2} }

func human(prefix, text string) model.Turn { return model.Turn{From: "human", Value: prefix + text} }
func gpt(text string) model.Turn           { return model.Turn{From: "gpt", Value: text} }

// pick returns a random template of list key.
func (w *worker) prompt(key string, r *rng) *template {
	l := w.b.prompts[key]
	return &l[r.intn(len(l))]
}

func (w *worker) answer(key string, r *rng) *template {
	l := w.b.answers[key]
	return &l[r.intn(len(l))]
}

// descAnswer renders a description answer ("A small red circle.").
func (w *worker) descAnswer(desc string, r *rng) string {
	a := article(desc)
	return w.answer(aDesc, r).render(vals{{"a_desc", a}, {"A_desc", capitalize(a)}})
}

// pickObject draws an eligible object of the current image for task t,
// weighted by its size-bin weight; -1 when none.
func (w *worker) pickObject(t string, r *rng) int {
	ii := w.ii
	var total float64
	for k := range ii.objs {
		if w.b.eligible(t, ii, k) {
			total += ii.objs[k].weight
		}
	}
	if total == 0 {
		return -1
	}
	x := r.float() * total
	last := -1
	for k := range ii.objs {
		if !w.b.eligible(t, ii, k) {
			continue
		}
		last = k
		x -= ii.objs[k].weight
		if x < 0 {
			return k
		}
	}
	return last
}

// readingOrder returns object indices top to bottom, then left to right.
func (w *worker) readingOrder() []int {
	if len(w.reading) == 0 && len(w.ii.objs) > 0 {
		for k := range w.ii.objs {
			w.reading = append(w.reading, k)
		}
		objs := w.ii.objs
		slices.SortStableFunc(w.reading, func(a, b int) int {
			ya, yb := int(objs[a].box.Y1), int(objs[b].box.Y1)
			if ya != yb {
				return ya - yb
			}
			xa, xb := int(objs[a].box.X1), int(objs[b].box.X1)
			return xa - xb
		})
	}
	return w.reading
}

func (w *worker) scale(r *rng) (string, int) {
	si := r.intn(len(w.b.opts.Scales))
	return w.b.opts.Scales[si], si
}
