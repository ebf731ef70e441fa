package model

import (
	"context"
	"fmt"
	"image"
	"strings"
	"testing"
)

func BenchmarkEncode(b *testing.B) {
	tok := testTokenizer(b)
	text := strings.Repeat(testCorpus[4]+" ", 4)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		tok.Encode(text)
	}
}

func BenchmarkDecode(b *testing.B) {
	tok := testTokenizer(b)
	ids := tok.Encode(strings.Repeat(testCorpus[4]+" ", 4))
	for b.Loop() {
		tok.Decode(ids)
	}
}

func BenchmarkPreprocess640x480To48(b *testing.B) {
	img := image.NewRGBA(image.Rect(0, 0, 640, 480))
	for i := range img.Pix {
		img.Pix[i] = byte(i)
	}
	for b.Loop() {
		if _, err := Preprocess(img, 48); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGenerateBox measures host-side decoding overhead (template,
// preprocessing, masking) with a free fake backend: 16 box answers a batch.
func BenchmarkGenerateBox(b *testing.B) {
	tok := testTokenizer(b)
	cfg := DefaultConfig(tok.VocabSize())
	logits := make([]float32, cfg.VocabSize)
	f := newFake(cfg, func(prompt, fed []int32) []float32 { return logits })
	g, err := NewGenerator(f, "s1", tok, cfg)
	if err != nil {
		b.Fatal(err)
	}
	prompts := make([]Prompt, 16)
	for i := range prompts {
		prompts[i] = Prompt{Text: fmt.Sprintf("<image>\nWhere is object %d?", i), Images: []image.Image{image.NewRGBA(image.Rect(0, 0, 64, 48))}}
	}
	for b.Loop() {
		if _, err := g.Generate(context.Background(), prompts, GenerateOptions{Constraint: ConstraintBox}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(prompts))/b.Elapsed().Seconds(), "answers/s")
}
