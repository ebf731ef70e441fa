package synth

import (
	"cmp"
	"slices"
	"strings"

	"github.com/groundmesh/groundmesh/model"
)

const imageTag = "<image>\n"

// genInventory: every object (up to MaxObjects, reading order) with its box.
func (w *worker) genInventory(j int, r *rng) {
	ii := w.ii
	order := w.readingOrder()
	if r.intn(2) == 1 {
		// Left to right instead of top to bottom.
		order = slices.Clone(order)
		slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(ii.objs[a].box.X1, ii.objs[b].box.X1) })
	}
	if len(order) > w.b.opts.MaxObjects {
		order = order[:w.b.opts.MaxObjects]
	}
	rec := w.newRec(TaskInventory, j, "")
	rec.Images = []model.ImageRef{w.fullImage()}
	var sb strings.Builder
	sep := "; "
	if r.intn(2) == 1 {
		sep = "\n"
	}
	item := w.answer(aInvItem, r)
	leak := make([]string, 0, len(order))
	for n, k := range order {
		o := &ii.objs[k]
		bt := w.boxText(o.box)
		if n > 0 {
			sb.WriteString(sep)
		}
		sb.WriteString(item.render(vals{{"desc", o.desc}, {"a_desc", article(o.desc)}, {"box", bt}}))
		rec.Answer.Boxes = append(rec.Answer.Boxes, boxArr(o.box))
		rec.Answer.Phrases = append(rec.Answer.Phrases, o.desc)
		rec.Lineage.AnnotationIDs = append(rec.Lineage.AnnotationIDs, o.src.ID)
		leak = append(leak, bt)
	}
	rec.Conversations = []model.Turn{human(imageTag, w.prompt(tInventory, r).render(nil)), gpt(sb.String())}
	w.group = append(w.group, genRec{rec: rec, leaks: leak})
}

// genRelation: either all relation triplets with both boxes, or one pair
// named in the question.
func (w *worker) genRelation(j int, r *rng) {
	ii := w.ii
	if len(ii.rels) == 0 {
		return
	}
	rec := w.newRec(TaskRelation, j, "")
	rec.Images = []model.ImageRef{w.fullImage()}
	var named []int
	for i, rl := range ii.rels {
		if ii.objs[rl.s].expr != "" && ii.objs[rl.o].expr != "" {
			named = append(named, i)
		}
	}
	if len(named) > 0 && r.intn(2) == 0 {
		rl := ii.rels[named[r.intn(len(named))]]
		s, o := &ii.objs[rl.s], &ii.objs[rl.o]
		b1, b2 := w.boxText(s.box), w.boxText(o.box)
		q := w.prompt(tRelationPair, r).render(vals{{"subj", s.expr}, {"obj", o.expr}})
		a := w.answer(aRelation, r).render(vals{{"subj", s.expr}, {"obj", o.expr}, {"pred", rl.src.Predicate}, {"box1", b1}, {"box2", b2}})
		rec.Conversations = []model.Turn{human(imageTag, q), gpt(a)}
		rec.Answer = model.Answer{Boxes: [][4]float64{boxArr(s.box), boxArr(o.box)}, Phrases: []string{s.expr, o.expr}, Text: rl.src.Predicate}
		rec.Lineage.AnnotationIDs = []string{rl.src.ID, s.src.ID, o.src.ID}
		w.group = append(w.group, genRec{rec: rec, leaks: []string{b1, b2}})
		return
	}
	var sb strings.Builder
	var leak []string
	for i, rl := range ii.rels {
		if i >= w.b.opts.MaxObjects {
			break
		}
		s, o := &ii.objs[rl.s], &ii.objs[rl.o]
		b1, b2 := w.boxText(s.box), w.boxText(o.box)
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(w.answer(aRelation, r).render(vals{{"subj", nameOf(s)}, {"obj", nameOf(o)}, {"pred", rl.src.Predicate}, {"box1", b1}, {"box2", b2}}))
		rec.Answer.Boxes = append(rec.Answer.Boxes, boxArr(s.box), boxArr(o.box))
		rec.Answer.Phrases = append(rec.Answer.Phrases, nameOf(s), nameOf(o))
		rec.Lineage.AnnotationIDs = append(rec.Lineage.AnnotationIDs, rl.src.ID)
		leak = append(leak, b1, b2)
	}
	rec.Conversations = []model.Turn{human(imageTag, w.prompt(tRelationAll, r).render(nil)), gpt(sb.String())}
	w.group = append(w.group, genRec{rec: rec, leaks: leak})
}

// nameOf is the shortest unambiguous name of an object, or its description.
func nameOf(o *objInfo) string {
	if o.expr != "" {
		return o.expr
	}
	return o.desc
}

var captionLeads = []string{"An image with ", "A scene showing ", "A picture of ", "This image shows ", "An image containing ", "A plain background with "}

// genCaption: a one-sentence summary of what is in the image.
func (w *worker) genCaption(j int, r *rng) {
	ii := w.ii
	if len(ii.objs) == 0 {
		return
	}
	rec := w.newRec(TaskCaption, j, "")
	rec.Images = []model.ImageRef{w.fullImage()}
	var parts []string
	switch style := r.intn(3); {
	case style == 0 && len(ii.objs) <= 4:
		for _, k := range w.readingOrder() {
			parts = append(parts, article(ii.objs[k].desc))
		}
	case style == 1 && len(ii.objs) <= 6:
		for _, k := range w.readingOrder() {
			o := &ii.objs[k]
			parts = append(parts, article(strings.TrimSpace(o.color+" "+o.src.Category)))
		}
	default:
		parts = w.categoryCounts(false)
	}
	text := captionLeads[r.intn(len(captionLeads))] + joinAnd(parts) + "."
	rec.Conversations = []model.Turn{human(imageTag, w.prompt(tCaption, r).render(nil)), gpt(text)}
	rec.Answer.Text = text
	for _, o := range ii.objs {
		rec.Lineage.AnnotationIDs = append(rec.Lineage.AnnotationIDs, o.src.ID)
	}
	w.group = append(w.group, genRec{rec: rec})
}

// categoryCounts returns "two circles", "a square", ... in first-seen
// reading order.
func (w *worker) categoryCounts(capital bool) []string {
	ii := w.ii
	var cats []string
	count := map[string]int{}
	for _, k := range w.readingOrder() {
		c := ii.objs[k].src.Category
		if count[c] == 0 {
			cats = append(cats, c)
		}
		count[c]++
	}
	out := make([]string, 0, len(cats))
	for _, c := range cats {
		var s string
		if n := count[c]; n == 1 {
			s = article(c)
		} else {
			s = countWord(n) + " " + plural(c)
		}
		if capital {
			s = capitalize(s)
		}
		out = append(out, s)
	}
	return out
}

// joinAnd joins "a, b and c".
func joinAnd(p []string) string {
	switch len(p) {
	case 0:
		return ""
	case 1:
		return p[0]
	}
	return strings.Join(p[:len(p)-1], ", ") + " and " + p[len(p)-1]
}
