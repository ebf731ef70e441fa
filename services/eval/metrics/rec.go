package metrics

import (
	"slices"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// REC thresholds reported for every box benchmark.
var RECThresholds = []float64{0.25, 0.5, 0.75}

// IoU is the intersection over union of two pixel xyxy boxes; degenerate
// boxes have area 0, so a box that collapses to a line scores 0.
func IoU(a, b dataset.Box) float64 { return a.IoU(b) }

// CenterInside reports whether the centre of pred lies inside truth
// (borders included), lmms-eval's Center_ACC.
func CenterInside(pred, truth dataset.Box) bool {
	cx, cy := (pred.X1+pred.X2)/2, (pred.Y1+pred.Y2)/2
	return truth.X1 <= cx && cx <= truth.X2 && truth.Y1 <= cy && cy <= truth.Y2
}

// RECAccumulator scores referring expression comprehension one expression
// at a time. The zero value is ready to use.
type RECAccumulator struct {
	n, parseFail, center int
	hits                 [3]int // per RECThresholds
	sumIoU               float64
}

// Add scores one expression. pred is nil when the model gave no usable box
// (missing or unparsable): that expression counts as wrong with IoU 0.
// It returns the expression's IoU.
func (a *RECAccumulator) Add(pred *dataset.Box, truth dataset.Box) float64 {
	a.n++
	if pred == nil {
		a.parseFail++
		return 0
	}
	iou := IoU(*pred, truth)
	a.sumIoU += iou
	for i, t := range RECThresholds {
		if iou >= t {
			a.hits[i]++
		}
	}
	if CenterInside(*pred, truth) {
		a.center++
	}
	return iou
}

// RECResult holds the REC metrics of a set of expressions. Rates are in
// [0, 1]; every rate of an empty set is 0.
type RECResult struct {
	N             int
	Acc25         float64 // fraction with IoU >= 0.25
	Acc50         float64 // fraction with IoU >= 0.5 (the headline number)
	Acc75         float64 // fraction with IoU >= 0.75
	MeanIoU       float64 // mean IoU, a missing box counting 0
	CenterAcc     float64 // fraction whose predicted centre lies in the true box
	ParseFailRate float64 // fraction with no usable box
}

// Result returns the metrics so far.
func (a *RECAccumulator) Result() RECResult {
	r := RECResult{N: a.n}
	if a.n == 0 {
		return r
	}
	n := float64(a.n)
	r.Acc25 = float64(a.hits[0]) / n
	r.Acc50 = float64(a.hits[1]) / n
	r.Acc75 = float64(a.hits[2]) / n
	r.MeanIoU = a.sumIoU / n
	r.CenterAcc = float64(a.center) / n
	r.ParseFailRate = float64(a.parseFail) / n
	return r
}

// Map returns the result as metric rows, named as they are stored.
func (r RECResult) Map() map[string]float64 {
	return map[string]float64{
		"n":          float64(r.N),
		"acc@0.25":   r.Acc25,
		"acc@0.5":    r.Acc50,
		"acc@0.75":   r.Acc75,
		"miou":       r.MeanIoU,
		"center_acc": r.CenterAcc,
		"parse_fail": r.ParseFailRate,
	}
}

// RECSample is one scored expression for the slice form of REC.
type RECSample struct {
	Pred  *dataset.Box // nil: missing or unparsable
	Truth dataset.Box
}

// REC scores a slice of expressions.
func REC(samples []RECSample) RECResult {
	var a RECAccumulator
	for _, s := range samples {
		a.Add(s.Pred, s.Truth)
	}
	return a.Result()
}

// Expression kinds of RECBreakdown, exclusive, in this order of precedence.
const (
	ExprRelation  = "relation"  // names another object ("the circle left of the red square")
	ExprSize      = "size"      // a size word, no relation ("the small circle")
	ExprAttribute = "attribute" // colour, texture, shape only
)

var (
	relationWords = []string{" left of ", " right of ", " above ", " below ", " next to ", " inside ",
		" bigger than ", " smaller than ", " behind ", " in front of ", " under ", " on top of ", " beside "}
	sizeWords = []string{"small", "medium", "large", "big", "tiny", "little", "huge"}
)

// ExprKind classifies a referring expression by what it needs the model to
// do: relate two objects, compare sizes, or match attributes.
func ExprKind(expr string) string {
	e := " " + strings.ToLower(strings.Join(strings.Fields(expr), " ")) + " "
	for _, w := range relationWords {
		if strings.Contains(e, w) {
			return ExprRelation
		}
	}
	for _, w := range strings.Fields(e) {
		if slices.Contains(sizeWords, w) {
			return ExprSize
		}
	}
	return ExprAttribute
}

// RECBreakdown splits REC into the choice of the object and the box around
// it, and by expression kind and object size. The zero value is ready.
//
// Selection: the predicted box overlaps the referred object more (IoU) than
// any other object of the image, counted over the expressions whose record
// lists the others (model.Answer.Others). Precision: Acc@0.5 and mean IoU
// over the expressions selected right.
type RECBreakdown struct {
	selN, selHit int
	precHit      int
	precIoU      float64
	kinds, sizes map[string]*[2]int // n, Acc@0.5 hits
}

// Add scores one expression: pred is nil for no usable box; others are the
// other objects' boxes (nil when unknown); expr the expression, sizeBin its
// referent's size class ("" when unknown).
func (b *RECBreakdown) Add(pred *dataset.Box, truth dataset.Box, others []dataset.Box, expr, sizeBin string) {
	if b.kinds == nil {
		b.kinds, b.sizes = map[string]*[2]int{}, map[string]*[2]int{}
	}
	iou := 0.0
	if pred != nil {
		iou = IoU(*pred, truth)
	}
	hit := 0
	if iou >= 0.5 {
		hit = 1
	}
	count := func(m map[string]*[2]int, k string) {
		if k == "" {
			return
		}
		if m[k] == nil {
			m[k] = &[2]int{}
		}
		m[k][0]++
		m[k][1] += hit
	}
	count(b.kinds, ExprKind(expr))
	count(b.sizes, sizeBin)
	if others == nil {
		return
	}
	b.selN++
	if pred == nil || iou == 0 {
		return
	}
	for _, o := range others {
		if IoU(*pred, o) >= iou {
			return
		}
	}
	b.selHit++
	b.precHit += hit
	b.precIoU += iou
}

// Map returns the breakdown as metric rows: "selection" and its "selection_n";
// "precision_acc@0.5" and "precision_miou" over the right selections;
// "acc@0.5_<kind>" with "n_<kind>" per expression kind and per size class.
// Rows without data are left out.
func (b *RECBreakdown) Map() map[string]float64 {
	m := map[string]float64{}
	if b.selN > 0 {
		m["selection"] = float64(b.selHit) / float64(b.selN)
		m["selection_n"] = float64(b.selN)
		if b.selHit > 0 {
			m["precision_acc@0.5"] = float64(b.precHit) / float64(b.selHit)
			m["precision_miou"] = b.precIoU / float64(b.selHit)
		}
	}
	for _, group := range []map[string]*[2]int{b.kinds, b.sizes} {
		for k, v := range group {
			m["acc@0.5_"+k] = float64(v[1]) / float64(v[0])
			m["n_"+k] = float64(v[0])
		}
	}
	return m
}
