package gomlx

import (
	"math/rand/v2"

	gmdataset "github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// The two-square task the grounder tests train on (and whose one-square
// images the loss tests draw): a noisy grey image with coloured squares, a
// question token naming a colour after a few filler words, and the answer
// as the square's box in four coarse box-number tokens. The research
// probes built on it (localization, binding, scene) live in bench/probe
// and run through the compute contract.

const (
	probeBox0     = 15  // coarse "0.00" .. "1.00" are 15 .. 115, as in model
	probeQuestion = 120 // +0 red, +1 green
	probeAnswer   = 122 // "answer now": the question precedes the image
	probeFiller0  = 123 // 123 .. 129: filler words
	probeFillers  = 7
)

// probeItem is one sample: the image (ImageSize^2 x 3 uint8), the token
// sequence, the position whose logits predict the first box number, and
// the box in coarse values (hundredths of the image).
type probeItem struct {
	img  []byte
	toks []int32
	at   int
	box  [4]int
}

// probeSeq returns the tokens (filler random filler words, the question,
// the image's patches, the answer marker, the box and <eos>) and the
// position whose logits predict the first box number.
func probeSeq(c model.Config, filler, q int, box [4]int, rng *rand.Rand) ([]int32, int) {
	toks := []int32{tokBOS}
	for range filler {
		toks = append(toks, int32(probeFiller0+rng.IntN(probeFillers)))
	}
	toks = append(toks, int32(probeQuestion+q))
	for range c.Patches() {
		toks = append(toks, c.PatchToken)
	}
	toks = append(toks, probeAnswer)
	at := len(toks) - 1
	for _, v := range box {
		toks = append(toks, int32(probeBox0+v))
	}
	return append(toks, tokEOS), at
}

// probeBox is a box of coarse values as a dataset.Box, for its IoU.
func probeBox(b [4]int) gmdataset.Box {
	return gmdataset.Box{X1: float64(b[0]), Y1: float64(b[1]), X2: float64(b[2]), Y2: float64(b[3])}
}
