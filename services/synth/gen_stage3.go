package synth

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/model"
)

// genDense: every object (up to MaxObjects) with attributes and box, then
// every relation with both boxes.
func (w *worker) genDense(j int, r *rng) {
	ii := w.ii
	if len(ii.objs) == 0 {
		return
	}
	rec := w.newRec(TaskDense, j, "")
	rec.Images = []model.ImageRef{w.fullImage()}
	var sb strings.Builder
	sb.WriteString("The image shows ")
	sb.WriteString(joinAnd(w.categoryCounts(false)))
	sb.WriteString(".")
	order := w.readingOrder()
	if len(order) > w.b.opts.MaxObjects {
		order = order[:w.b.opts.MaxObjects]
	}
	var leak []string
	for _, k := range order {
		o := &ii.objs[k]
		bt := w.boxText(o.box)
		a := article(o.desc)
		sb.WriteByte(' ')
		sb.WriteString(w.answer(aDenseObj, r).render(vals{{"a_desc", a}, {"A_desc", capitalize(a)}, {"box", bt}}))
		rec.Answer.Boxes = append(rec.Answer.Boxes, boxArr(o.box))
		rec.Answer.Phrases = append(rec.Answer.Phrases, o.desc)
		rec.Lineage.AnnotationIDs = append(rec.Lineage.AnnotationIDs, o.src.ID)
		leak = append(leak, bt)
	}
	for i, rl := range ii.rels {
		if i >= w.b.opts.MaxObjects {
			break
		}
		s, o := &ii.objs[rl.s], &ii.objs[rl.o]
		sb.WriteByte(' ')
		sb.WriteString(w.answer(aDenseRel, r).render(vals{
			{"Subj", "The " + nameOf(s)}, {"obj", "the " + nameOf(o)},
			{"pred", rl.src.Predicate}, {"box1", w.boxText(s.box)}, {"box2", w.boxText(o.box)},
		}))
		rec.Lineage.AnnotationIDs = append(rec.Lineage.AnnotationIDs, rl.src.ID)
	}
	rec.Conversations = []model.Turn{human(imageTag, w.prompt(tDense, r).render(nil)), gpt(sb.String())}
	w.group = append(w.group, genRec{rec: rec, leaks: leak})
}

// qa is one question and answer of a conversation.
type qa struct {
	q, a string
	ans  model.Answer
	leak []string
	ids  []string
}

// genConversation: two to four grounded questions about the image (counts,
// locations, colors, identities, existence, relations).
func (w *worker) genConversation(j int, r *rng) {
	ii := w.ii
	if len(ii.objs) == 0 {
		return
	}
	want := 2 + r.intn(3)
	used := make([]bool, len(ii.objs)) // objects already asked about by box or name
	asked := map[string]bool{}
	var turns []qa
	allIDs := make([]string, len(ii.objs))
	for k := range ii.objs {
		allIDs[k] = ii.objs[k].src.ID
	}
	if r.intn(3) == 0 {
		text := "I can see " + joinAnd(w.categoryCounts(false)) + "."
		turns = append(turns, qa{q: w.prompt(tQOpen, r).render(nil), a: text, ans: model.Answer{Text: text}, ids: allIDs})
	}
	for tries := 0; len(turns) < want && tries < 16; tries++ {
		var t qa
		ok := false
		switch r.intn(6) {
		case 0: // count
			c := ii.objs[r.intn(len(ii.objs))].src.Category
			if asked["count:"+c] {
				continue
			}
			asked["count:"+c] = true
			n := 0
			for k := range ii.objs {
				if ii.objs[k].src.Category == c {
					n++
					t.ids = append(t.ids, ii.objs[k].src.ID)
				}
			}
			t.q = w.prompt(tQCount, r).render(vals{{"plural", plural(c)}})
			t.a = capitalize(countWord(n)) + "."
			t.ans = model.Answer{Text: strconv.Itoa(n)}
			ok = true
		case 1: // locate
			k := r.intn(len(ii.objs))
			o := &ii.objs[k]
			if used[k] || o.expr == "" {
				continue
			}
			used[k] = true
			bt := w.boxText(o.box)
			t = qa{q: w.prompt(tQLocate, r).render(vals{{"expr", "the " + o.expr}}), a: bt,
				ans: model.Answer{Boxes: [][4]float64{boxArr(o.box)}, Phrases: []string{o.expr}}, leak: []string{bt}, ids: []string{o.src.ID}}
			ok = true
		case 2: // color at box
			k := r.intn(len(ii.objs))
			o := &ii.objs[k]
			if used[k] || o.color == "" || o.boxAmbiguous {
				continue
			}
			used[k] = true
			t = qa{q: w.prompt(tQColor, r).render(vals{{"box", w.boxText(o.box)}}), a: capitalize(o.color) + ".",
				ans: model.Answer{Boxes: [][4]float64{boxArr(o.box)}, Text: o.color}, ids: []string{o.src.ID}}
			ok = true
		case 3: // what is at box
			k := r.intn(len(ii.objs))
			o := &ii.objs[k]
			if used[k] || o.boxAmbiguous {
				continue
			}
			used[k] = true
			t = qa{q: w.prompt(tQWhat, r).render(vals{{"box", w.boxText(o.box)}}), a: w.descAnswer(o.desc, r),
				ans: model.Answer{Boxes: [][4]float64{boxArr(o.box)}, Text: o.desc}, leak: []string{o.desc}, ids: []string{o.src.ID}}
			ok = true
		case 4: // existence
			voc := w.b.ix.vocab[0]
			present := ii.present[0]
			p := r.intn(len(voc))
			name := voc[p]
			if asked["exists:"+name] {
				continue
			}
			asked["exists:"+name] = true
			yes := slices.Contains(present, p)
			t.q = w.prompt(tQExists, r).render(vals{{"a_name", article(name)}})
			// Absence is read from the complete annotation: every object.
			t.a, t.ans, t.ids = "No.", model.Answer{YesNo: "no", Text: name}, allIDs
			if yes {
				t.a, t.ans.YesNo, t.ids = "Yes.", "yes", nil
				for k := range ii.objs {
					if ii.objs[k].src.Category == name {
						t.ids = append(t.ids, ii.objs[k].src.ID)
					}
				}
			}
			ok = true
		case 5: // relation
			if len(ii.rels) == 0 {
				continue
			}
			rl := ii.rels[r.intn(len(ii.rels))]
			s, o := &ii.objs[rl.s], &ii.objs[rl.o]
			if s.expr == "" || o.expr == "" || asked["rel:"+rl.src.ID] {
				continue
			}
			asked["rel:"+rl.src.ID] = true
			t = qa{q: w.prompt(tQRelation, r).render(vals{{"subj", s.expr}, {"obj", o.expr}}),
				a:   w.answer(aQRel, r).render(vals{{"subj", s.expr}, {"obj", o.expr}, {"pred", rl.src.Predicate}}),
				ans: model.Answer{Text: rl.src.Predicate}, ids: []string{rl.src.ID, s.src.ID, o.src.ID}}
			ok = true
		}
		if ok && !revealedBefore(turns, t) {
			turns = append(turns, t)
		}
	}
	if len(turns) < 2 {
		return
	}
	rec := w.newRec(TaskConversation, j, "")
	rec.Images = []model.ImageRef{w.fullImage()}
	var leak []string
	var leakTurn []int
	for i, t := range turns {
		prefix := ""
		if i == 0 {
			prefix = imageTag
		}
		rec.Conversations = append(rec.Conversations, human(prefix, t.q), gpt(t.a))
		for _, l := range t.leak {
			leak = append(leak, l)
			leakTurn = append(leakTurn, 2*i+1)
		}
		for _, id := range t.ids {
			if !slices.Contains(rec.Lineage.AnnotationIDs, id) {
				rec.Lineage.AnnotationIDs = append(rec.Lineage.AnnotationIDs, id)
			}
		}
	}
	rec.Answer = turns[len(turns)-1].ans
	w.group = append(w.group, genRec{rec: rec, leaks: leak, leakTurn: leakTurn})
}

// revealedBefore reports whether t's answer is already named by its own
// question or an earlier one (a twin's expression can spell out another
// object's description): such a turn is skipped rather than left for the
// leak check to drop the whole conversation.
func revealedBefore(turns []qa, t qa) bool {
	for _, l := range t.leak {
		if strings.Contains(t.q, l) {
			return true
		}
		for _, p := range turns {
			if strings.Contains(p.q, l) {
				return true
			}
		}
	}
	return false
}

// popeLevels reports which probe vocabularies an image supports: level 0
// categories ("circle"), level 1 "color category" phrases ("red circle");
// a level needs a present phrase (yes) and an absent one (no).
func (b *builder) popeLevels(ii *imgInfo) (ok [2]bool) {
	for lvl := 0; lvl < 2; lvl++ {
		ok[lvl] = len(ii.present[lvl]) > 0 && len(ii.present[lvl]) < len(b.ix.vocab[lvl])
	}
	return ok
}

// genPOPE: one yes/no pair. The pair's strategy (random, popular,
// adversarial) rotates with its global ordinal so the three are balanced;
// negatives are phrases no object of the image matches. Popular negatives
// are among the three most frequent absent phrases, adversarial ones among
// the three that co-occur most with what the image shows (statistics from
// the training split).
func (w *worker) genPOPE(j int, r *rng) {
	ii := w.ii
	levels := w.b.popeLevels(ii)
	ord := w.b.popeOff[ii.idx] + int64(j)
	strategy := popeSplits[ord%3]
	// Alternate category and color+category probes (every strategy gets
	// both), falling back to whichever the image supports.
	lvl := int(ord/3) % 2
	if !levels[lvl] {
		lvl = 1 - lvl
	}
	if !levels[lvl] {
		return
	}
	ix := w.b.ix
	present := ii.present[lvl]
	absent := make([]int, 0, len(ix.vocab[lvl])-len(present))
	for p := range ix.vocab[lvl] {
		if _, found := slices.BinarySearch(present, p); !found {
			absent = append(absent, p)
		}
	}
	// Rotate the present phrase over the image's pairs (from a random
	// start) so that an image's yes probes differ before they repeat.
	start := int(newSeedHash(w.b.opts.Seed).str(ii.src.ID).str("pope-yes").sum() % uint64(len(present)))
	yes := present[(start+j)%len(present)]
	var no int
	switch strategy {
	case PopeRandom:
		no = absent[r.intn(len(absent))]
	case PopePopular:
		slices.SortStableFunc(absent, func(a, b int) int { return cmp.Compare(ix.freq[lvl][b], ix.freq[lvl][a]) })
		no = absent[r.intn(min(3, len(absent)))]
	case PopeAdversarial:
		score := func(a int) int {
			s := 0
			for _, p := range present {
				s += ix.cooc[lvl][p][a]
			}
			return s
		}
		slices.SortStableFunc(absent, func(a, b int) int { return cmp.Compare(score(b), score(a)) })
		no = absent[r.intn(min(3, len(absent)))]
	}
	// Both probes of a pair ask about the same (perhaps mirrored) image;
	// an object's name has no direction in it, so only the image changes.
	img := w.fullImage()
	if w.mirrors(r) {
		img = w.mirrorImage()
	}
	for _, probe := range []struct {
		p      int
		answer string
	}{{yes, "yes"}, {no, "no"}} {
		name := ix.vocab[lvl][probe.p]
		rec := w.newRec(TaskPOPE, j, "/"+probe.answer)
		rec.Images = []model.ImageRef{img}
		reply := "Yes"
		if probe.answer == "no" {
			reply = "No"
		}
		rec.Conversations = []model.Turn{human(imageTag, w.prompt(tPope, r).render(vals{{"a_name", article(name)}})), gpt(reply)}
		rec.Answer = model.Answer{YesNo: probe.answer, PopeSplit: strategy, Text: name}
		for k := range ii.objs {
			// Yes: the objects that match; no: every object (the absence is
			// read from the complete annotation).
			if probe.answer == "no" || phraseOf(&ii.objs[k], lvl) == name {
				rec.Lineage.AnnotationIDs = append(rec.Lineage.AnnotationIDs, ii.objs[k].src.ID)
			}
		}
		w.group = append(w.group, genRec{rec: rec})
	}
}

func phraseOf(o *objInfo, lvl int) string {
	if lvl == 0 {
		return o.src.Category
	}
	if o.color == "" {
		return ""
	}
	return o.color + " " + o.src.Category
}
