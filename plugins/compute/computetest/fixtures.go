package computetest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// Token ids the fixtures use: the special tokens of model's
// tokenizer (0 <pad>, 1 <bos>, 2 <eos>, 5 <patch>, 6 "USER: ", 7 "
// ASSISTANT: ") and a few ordinary ids below the tiny vocabulary.
const (
	tokPad       int32 = 0
	tokBOS       int32 = 1
	tokEOS       int32 = 2
	tokPatch     int32 = 5
	tokUser      int32 = 6
	tokAssistant int32 = 7
	tokWord0     int32 = 16 // first "word" id of the fixtures
)

// TinyConfig is a tinygrounder v1 config small enough for a conformance
// run to train in seconds: 16 px images in 8 px patches (4 patches), one
// vision block, two language blocks of width 32, a 64-token vocabulary.
func TinyConfig() model.Config {
	return model.Config{
		Version:     "tinygrounder/v1",
		ImageSize:   16,
		PatchSize:   8,
		VisionWidth: 16,
		VisionDepth: 1,
		Width:       32,
		Depth:       2,
		Heads:       2,
		MLPRatio:    2,
		VocabSize:   64,
		MaxSeq:      32,
		MaxImages:   2,
		PatchToken:  tokPatch,
		PadToken:    tokPad,
	}
}

// TinyConfigJSON is TinyConfig as the JSON a TrainRequest carries.
func TinyConfigJSON() []byte {
	b, _ := json.Marshal(TinyConfig()) // numbers and strings always marshal
	return b
}

// colours of the fixture images; the answer names the colour, so a model
// that reads its image can learn the whole answer.
var colours = [][3]uint8{{220, 40, 40}, {40, 200, 60}, {50, 70, 230}, {230, 220, 50}}

// sample lays out one fixture conversation:
// <bos> USER: <patch>*P w(q) ASSISTANT: w(colour) w(colour+4) <eos>
// with loss on the answer and its <eos>. Two-image samples read the image
// twice (a full image and its "crop").
func sample(cfg model.Config, colour, question, images int) (tokens, targets []int32) {
	tokens = []int32{tokBOS, tokUser}
	for range images * cfg.Patches() {
		tokens = append(tokens, cfg.PatchToken)
	}
	tokens = append(tokens, tokWord0+int32(question), tokAssistant)
	answerAt := len(tokens)
	tokens = append(tokens, tokWord0+8+int32(colour), tokWord0+12+int32(colour), tokEOS)
	targets = make([]int32, len(tokens))
	for i := range targets {
		targets[i] = -1
		if i+1 >= answerAt && i+1 < len(tokens) {
			targets[i] = tokens[i+1]
		}
	}
	return tokens, targets
}

// solidImage returns a size x size RGB image of one colour with a little
// seeded noise, as the uint8 HWC bytes a shard stores.
func solidImage(size int, c [3]uint8, rng *rand.Rand) []uint8 {
	px := make([]uint8, size*size*3)
	for i := 0; i < len(px); i += 3 {
		for ch := range 3 {
			v := int(c[ch]) + rng.IntN(21) - 10
			px[i+ch] = uint8(max(0, min(255, v)))
		}
	}
	return px
}

// WriteTinyShard writes a tokenized training shard in model's
// format for cfg (which must be at least as large as TinyConfig) with n
// samples drawn from seed, and returns its path. Every sample's answer is
// a function of its image's colour.
func WriteTinyShard(dir string, cfg model.Config, n int, seed uint64) (string, error) {
	if cfg.MaxImages < 1 || cfg.MaxSeq < 2*cfg.Patches()+8 {
		return "", fmt.Errorf("write tiny shard: config too small for the fixture")
	}
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	seq := cfg.MaxSeq
	tokens := make([]int32, 0, n*seq)
	targets := make([]int32, 0, n*seq)
	index := make([]int32, 0, n*cfg.MaxImages)
	var images []uint8
	m := 0
	for i := range n {
		colour := rng.IntN(len(colours))
		imgs := 1
		if cfg.MaxImages >= 2 && i%3 == 2 {
			imgs = 2
		}
		tok, tgt := sample(cfg, colour, rng.IntN(4), imgs)
		for len(tok) < seq {
			tok = append(tok, cfg.PadToken)
			tgt = append(tgt, -1)
		}
		tokens = append(tokens, tok...)
		targets = append(targets, tgt...)
		for slot := range cfg.MaxImages {
			if slot < imgs {
				images = append(images, solidImage(cfg.ImageSize, colours[colour], rng)...)
				index = append(index, int32(m))
				m++
			} else {
				index = append(index, -1)
			}
		}
	}
	path := filepath.Join(dir, fmt.Sprintf("tiny-shard-%d.safetensors", seed))
	f, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("write tiny shard: %w", err)
	}
	_, err = model.WriteSafetensors(f, []model.Tensor{
		{Name: "tokens", DType: "I32", Shape: []int{n, seq}, Data: model.Int32Bytes(tokens)},
		{Name: "targets", DType: "I32", Shape: []int{n, seq}, Data: model.Int32Bytes(targets)},
		{Name: "images", DType: "U8", Shape: []int{m, cfg.ImageSize, cfg.ImageSize, 3}, Data: images},
		{Name: "image_index", DType: "I32", Shape: []int{n, cfg.MaxImages}, Data: model.Int32Bytes(index)},
	}, map[string]string{"config_sha256": cfg.SHA256(), "synth_set": "computetest"})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("write tiny shard: %w", err)
	}
	return path, nil
}

// Prompt is one fixture prompt for inference tests: a prefix to prefill
// and the tokens to decode after it, one at a time.
type Prompt struct {
	Prefix []int32
	Next   []int32
	Images []compute.Image
}

// Sequence returns the prompt's first n decode tokens appended to its
// prefix, with its images.
func (p Prompt) Sequence(n int) compute.Sequence {
	toks := append(append([]int32(nil), p.Prefix...), p.Next[:n]...)
	return compute.Sequence{Tokens: toks, Images: p.Images}
}

// Prompts returns two fixture prompts of different lengths (one and two
// images) with three decode tokens each, for cfg.
func Prompts(cfg model.Config) []Prompt {
	rng := rand.New(rand.NewPCG(7, 7))
	img := func(c int) compute.Image {
		return compute.Image{Size: cfg.ImageSize, Pixels: model.NormalizePixels(solidImage(cfg.ImageSize, colours[c], rng))}
	}
	var out []Prompt
	for i, n := range []int{1, 2} {
		tok, _ := sample(cfg, i, i, n)
		// Prefix ends after "ASSISTANT: "; the answer is decoded.
		cut := len(tok) - 3
		p := Prompt{Prefix: tok[:cut], Next: tok[cut:]}
		for j := range n {
			p.Images = append(p.Images, img((i+j)%len(colours)))
		}
		out = append(out, p)
	}
	return out
}
