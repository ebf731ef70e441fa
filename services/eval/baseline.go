package eval

import (
	"context"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// CentreBox is the fallback fixed box: the middle half of the padded square.
var CentreBox = model.NormBox{0.25, 0.25, 0.75, 0.75}

// MeanBox accumulates the mean of ground-truth boxes in the padded-square
// frame, the frame the model writes in. The zero value is ready to use.
type MeanBox struct {
	n   int
	sum [4]float64
}

// Add adds one pixel box of a w x h image.
func (m *MeanBox) Add(b dataset.Box, w, h int) {
	if w <= 0 || h <= 0 {
		return
	}
	n := model.Normalize(b, w, h)
	for i := range n {
		m.sum[i] += n[i]
	}
	m.n++
}

// N is the number of boxes added.
func (m *MeanBox) N() int { return m.n }

// Box returns the mean box, or CentreBox when nothing was added.
func (m *MeanBox) Box() model.NormBox {
	if m.n == 0 {
		return CentreBox
	}
	var b model.NormBox
	for i := range b {
		b[i] = m.sum[i] / float64(m.n)
	}
	return b
}

// FixedBoxPredictor answers every record with the same box: the baseline a
// grounding model has to beat, since a model that only learned where
// objects usually are scores exactly this.
type FixedBoxPredictor struct {
	Box model.NormBox
}

// Predict answers every record with the fixed box, as text and as a
// decoded box.
func (f FixedBoxPredictor) Predict(ctx context.Context, recs []model.Record) ([]Prediction, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]Prediction, len(recs))
	text := model.FormatBox(f.Box)
	for i := range out {
		b := f.Box
		out[i] = Prediction{Text: text, Box: &b}
	}
	return out, nil
}
