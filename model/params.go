package model

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math"
	"strings"
)

// DefaultConfig is the tinygrounder v1 configuration that trains all three
// stages on a 2-core CPU in minutes with the pure-Go backend.
//
// Images are 48 x 48 in 8 x 8 patches (36 patches, a 6 x 6 grid, enough to
// place a box within a cell). MaxImages is 4: the full image plus up to 3
// candidate crops for the stage-2 pick tasks (T->I, C->I), so synth must cap
// the candidates K at 3 (a record reads at most 1+K = 4 images); tiling
// candidates into one image would shrink each crop to 24 px or less and
// lose the very detail the crop tasks are about. MaxSeq 224 holds four
// images (144 patch positions) plus an 80-token prompt and answer, or one
// image plus a 188-token dense description; longer records are dropped by
// the shard builder and counted.
func DefaultConfig(vocabSize int) Config {
	return Config{
		Version:       "tinygrounder/v1",
		ImageSize:     48,
		PatchSize:     8,
		VisionWidth:   64,
		VisionDepth:   1,
		Width:         96,
		Depth:         3,
		Heads:         4,
		MLPRatio:      4,
		VocabSize:     vocabSize,
		MaxSeq:        224,
		MaxImages:     4,
		PatchToken:    tokPatch,
		PadToken:      tokPad,
		BoxToken0:     tokCoarse0,
		BoxTokens:     numCoarse,
		BoxLabelSigma: 1.5,
	}
}

// ConfigSHA256 is the SHA256 of the config that b (JSON) holds, parsed
// and validated first (ParseConfig): the hash does not depend on how a
// store re-spaced or re-ordered b, and it is the config_sha256 of the
// shards and checkpoints written for that config.
func ConfigSHA256(b []byte) (string, error) {
	c, err := ParseConfig(b)
	if err != nil {
		return "", err
	}
	return c.SHA256(), nil
}

// SHA256 is the hex sha256 of the config's JSON (encoding/json, field order
// as declared), the "config_sha256" of shards and checkpoints.
func (c Config) SHA256() string {
	b, _ := json.Marshal(c) // a struct of numbers and strings always marshals
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// ParamSpec is one canonical parameter: its name and shape. Linear weights
// are [in, out] (y = x W + b); layer norms have a scale "w" and a shift "b".
type ParamSpec struct {
	Name  string
	Shape []int
}

// Size is the number of elements.
func (p ParamSpec) Size() int64 {
	n := int64(1)
	for _, d := range p.Shape {
		n *= int64(d)
	}
	return n
}

// MLPHidden is the hidden width of an MLP block over width w:
// round(w * MLPRatio).
func (c Config) MLPHidden(w int) int { return int(math.Round(float64(w) * c.MLPRatio)) }

// Params lists every parameter of the model with its canonical name and
// shape, in the order the definition (net.go) first reads them: it is
// derived by running a training step of the definition, with every loss c
// turns on, over shapes (no parameter is listed by hand). Every backend
// names its tensors (weights and optimizer state) this way, so that
// checkpoints move between backends and stage prefixes select the same
// parameters everywhere.
//
// The projector maps vision_width -> width -> width (fc1, GELU, fc2). The
// attention of each block is a fused qkv projection [w, 3w] (q, k, v
// concatenated in that order along the output axis, heads contiguous within
// each) and an output projection "attn.out".
func (c Config) Params() []ParamSpec {
	ps, err := deriveParams(c)
	if err != nil {
		panic(err) // a definition that does not fit a config is a bug
	}
	return ps
}

// ParamCount is the number of parameters, in closed form (it equals the sum
// of Params' sizes; a test holds the two together).
func (c Config) ParamCount() int64 {
	block := func(w int) int64 {
		w64, h := int64(w), int64(c.MLPHidden(w))
		return 4*w64 + // ln1, ln2
			3*w64*w64 + 3*w64 + // qkv
			w64*w64 + w64 + // out
			w64*h + h + h*w64 + w64 // mlp
	}
	if c.Grounder {
		// The grounder's tower has no closed form worth keeping beside
		// Params; its count is the list's.
		var n int64
		for _, p := range c.Params() {
			n += p.Size()
		}
		return n
	}
	vw, w, v := int64(c.VisionWidth), int64(c.Width), int64(c.VocabSize)
	p := int64(c.PatchSize*c.PatchSize*3)*vw + vw + int64(c.Patches())*vw
	if chans := c.StemChannels(); chans != nil {
		p = vw + int64(c.Patches())*vw
		in := int64(3)
		for _, out := range chans {
			p += 9*in*int64(out) + int64(out)
			in = int64(out)
		}
		p += in * vw
	}
	p += int64(c.VisionDepth)*block(c.VisionWidth) + 2*vw
	p += vw*w + w + w*w + w
	p += v*w + int64(c.MaxSeq)*w
	if c.TextFusion {
		p += 2*w + 2*w*vw + 2*vw
		if c.FusionAttention {
			p += w
		}
	}
	if c.GroundLossWeight > 0 {
		p += 3*w + 1
		if c.GroundReadout {
			p += w * w
		}
	}
	if c.BoxLossWeight > 0 {
		p += 6*w + 4
	}
	p += int64(c.Depth)*block(c.Width) + 2*w
	p += w * v
	return p
}

// FLOPs are counted as 2 per multiply-add of the matrix products; layer
// norms, softmax, GELU, biases and embedding lookups are left out (the usual
// convention; they are a few percent here). Attention is counted over the
// full MaxSeq context without a causal discount, which is what a backend
// that masks a dense [MaxSeq, MaxSeq] score matrix computes (as PaLM's
// model-FLOPs formula does).

// FLOPsPerToken is the forward FLOPs of the language model for one sequence
// position: per block the qkv, output and MLP products (2 * (4w^2 + 2wh))
// and attention scores and weighted values (2 * 2 * MaxSeq * w), plus the
// output head (2 * w * vocab); with TextFusion also the running text sum
// (2 * MaxSeq * w, as a masked [MaxSeq, MaxSeq] product computes it) and
// the fusion layer (4 * w^2), and with FusionAttention the query's score
// (2 * w), and with GroundReadout the grounding logit (2 * w), the pooling
// (2 * MaxSeq * w, as a masked [MaxSeq, MaxSeq] product computes it) and
// the readout layer (2 * w^2).
func (c Config) FLOPsPerToken() float64 {
	w, h := float64(c.Width), float64(c.MLPHidden(c.Width))
	block := 2*(4*w*w+2*w*h) + 4*float64(c.MaxSeq)*w
	f := float64(c.Depth)*block + 2*w*float64(c.VocabSize)
	if c.TextFusion {
		f += 2*float64(c.MaxSeq)*w + 4*w*w
		if c.FusionAttention {
			f += 2 * w
		}
	}
	if c.GroundReadout {
		f += 2*w + 2*float64(c.MaxSeq)*w + 2*w*w
	}

	return f
}

// FLOPsPerImage is the forward FLOPs of the vision encoder and projector
// for one image: patch embedding (or ConvStem's convolutions and 1x1
// embedding), VisionDepth blocks over Patches() positions (attention over
// Patches() keys) and the projector.
func (c Config) FLOPsPerImage() float64 {
	vw, w := float64(c.VisionWidth), float64(c.Width)
	hv := float64(c.MLPHidden(c.VisionWidth))
	n := float64(c.Patches())
	perPatch := 2 * float64(c.PatchSize*c.PatchSize*3) * vw
	stem := 0.0
	if chans := c.StemChannels(); chans != nil {
		in, side := 3.0, float64(c.ImageSize)
		for _, out := range chans {
			side /= 2
			stem += 2 * side * side * 9 * in * float64(out)
			in = float64(out)
		}
		perPatch = 2 * in * vw
	}
	perPatch += float64(c.VisionDepth) * (2*(4*vw*vw+2*vw*hv) + 4*n*vw)
	perPatch += 2 * (vw*w + w*w)
	return stem + n*perPatch
}

// GrounderFLOPsPerImage is the forward FLOPs of Config.Grounder's tower
// (every 3x3 convolution, with its two coordinate channels, after the 2x2
// fold), its transformer blocks over the cells, and the head (fc1, out and
// the match keys), and the name head (GrounderNameSlots) for one image; 0
// without Grounder. The sentence encoder,
// over a few dozen text positions per sequence, is left out.
func (c Config) GrounderFLOPsPerImage() float64 {
	strides, chans := c.GrounderConvs()
	if strides == nil {
		return 0
	}
	side, in, f := float64(c.ImageSize/2), 12.0, 0.0
	for i, s := range strides {
		side /= float64(s)
		f += 2 * side * side * 9 * (in + 2) * float64(chans[i])
		in = float64(chans[i])
	}
	vw, n := float64(c.VisionWidth), float64(c.Patches())
	hv := float64(c.MLPHidden(c.VisionWidth))
	f += float64(c.GrounderGridDepth) * n * (2*(4*vw*vw+2*vw*hv) + 4*n*vw)
	f += n * 2 * ((vw+2)*vw + vw*5 + vw*vw)
	if c.GrounderNameSlots > 0 {
		// The name head: its convolutions, then fc1, out and per slot
		// prev, mix and the scores against the vocabulary.
		side, in := float64(c.ImageSize/2), 12.0
		for _, cv := range nameConvs(c) {
			side /= float64(cv.stride)
			f += 2 * side * side * 9 * (in + 2) * float64(cv.ch)
			in = float64(cv.ch)
		}
		w, slots := float64(c.Width), float64(c.GrounderNameSlots)
		f += 2 * (2*in*w + w*slots*w + slots*(2*w*w+w*float64(c.VocabSize)))
	}
	return f
}

// FLOPsPerStep is the model FLOPs of one training step over a batch of
// sequences padded to MaxSeq with every image slot filled: forward plus
// backward, taken as 3x the forward.
func (c Config) FLOPsPerStep(batch int) float64 {
	fwd := float64(c.MaxSeq)*c.FLOPsPerToken() + float64(c.MaxImages)*c.FLOPsPerImage()
	return 3 * float64(batch) * fwd
}

// GrounderReads reports whether Config.Grounder's encoder and head read
// the parameter name: the sentence encoder, tower and head ("grounder.*")
// and the token embeddings the sentence encoder embeds the text with.
// compute.ObjectiveGrounder trains these and no others.
func GrounderReads(name string) bool {
	return strings.HasPrefix(name, "grounder.") || name == "embed.tokens"
}
