package gomlx

import (
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/groundmesh/groundmesh/model"
)

// tinyConfig is a model small enough to train in seconds.
func tinyConfig() model.Config {
	return model.Config{
		Version: "tinygrounder/v1", ImageSize: 16, PatchSize: 8, VisionWidth: 16, VisionDepth: 1,
		Width: 32, Depth: 2, Heads: 2, MLPRatio: 2, VocabSize: 16, MaxSeq: 16, MaxImages: 2,
		PatchToken: 4, PadToken: 0,
	}
}

func configJSON(t testing.TB, c model.Config) []byte {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newTestBackend(t testing.TB) *Backend {
	t.Helper()
	b, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Token ids of the synthetic "what colour is the image" task.
const (
	tokBOS      = 1
	tokQuestion = 2
	tokEOS      = 3
	tokAnswer0  = 10 // colour class q answers tokAnswer0+q
)

// colourSample draws one sample: a noisy image tinted with one of four
// colours (red, green, blue, grey); the answer is the colour's token. Only
// the image tells the colour, so a falling loss means pixels reach the
// language model.
func colourSample(c model.Config, rng *rand.Rand) (img []byte, q int) {
	tints := [4][3]int{{200, 30, 30}, {30, 200, 30}, {30, 30, 200}, {120, 120, 120}}
	s := c.ImageSize
	q = rng.IntN(4)
	img = make([]byte, s*s*3)
	for i := range s * s {
		for ch := range 3 {
			v := tints[q][ch] + rng.IntN(61) - 30
			img[i*3+ch] = byte(min(max(v, 0), 255))
		}
	}
	return img, q
}

// promptTokens is the prompt: BOS, the image's patch tokens, the question.
func promptTokens(c model.Config) []int32 {
	toks := []int32{tokBOS}
	for range c.Patches() {
		toks = append(toks, c.PatchToken)
	}
	return append(toks, tokQuestion)
}

// writeColourShard writes n samples as a tokenized shard (the format of
// model) and returns its path.
func writeColourShard(t testing.TB, dir string, c model.Config, n int, seed uint64) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	L := c.MaxSeq
	tokens := make([]int32, n*L)
	targets := make([]int32, n*L)
	index := make([]int32, n*c.MaxImages)
	var images []byte
	for i := range n {
		img, q := colourSample(c, rng)
		images = append(images, img...)
		for j := range c.MaxImages {
			index[i*c.MaxImages+j] = -1
		}
		index[i*c.MaxImages] = int32(i)
		seq := append(promptTokens(c), int32(tokAnswer0+q), tokEOS)
		for t := range L {
			targets[i*L+t] = -1
			if t < len(seq) {
				tokens[i*L+t] = seq[t]
			} else {
				tokens[i*L+t] = c.PadToken
			}
		}
		// The question predicts the answer, the answer predicts EOS.
		targets[i*L+len(seq)-3] = int32(tokAnswer0 + q)
		targets[i*L+len(seq)-2] = tokEOS
	}
	f := &stFile{
		Metadata: map[string]string{"config_sha256": "test", "synth_set": "colour"},
		Tensors: map[string]stTensor{
			"tokens":      i32Tensor(tokens, n, L),
			"targets":     i32Tensor(targets, n, L),
			"image_index": i32Tensor(index, n, c.MaxImages),
			"images":      {DType: "U8", Shape: []int{n, c.ImageSize, c.ImageSize, 3}, Data: images},
		},
	}
	path := filepath.Join(dir, "shard.safetensors")
	if _, _, err := writeSafetensorsAtomic(path, f); err != nil {
		t.Fatal(err)
	}
	return path
}

// normalize turns uint8 pixels into the model's float32 input.
func normalize(img []byte) []float32 {
	out := make([]float32, len(img))
	for i, p := range img {
		out[i] = (float32(p)/255 - 0.5) / 0.25
	}
	return out
}

func readWeights(t testing.TB, path string, c model.Config) *modelState {
	t.Helper()
	specs := paramSpecs(c)
	sel := make([]bool, len(specs))
	st, err := readCheckpoint(path, specs, sel, false)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
