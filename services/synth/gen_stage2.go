package synth

import (
	"slices"
	"strconv"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// pickReferent draws a T->C / C->T referent: an eligible object (k >= 0) or
// a region (reg >= 0), weighted by size-bin weight.
func (w *worker) pickReferent(t string, r *rng) (k, reg int) {
	ii := w.ii
	var total float64
	for i := range ii.objs {
		if w.b.eligible(t, ii, i) {
			total += ii.objs[i].weight
		}
	}
	for _, rg := range ii.regions {
		total += w.b.ix.binW[rg.bin]
	}
	if total == 0 {
		return -1, -1
	}
	x := r.float() * total
	k, reg = -1, -1
	for i := range ii.objs {
		if !w.b.eligible(t, ii, i) {
			continue
		}
		k = i
		if x -= ii.objs[i].weight; x < 0 {
			return i, -1
		}
	}
	for i, rg := range ii.regions {
		k, reg = -1, i
		if x -= w.b.ix.binW[rg.bin]; x < 0 {
			return -1, i
		}
	}
	return k, reg
}

// exprChoice is one distinct referring expression of a REC referent and
// the dataset ref that wrote it (nil: synthesized).
type exprChoice struct {
	text string
	ref  *dataset.Ref
}

// genREC (T->C): referring expression -> box.
func (w *worker) genREC(j int, r *rng) {
	ii := w.ii
	k, reg := w.pickReferent(TaskREC, r)
	rec := w.newRec(TaskREC, j, "")
	rec.Images = []model.ImageRef{w.fullImage()}
	var expr string
	var box dataset.Box
	var bin uint8
	switch {
	case k >= 0:
		o := &ii.objs[k]
		box, bin = o.box, o.bin
		rec.Lineage.AnnotationIDs = []string{o.src.ID}
		// Every distinct expression of the referent is equally likely: the
		// dataset's own (RefCOCO's sentences, the scene world's) and the
		// minimal one synthesized from its attributes, which is often one
		// of them already. (The minimal one took half the records before,
		// whatever the dataset wrote: the scene world's "the circle" far
		// more often than its "the red circle" or "the circle left of the
		// blue star".)
		ex := w.exprs[:0]
		if o.expr != "" {
			ex = append(ex, exprChoice{text: "the " + o.expr})
		}
		for _, rf := range o.refs {
			for _, s := range rf.Sentences {
				i := slices.IndexFunc(ex, func(c exprChoice) bool { return c.text == s })
				switch {
				case i < 0:
					ex = append(ex, exprChoice{text: s, ref: rf})
				case ex[i].ref == nil:
					ex[i].ref = rf // the synthesized expression is also this ref's
				}
			}
		}
		w.exprs = ex
		if len(ex) == 0 {
			return // a ref without sentences: nothing to ask
		}
		c := ex[r.intn(len(ex))]
		expr = c.text
		if c.ref != nil {
			rec.Lineage.AnnotationIDs = append(rec.Lineage.AnnotationIDs, c.ref.ID)
		}
	case reg >= 0:
		rg := &ii.regions[reg]
		box, bin, expr = rg.box, rg.bin, rg.src.Phrase
		rec.Lineage.AnnotationIDs = []string{rg.src.ID}
	default:
		return
	}
	mirror := w.mirrors(r)
	if mirror {
		rec.Images[0] = w.mirrorImage()
		expr, box = swapLeftRight(expr), w.mirrorBox(box)
	}
	bt := w.boxText(box)
	rec.SizeBin = sizeBins[bin]
	rec.Conversations = []model.Turn{human(imageTag, w.prompt(tRec, r).render(vals{{"expr", expr}})), gpt(bt)}
	rec.Answer = model.Answer{Boxes: [][4]float64{boxArr(box)}, Phrases: []string{expr}}
	if k >= 0 {
		rec.Answer.Names = []string{ii.objs[k].desc}
		for i := range ii.objs {
			if i != k {
				ob := ii.objs[i].box
				if mirror {
					ob = w.mirrorBox(ob)
				}
				rec.Answer.Others = append(rec.Answer.Others, boxArr(ob))
				rec.Answer.Names = append(rec.Answer.Names, ii.objs[i].desc)
			}
		}
	}
	w.group = append(w.group, genRec{rec: rec, leaks: []string{bt}})
}

// genREG (C->T): box -> description.
func (w *worker) genREG(j int, r *rng) {
	ii := w.ii
	k, reg := w.pickReferent(TaskREG, r)
	rec := w.newRec(TaskREG, j, "")
	rec.Images = []model.ImageRef{w.fullImage()}
	var text, answer string
	var box dataset.Box
	var bin uint8
	switch {
	case k >= 0:
		o := &ii.objs[k]
		box, bin, text = o.box, o.bin, o.desc
		answer = w.descAnswer(o.desc, r)
		rec.Lineage.AnnotationIDs = []string{o.src.ID}
	case reg >= 0:
		rg := &ii.regions[reg]
		box, bin, text = rg.box, rg.bin, rg.src.Phrase
		answer = capitalize(rg.src.Phrase) + "."
		rec.Lineage.AnnotationIDs = []string{rg.src.ID}
	default:
		return
	}
	rec.SizeBin = sizeBins[bin]
	rec.Conversations = []model.Turn{human(imageTag, w.prompt(tReg, r).render(vals{{"box", w.boxText(box)}})), gpt(answer)}
	rec.Answer = model.Answer{Boxes: [][4]float64{boxArr(box)}, Text: text}
	w.group = append(w.group, genRec{rec: rec, leaks: []string{text}})
}

// genCropName (I->T): crop -> name and attributes.
func (w *worker) genCropName(j int, r *rng) error {
	k := w.pickObject(TaskCropName, r)
	if k < 0 {
		return nil
	}
	o := &w.ii.objs[k]
	scale, si := w.scale(r)
	c, err := w.crop.crop(k, si, scale)
	if err != nil {
		return err
	}
	rec := w.newRec(TaskCropName, j, "")
	rec.Scale, rec.SizeBin = scale, sizeBins[o.bin]
	rec.Images = []model.ImageRef{cropImage(c)}
	rec.Conversations = []model.Turn{human(imageTag, w.prompt(tCropName, r).render(nil)), gpt(w.descAnswer(o.desc, r))}
	rec.Answer = model.Answer{Text: o.desc}
	rec.Lineage.AnnotationIDs = []string{o.src.ID}
	w.group = append(w.group, genRec{rec: rec, leaks: []string{o.desc}})
	return nil
}

// genCropLocate (I->C): crop -> the crop's box in the full image.
func (w *worker) genCropLocate(j int, r *rng) error {
	k := w.pickObject(TaskCropLocate, r)
	if k < 0 {
		return nil
	}
	o := &w.ii.objs[k]
	scale, si := w.scale(r)
	c, err := w.crop.crop(k, si, scale)
	if err != nil {
		return err
	}
	box := dataset.Box{X1: c.box[0], Y1: c.box[1], X2: c.box[2], Y2: c.box[3]}
	bt := w.boxText(box)
	rec := w.newRec(TaskCropLocate, j, "")
	rec.Scale, rec.SizeBin = scale, sizeBins[o.bin]
	rec.Images = []model.ImageRef{w.fullImage(), cropImage(c)}
	rec.Conversations = []model.Turn{human(imageTag+imageTag, w.prompt(tCropLocate, r).render(nil)), gpt(bt)}
	rec.Answer = model.Answer{Boxes: [][4]float64{c.box}}
	rec.Lineage.AnnotationIDs = []string{o.src.ID}
	w.group = append(w.group, genRec{rec: rec, leaks: []string{bt}})
	return nil
}

// genPick builds the two pick directions: T->I (crop_pick: description ->
// which candidate crop; the candidates alone) and C->I (box_pick: box ->
// which candidate crop; the full image first).
func (w *worker) genPick(task string, j int, r *rng) error {
	k := w.pickObject(task, r)
	if k < 0 {
		return nil
	}
	o := &w.ii.objs[k]
	scale, si := w.scale(r)
	rec := w.newRec(task, j, "")
	cands, at, err := w.candidates(&rec, k, si, scale, r)
	if err != nil || cands == nil {
		return err
	}
	kk := strconv.Itoa(len(cands))
	tags := candidateTags(len(cands))
	var q string
	if task == TaskBoxPick {
		rec.Images = append([]model.ImageRef{w.fullImage()}, cands...)
		tags = imageTag + tags
		q = w.prompt(tBoxPick, r).render(vals{{"box", w.boxText(o.box)}, {"k", kk}})
	} else {
		rec.Images = cands
		q = w.prompt(tCropPick, r).render(vals{{"expr", "the " + o.desc}, {"k", kk}})
	}
	rec.Scale, rec.SizeBin = scale, sizeBins[o.bin]
	n := strconv.Itoa(at + 1)
	rec.Conversations = []model.Turn{human(tags, q), gpt(w.answer(aPick, r).render(vals{{"n", n}}))}
	rec.Answer = model.Answer{Index: &at, Text: n}
	w.group = append(w.group, genRec{rec: rec})
	return nil
}

var candidateTagCache = func() []string {
	out := make([]string, 11)
	for k := 1; k <= 10; k++ {
		s := ""
		for i := 1; i <= k; i++ {
			s += "Candidate " + strconv.Itoa(i) + ": <image>\n"
		}
		out[k] = s
	}
	return out
}()

func candidateTags(k int) string { return candidateTagCache[k] }

// candidates returns the target's crop among Candidates-1 distractor crops
// at the same scale, and the target's position. Distractors never match the
// target's full description (so the pick is unambiguous) and always come
// from the record's split: other objects of the same image first, then the
// split's distractor pool. nil when too few distractors exist.
func (w *worker) candidates(rec *model.Record, k, si int, scale string, r *rng) ([]model.ImageRef, int, error) {
	ii := w.ii
	need := w.b.opts.Candidates - 1
	target := &ii.objs[k]
	var local []int
	for j := range ii.objs {
		if j != k && ii.objs[j].cropOK && !ii.objs[j].crowd && !matches(target, &ii.objs[j]) {
			local = append(local, j)
		}
	}
	shuffle(r, local)
	if len(local) > need {
		local = local[:need]
	}
	var pooled []int
	if rest := need - len(local); rest > 0 {
		pool := w.b.pool[ii.src.Split]
		idx := make([]int, 0, len(pool))
		for i := range pool {
			if pool[i].ii != ii && !matches(target, &pool[i].ii.objs[pool[i].obj]) {
				idx = append(idx, i)
			}
		}
		if len(idx) < rest {
			return nil, 0, nil
		}
		shuffle(r, idx)
		pooled = idx[:rest]
	}
	tc, err := w.crop.crop(k, si, scale)
	if err != nil {
		return nil, 0, err
	}
	out := make([]model.ImageRef, 0, need+1)
	ids := []string{target.src.ID}
	for _, j := range local {
		c, err := w.crop.crop(j, si, scale)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, cropImage(c))
		ids = append(ids, ii.objs[j].src.ID)
	}
	for _, i := range pooled {
		e := &w.b.pool[ii.src.Split][i]
		out = append(out, cropImage(e.crops[si]))
		ids = append(ids, e.ii.objs[e.obj].src.ID)
		w.addSource(rec, e.ii)
	}
	shuffle(r, out)
	at := r.intn(need + 1)
	out = append(out, model.ImageRef{})
	copy(out[at+1:], out[at:])
	out[at] = cropImage(tc)
	rec.Lineage.AnnotationIDs = ids
	return out, at, nil
}

// matches reports whether c fits every attribute of t's description (same
// category, same value for each of t's attributes): such a candidate could
// be what the description means.
func matches(t, c *objInfo) bool {
	if t.src.Category != c.src.Category {
		return false
	}
	for _, a := range t.attrs {
		if attrVal(c.src.Attributes, a.key) != a.val {
			return false
		}
	}
	return true
}
