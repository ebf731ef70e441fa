package model_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/eager"
)

func zeros(dims ...int) *eager.Tensor {
	n := 1
	for _, d := range dims {
		n *= d
	}
	return eager.New(make([]float32, n), dims...)
}

// TestNameChainMatchesTeacherForcing: the name head's inference logits
// (each slot reading the word the slot before it picked) are the logits
// training computes when the label is that very name (each slot reading
// the label's word before it): the grounder loss of a row labelled with
// the head's own answer, and no other label, is NameLossWeight times the
// mean negative log-likelihood of that answer under the inference logits.
// A chain that fed the wrong word, or a mask that let the graph pick a
// word NameTokens cannot, breaks the equality.
func TestNameChainMatchesTeacherForcing(t *testing.T) {
	c := model.DefaultConfig(420)
	c.ImageSize, c.MaxSeq, c.VisionDepth, c.VisionWidth, c.Width = 16, 40, 0, 8, 16
	c.ImagesAfterText, c.Grounder, c.GrounderQueries, c.GrounderLossWeight, c.GrounderNameSlots = true, true, 2, 1, 4
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	params := map[string][]float32{}
	for _, p := range c.Params() {
		v := make([]float32, p.Size())
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.5)
		}
		params[p.Name] = v
	}
	o := &eager.Ops{Params: params}
	const k, slots = 3, 4
	v := c.VocabSize
	images := zeros(k, c.ImageSize, c.ImageSize, 3)
	for i := range images.Data {
		images.Data[i] = float32(rng.NormFloat64())
	}
	lg := model.NewNet[*eager.Tensor](o, c).NameLogits(images)
	if got := lg.Dims; len(got) != 3 || got[0] != k || got[1] != slots || got[2] != v {
		t.Fatalf("name logits %v", got)
	}
	l := 4
	tokens, mask, imgRow := zeros(k, l), zeros(k, l), zeros(k)
	nameImg, nameIDs, nameW := zeros(k), zeros(k, slots), zeros(k, slots)
	var want float64
	var n int
	for i := range k {
		tokens.Data[i*l] = float32(c.PadToken)
		mask.Data[i*l] = 1
		imgRow.Data[i], nameImg.Data[i] = float32(i), float32(i)
		row := lg.Data[i*slots*v : (i+1)*slots*v]
		name := model.NameTokens(row, slots, v)
		label := append(append([]int32(nil), name...), 2) // <eos>
		for s := range min(len(label), slots) {
			nameIDs.Data[i*slots+s], nameW.Data[i*slots+s] = float32(label[s]), 1
			want -= model.LogSoftmaxAt(row[s*v:(s+1)*v], label[s])
			n++
		}
	}
	want = want / float64(n) * model.NameLossWeight
	zero := zeros
	ls := model.NewNet[*eager.Tensor](o, c).TrainLosses(
		model.Inputs[*eager.Tensor]{Tokens: tokens, TextMask: mask, ImgRow: imgRow, Images: images},
		model.Labels[*eager.Tensor]{ImgFirst: zero(k), RefBox: zero(k, 4), RefW: zero(k), Exists: zero(k), ExistsW: zero(k),
			CellIDs: zero(k, c.Patches(), model.CellWords), CellIDW: zero(k, c.Patches(), model.CellWords), CellW: zero(k, c.Patches()),
			NameImg: nameImg, NameIDs: nameIDs, NameW: nameW}, true)
	if got := float64(ls.Grounder.Data[0]); math.Abs(got-want) > 1e-4*(1+math.Abs(want)) {
		t.Fatalf("grounder loss of the head's own names %v, want %v (NameLossWeight times their NLL under the inference logits)", got, want)
	}
}
