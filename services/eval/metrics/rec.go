package metrics

import (
	"fmt"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/model"
)

// REC thresholds reported for every box benchmark.
var RECThresholds = []float64{0.25, 0.5, 0.75}

// PredictedBox turns a model's answer into a pixel box in the original
// w x h image. A box the decoder already produced (box-constrained decoding)
// wins over the text; otherwise the first "[a, b, c, d]" in text is parsed.
// The error says why no box could be had; callers count it as a parse
// failure and score the sample as wrong.
func PredictedBox(text string, decoded *model.NormBox, w, h int) (dataset.Box, error) {
	if w <= 0 || h <= 0 {
		return dataset.Box{}, fmt.Errorf("predicted box: image size %dx%d", w, h)
	}
	if decoded != nil {
		return model.Denormalize(*decoded, w, h), nil
	}
	n, err := model.ParseBox(text)
	if err != nil {
		return dataset.Box{}, err
	}
	return model.Denormalize(n, w, h), nil
}

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
