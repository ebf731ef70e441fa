package probe

import (
	"math/rand/v2"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// The localization and binding probes: a noisy grey image with coloured
// squares, a question token naming a colour, and the answer as the
// square's box in four coarse box-number tokens. With one square it checks
// that the spatial path (patches, positions, box tokens) learns at all;
// with a red and a green square it measures how fast the model learns to
// bind a word to what it sees, which is what referring expressions need.
//
// Token ids are raw: the probes below the templated ones need no
// tokenizer, only the box numbers at model.DefaultConfig's BoxToken0.

const (
	tokBOS        = 1
	tokEOS        = 3
	probeBox0     = 15  // coarse "0.00" .. "1.00" are 15 .. 115, as in model
	probeQuestion = 120 // +0 red, +1 green
	probeAnswer   = 122 // "answer now" when the question precedes the image
	probeFiller0  = 123 // 123 .. 129: filler words
	probeFillers  = 7
	fineTok0      = probeBox0 + 101 // fine digits "0" .. "9", after the coarse numbers
	squaresVocab  = 130
)

// opts is one probe variant: the model layout and what it is asked.
type opts struct {
	Squares    int // 1 or 2
	Steps      int
	LR         float64
	Heads      int
	VisDepth   int
	TextFirst  bool // question before the image
	Fusion     bool // Config.TextFusion
	FusionAttn bool // Config.FusionAttention
	// Filler is the number of random filler tokens (a template's words)
	// before the question when TextFirst: what a real instruction wraps
	// its two or three telling words in.
	Filler int
	// FillerJitter adds 0 to FillerJitter more filler tokens per item
	// (scene probe), so that the image's patches sit at a sequence
	// position that varies as a templated instruction's length does.
	FillerJitter int
	// PatchPos is Config.PatchPositions.
	PatchPos bool
	// Width, Depth and Sigma override the demo's 64, 2 and
	// Config.BoxLabelSigma when not zero.
	Width, Depth int
	Sigma        float64
	// Ground is Config.GroundLossWeight: with it the shard labels every
	// patch with the fraction the answer box covers.
	Ground float64
	// ColourOnly asks the scene probe about objects of a colour no other
	// object in their image has, by the colour word alone.
	ColourOnly bool
	// NoFine leaves the box numbers' third decimals (the fine digit
	// tokens of model.FormatBox's answers) out of the answer loss.
	NoFine bool
	// ShapeOnly asks by the shape word alone, about objects of a shape no
	// other object in their image has.
	ShapeOnly bool
	// CropShape asks the scene probe for the shape of a crop (the object's
	// box with half its size again of context, as the synth set's 1.5x
	// crops, resized to the model's input): the answer is one shape word,
	// scored as the argmax over the eight shape words. It measures shape
	// perception alone, at the scale stage 1's crop naming trains it.
	CropShape bool
	// ImageSize overrides the 48-pixel input when not zero.
	ImageSize int
	// Stem is Config.ConvStem.
	Stem bool
	// Box is Config.BoxLossWeight (with Ground): the shard also carries
	// the box at every covered patch.
	Box float64
	// Readout is Config.GroundReadout (with Ground).
	Readout bool
	// Templated asks the scene probe's questions the way the pipeline
	// does: synth's REC templates around the description, the chat
	// template, the tokenizer built from the questions and the answer as
	// text ("[0.123, 0.456, 0.789, 0.900]"), instead of the description's
	// words after filler tokens and four coarse numbers.
	Templated bool
	// Bare (Templated only) asks with the expression alone, no
	// instruction around it.
	Bare bool
}

// config is the model of a variant: the demo's width and depth, the
// squares' vocabulary.
func (o opts) config() model.Config {
	c := model.DefaultConfig(squaresVocab)
	c.Width, c.Depth, c.Heads, c.VisionDepth = 64, 2, o.Heads, o.VisDepth
	c.MaxSeq, c.MaxImages = 48+o.Filler+o.FillerJitter, 1
	c.TextFusion = o.Fusion
	c.FusionAttention = o.FusionAttn
	if o.Width > 0 {
		c.Width = o.Width
	}
	if o.Depth > 0 {
		c.Depth = o.Depth
	}
	if o.Sigma > 0 {
		c.BoxLabelSigma = o.Sigma
	}
	c.GroundLossWeight = o.Ground
	c.ConvStem = o.Stem
	c.BoxLossWeight = o.Box
	c.GroundReadout = o.Readout
	c.PatchPositions = o.PatchPos
	if o.ImageSize > 0 {
		c.ImageSize = o.ImageSize
	}
	return c
}

// item is one probe sample: the image (ImageSize^2 x 3 uint8), the token
// sequence, the position whose logits predict the first box number, and
// the box in coarse values (hundredths of the image).
type item struct {
	cells []int32 // Config.Grounder's cell labels (model.CellLabels), or nil
	img   []byte
	toks  []int32
	at    int
	box   [4]int
	// size is the object's size class in the scene probe (0 small, 1
	// medium, 2 large; 0 elsewhere).
	size int
	// kind names the attributes the scene probe's expression uses besides
	// the shape ("shape" when none), for per-kind accuracy.
	kind string
	expr string
	// coarse are the positions whose logits predict the box's four coarse
	// numbers when the answer is not four consecutive coarse tokens after
	// at (the templated scene probe's "[0.123, ...]"); nil: at+k.
	coarse *[4]int
}

// coarseAt is the position whose logits predict the item's k-th coarse
// box number.
func (it item) coarseAt(k int) int {
	if it.coarse != nil {
		return it.coarse[k]
	}
	return it.at + k
}

// squareItems draws n samples of the squares probe.
func squareItems(c model.Config, o opts, n int, rng *rand.Rand) []item {
	items := make([]item, n)
	for i := range items {
		img, q, box := computetest.Squares(c.ImageSize, o.Squares, rng)
		seq, at := squareSeq(c, o, q, box, rng)
		items[i] = item{img: img, toks: seq, at: at, box: box}
	}
	return items
}

// squareSeq returns the tokens and the position whose logits predict the
// first box number.
func squareSeq(c model.Config, o opts, q int, box [4]int, rng *rand.Rand) ([]int32, int) {
	toks := []int32{tokBOS}
	if o.TextFirst {
		for range o.Filler {
			toks = append(toks, int32(probeFiller0+rng.IntN(probeFillers)))
		}
		toks = append(toks, int32(probeQuestion+q))
	}
	for range c.Patches() {
		toks = append(toks, c.PatchToken)
	}
	if o.TextFirst {
		toks = append(toks, probeAnswer)
	} else {
		toks = append(toks, int32(probeQuestion+q))
	}
	at := len(toks) - 1
	for _, v := range box {
		toks = append(toks, int32(probeBox0+v))
	}
	return append(toks, tokEOS), at
}

// boxOf is a box of coarse values as a dataset.Box, for its IoU.
func boxOf(b [4]int) dataset.Box {
	return dataset.Box{X1: float64(b[0]), Y1: float64(b[1]), X2: float64(b[2]), Y2: float64(b[3])}
}

// centreIn reports whether the centre of box a lies in box b.
func centreIn(a, b [4]int) bool {
	cx, cy := float64(a[0]+a[2])/2, float64(a[1]+a[3])/2
	return cx >= float64(b[0]) && cx <= float64(b[2]) && cy >= float64(b[1]) && cy <= float64(b[3])
}
