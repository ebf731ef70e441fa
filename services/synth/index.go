package synth

import (
	"cmp"
	"slices"
	"sort"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// Size bins follow COCO's area thresholds (small < 32², medium < 96², large
// otherwise), which were defined for images whose longer side is about 640
// pixels. Scene images are much smaller (128-256 px), where every object
// would be "small" under the raw thresholds, so the thresholds are scaled
// with the image: for an image whose longer side is L pixels,
//
//	small  < (32·L/640)²   medium < (96·L/640)²   large otherwise.
//
// At L = 640 this is exactly COCO; at L = 128 the thresholds are 6.4² and
// 19.2² pixels. The scaling is recorded in every manifest.
const (
	cocoRefSide  = 640.0
	cocoSmallMax = 32.0
	cocoMedMax   = 96.0
)

// Size bin names, indexed by bin.
var sizeBins = [3]string{"small", "medium", "large"}

func sizeBin(b dataset.Box, w, h int) uint8 {
	l := float64(max(w, h)) / cocoRefSide
	a := b.Area()
	switch {
	case a < (cocoSmallMax*l)*(cocoSmallMax*l):
		return 0
	case a < (cocoMedMax*l)*(cocoMedMax*l):
		return 1
	default:
		return 2
	}
}

// Attribute keys that lead a description, in this order; other keys follow
// sorted by name. "the small red striped circle" reads naturally.
var attrOrder = []string{"size", "color", "material", "texture", "pattern"}

type objInfo struct {
	src    *dataset.Object
	box    dataset.Box // clipped to the image
	attrs  []attr      // canonical order
	desc   string      // every attribute and the category: "small red striped circle"
	expr   string      // minimal unique referring expression, no article; "" when none exists
	refs   []*dataset.Ref
	bin    uint8
	weight float64 // size-bin balancing weight
	cropOK bool    // large enough to crop
	// boxAmbiguous: another object overlaps this one so much that its box
	// does not single it out (unsafe for box -> text).
	boxAmbiguous bool
	color        string
	// crowd marks a COCO crowd box (iscrowd=1): a group, not one object,
	// so never a single-object target.
	crowd bool
}

type attr struct{ key, val string }

type relInfo struct {
	src  *dataset.Relation
	s, o int // indices into imgInfo.objs
}

type regionInfo struct {
	src *dataset.Region
	box dataset.Box
	bin uint8
}

type imgInfo struct {
	src     *dataset.Image
	idx     int
	objs    []objInfo
	rels    []relInfo
	regions []regionInfo
	// probe vocabulary indices present in the image, per level (0: category,
	// 1: color+category), sorted.
	present [2][]int
}

// index is the read-only view of a dataset that every generator shares.
type index struct {
	images   []*imgInfo // sorted by image id
	byID     map[string]*imgInfo
	splitOf  map[string]string // image id -> split
	binCount [3]int
	binW     [3]float64
	// Probe vocabulary for POPE: level 0 categories, level 1 "color category".
	vocab     [2][]string
	vocabIdx  [2]map[string]int
	freq      [2][]int   // images (of the statistics splits) containing the phrase
	cooc      [2][][]int // images containing both
	invalid   int        // objects dropped: box outside the image or degenerate
	clipped   int        // objects whose box was clipped to the image
	orphanRel int        // relations whose ends are missing
}

func buildIndex(ds *dataset.Dataset, balanceCap float64) *index {
	ix := &index{byID: make(map[string]*imgInfo, len(ds.Images)), splitOf: make(map[string]string, len(ds.Images))}
	for i := range ds.Images {
		im := &ds.Images[i]
		if im.Width <= 0 || im.Height <= 0 || im.ID == "" {
			continue
		}
		if _, dup := ix.byID[im.ID]; dup {
			continue
		}
		ii := &imgInfo{src: im}
		ix.images = append(ix.images, ii)
		ix.byID[im.ID] = ii
		ix.splitOf[im.ID] = im.Split
	}
	slices.SortFunc(ix.images, func(a, b *imgInfo) int { return cmp.Compare(a.src.ID, b.src.ID) })
	for i, ii := range ix.images {
		ii.idx = i
	}

	objPos := make(map[string][2]int, len(ds.Objects)) // object id -> (image idx, obj idx)
	for i := range ds.Objects {
		o := &ds.Objects[i]
		ii := ix.byID[o.ImageID]
		if ii == nil {
			ix.invalid++
			continue
		}
		box, ok, clipped := clipBox(o.Box, ii.src.Width, ii.src.Height)
		if !ok {
			ix.invalid++
			continue
		}
		if clipped {
			ix.clipped++
		}
		oi := objInfo{src: o, box: box, attrs: sortedAttrs(o.Attributes), color: attrVal(o.Attributes, "color")}
		oi.desc = describe(oi.attrs, nil, o.Category)
		oi.bin = sizeBin(box, ii.src.Width, ii.src.Height)
		oi.cropOK = box.W() >= 2 && box.H() >= 2
		oi.crowd = o.Attributes["iscrowd"] == "1"
		objPos[o.ID] = [2]int{ii.idx, len(ii.objs)}
		ii.objs = append(ii.objs, oi)
		ix.binCount[oi.bin]++
	}
	for i := range ds.Refs {
		r := &ds.Refs[i]
		p, ok := objPos[r.ObjectID]
		if !ok || len(r.Sentences) == 0 {
			continue
		}
		o := &ix.images[p[0]].objs[p[1]]
		o.refs = append(o.refs, r)
	}
	for i := range ds.Relations {
		r := &ds.Relations[i]
		ps, ok1 := objPos[r.SubjectID]
		po, ok2 := objPos[r.ObjectID]
		if !ok1 || !ok2 || ps[0] != po[0] || ps[1] == po[1] || strings.TrimSpace(r.Predicate) == "" {
			ix.orphanRel++
			continue
		}
		ii := ix.images[ps[0]]
		ii.rels = append(ii.rels, relInfo{src: r, s: ps[1], o: po[1]})
	}
	for i := range ds.Regions {
		r := &ds.Regions[i]
		ii := ix.byID[r.ImageID]
		if ii == nil || strings.TrimSpace(r.Phrase) == "" {
			continue
		}
		box, ok, _ := clipBox(r.Box, ii.src.Width, ii.src.Height)
		if !ok {
			continue
		}
		ii.regions = append(ii.regions, regionInfo{src: r, box: box, bin: sizeBin(box, ii.src.Width, ii.src.Height)})
	}

	// Balance size bins: each bin gets the same expected share of stage-2
	// samples, but no object is up-weighted more than balanceCap times (a
	// rare bin would otherwise repeat the same few objects until every
	// sample is a duplicate).
	total := ix.binCount[0] + ix.binCount[1] + ix.binCount[2]
	for b, c := range ix.binCount {
		if c > 0 {
			ix.binW[b] = min(balanceCap, float64(total)/3/float64(c))
		}
	}
	for _, ii := range ix.images {
		for k := range ii.objs {
			ii.objs[k].weight = ix.binW[ii.objs[k].bin]
		}
		resolveExpressions(ii)
		markAmbiguousBoxes(ii)
	}
	ix.buildVocab()
	return ix
}

// clipBox clips b to the image; it rejects boxes that are degenerate or lose
// more than half their area to clipping (those are annotation errors, not
// objects at the border).
func clipBox(b dataset.Box, w, h int) (dataset.Box, bool, bool) {
	if b.X2 < b.X1 {
		b.X1, b.X2 = b.X2, b.X1
	}
	if b.Y2 < b.Y1 {
		b.Y1, b.Y2 = b.Y2, b.Y1
	}
	c := dataset.Box{X1: max(0, b.X1), Y1: max(0, b.Y1), X2: min(float64(w), b.X2), Y2: min(float64(h), b.Y2)}
	if c.Area() <= 0 || c.Area() < 0.5*b.Area() {
		return c, false, false
	}
	return c, true, c != b
}

// attrVal normalizes an attribute value for descriptions: boolean
// attributes read as their name when true ("occluded") and are left out when
// false.
func attrVal(m map[string]string, k string) string {
	v := strings.TrimSpace(m[k])
	switch strings.ToLower(v) {
	case "false", "no", "0":
		return ""
	case "true", "yes", "1":
		return k
	}
	return v
}

func sortedAttrs(m map[string]string) []attr {
	if len(m) == 0 {
		return nil
	}
	out := make([]attr, 0, len(m))
	for _, k := range attrOrder {
		if v := attrVal(m, k); v != "" {
			out = append(out, attr{k, v})
		}
	}
	var rest []string
	for k := range m {
		if k == "iscrowd" || k == "synsets" { // annotation bookkeeping, not words about the object
			continue
		}
		if !slices.Contains(attrOrder, k) && attrVal(m, k) != "" {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		out = append(out, attr{k, attrVal(m, k)})
	}
	return out
}

// describe joins the attribute values selected by mask (nil: all) and the
// category.
func describe(attrs []attr, mask []bool, category string) string {
	var sb strings.Builder
	for i, a := range attrs {
		if mask != nil && !mask[i] {
			continue
		}
		sb.WriteString(a.val)
		sb.WriteByte(' ')
	}
	sb.WriteString(category)
	return sb.String()
}

// resolveExpressions finds, for every object, the shortest attribute subset
// that no other object of the image shares (category always included), and
// falls back to a position word among identical objects ("leftmost ...").
func resolveExpressions(ii *imgInfo) {
	for k := range ii.objs {
		o := &ii.objs[k]
		o.expr = minimalExpression(ii, k)
	}
}

func minimalExpression(ii *imgInfo, k int) string {
	o := &ii.objs[k]
	n := min(len(o.attrs), 5)
	mask := make([]bool, len(o.attrs))
	// Subsets in order of size, then canonical order: the shortest unique
	// expression wins and ties resolve deterministically.
	for size := 0; size <= n; size++ {
		found := false
		forEachSubset(n, size, func(sel []int) bool {
			clear(mask)
			for _, i := range sel {
				mask[i] = true
			}
			if uniqueUnder(ii, k, mask) {
				found = true
				return false
			}
			return true
		})
		if found {
			return describe(o.attrs, mask, o.src.Category)
		}
	}
	// Identical twins: single one out by an extreme position.
	var twins []int
	for j := range ii.objs {
		if j != k && ii.objs[j].desc == o.desc {
			twins = append(twins, j)
		}
	}
	cx, cy := (o.box.X1+o.box.X2)/2, (o.box.Y1+o.box.Y2)/2
	const margin = 2.0
	left, right, top, bottom := true, true, true, true
	for _, j := range twins {
		b := ii.objs[j].box
		jx, jy := (b.X1+b.X2)/2, (b.Y1+b.Y2)/2
		left = left && cx < jx-margin
		right = right && cx > jx+margin
		top = top && cy < jy-margin
		bottom = bottom && cy > jy+margin
	}
	switch {
	case left:
		return "leftmost " + o.desc
	case right:
		return "rightmost " + o.desc
	case top:
		return "topmost " + o.desc
	case bottom:
		return "bottommost " + o.desc
	}
	return ""
}

func uniqueUnder(ii *imgInfo, k int, mask []bool) bool {
	o := &ii.objs[k]
	for j := range ii.objs {
		if j == k {
			continue
		}
		p := &ii.objs[j]
		if p.src.Category != o.src.Category {
			continue
		}
		same := true
		for i, a := range o.attrs {
			if mask[i] && attrVal(p.src.Attributes, a.key) != a.val {
				same = false
				break
			}
		}
		if same {
			return false
		}
	}
	return true
}

// forEachSubset calls fn with every size-element subset of [0, n) in
// lexicographic order until fn returns false.
func forEachSubset(n, size int, fn func([]int) bool) {
	sel := make([]int, size)
	var rec func(start, d int) bool
	rec = func(start, d int) bool {
		if d == size {
			return fn(sel)
		}
		for i := start; i <= n-(size-d); i++ {
			sel[d] = i
			if !rec(i+1, d+1) {
				return false
			}
		}
		return true
	}
	rec(0, 0)
}

func markAmbiguousBoxes(ii *imgInfo) {
	for a := range ii.objs {
		for b := a + 1; b < len(ii.objs); b++ {
			if ii.objs[a].box.IoU(ii.objs[b].box) > 0.7 {
				ii.objs[a].boxAmbiguous = true
				ii.objs[b].boxAmbiguous = true
			}
		}
	}
}

// buildVocab collects the POPE probe vocabulary and its statistics. Counts
// come from training images when there are any, so that evaluation splits do
// not shape the negatives.
func (ix *index) buildVocab() {
	for lvl := 0; lvl < 2; lvl++ {
		ix.vocabIdx[lvl] = map[string]int{}
	}
	set := [2]map[string]struct{}{{}, {}}
	for _, ii := range ix.images {
		for _, o := range ii.objs {
			set[0][o.src.Category] = struct{}{}
			if o.color != "" {
				set[1][o.color+" "+o.src.Category] = struct{}{}
			}
		}
	}
	for lvl := 0; lvl < 2; lvl++ {
		for p := range set[lvl] {
			ix.vocab[lvl] = append(ix.vocab[lvl], p)
		}
		sort.Strings(ix.vocab[lvl])
		for i, p := range ix.vocab[lvl] {
			ix.vocabIdx[lvl][p] = i
		}
		n := len(ix.vocab[lvl])
		ix.freq[lvl] = make([]int, n)
		ix.cooc[lvl] = make([][]int, n)
		for i := range ix.cooc[lvl] {
			ix.cooc[lvl][i] = make([]int, n)
		}
	}
	hasTrain := false
	for _, ii := range ix.images {
		for _, o := range ii.objs {
			ii.present[0] = append(ii.present[0], ix.vocabIdx[0][o.src.Category])
			if o.color != "" {
				ii.present[1] = append(ii.present[1], ix.vocabIdx[1][o.color+" "+o.src.Category])
			}
		}
		for lvl := 0; lvl < 2; lvl++ {
			slices.Sort(ii.present[lvl])
			ii.present[lvl] = slices.Compact(ii.present[lvl])
		}
		hasTrain = hasTrain || ii.src.Split == dataset.SplitTrain
	}
	for _, ii := range ix.images {
		if hasTrain && ii.src.Split != dataset.SplitTrain {
			continue
		}
		for lvl := 0; lvl < 2; lvl++ {
			for _, a := range ii.present[lvl] {
				ix.freq[lvl][a]++
				for _, b := range ii.present[lvl] {
					if a != b {
						ix.cooc[lvl][a][b]++
					}
				}
			}
		}
	}
}
