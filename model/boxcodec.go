package model

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// The box codec converts between pixel xyxy boxes in the original image and
// the text form GroundingGPT writes: coordinates normalized to the image
// padded to a square (the shorter side padded symmetrically with the mean
// colour), three decimals, comma and space between numbers.

// PadOffsets returns the padding added on the left and top when an image of
// size w x h is padded to a square of side max(w, h), centred.
func PadOffsets(w, h int) (side, padX, padY float64) {
	s := max(w, h)
	return float64(s), float64(s-w) / 2, float64(s-h) / 2
}

// NormBox is a box normalized to the padded square, each value in [0, 1].
type NormBox [4]float64

// Normalize maps a pixel box of a w x h image to the padded square.
func Normalize(b dataset.Box, w, h int) NormBox {
	side, px, py := PadOffsets(w, h)
	n := NormBox{(b.X1 + px) / side, (b.Y1 + py) / side, (b.X2 + px) / side, (b.Y2 + py) / side}
	for i := range n {
		n[i] = math.Min(1, math.Max(0, n[i]))
	}
	return n
}

// Denormalize undoes Normalize: from the padded square back to pixel xyxy in
// the original w x h image, clipped to the image.
func Denormalize(n NormBox, w, h int) dataset.Box {
	side, px, py := PadOffsets(w, h)
	clip := func(v, hi float64) float64 { return math.Min(hi, math.Max(0, v)) }
	return dataset.Box{
		X1: clip(n[0]*side-px, float64(w)),
		Y1: clip(n[1]*side-py, float64(h)),
		X2: clip(n[2]*side-px, float64(w)),
		Y2: clip(n[3]*side-py, float64(h)),
	}
}

// FormatBox writes a normalized box as GroundingGPT text: "[0.123, 0.456, 0.789, 0.900]".
func FormatBox(n NormBox) string {
	var sb strings.Builder
	sb.Grow(30)
	sb.WriteByte('[')
	for i, v := range n {
		if i > 0 {
			sb.WriteString(", ")
		}
		r := math.Round(v*1000) / 1000
		if r == 0 {
			r = 0 // never "-0.000"
		}
		sb.WriteString(strconv.FormatFloat(r, 'f', 3, 64))
	}
	sb.WriteByte(']')
	return sb.String()
}

// ParseBox parses the first "[a, b, c, d]" box in s. It is strict about the
// shape (four numbers in [0, 1], x1 <= x2, y1 <= y2) and lenient about
// whitespace, so that a model's answer either yields a usable box or a
// precise error.
func ParseBox(s string) (NormBox, error) {
	i := strings.IndexByte(s, '[')
	if i < 0 {
		return NormBox{}, fmt.Errorf("parse box: no '[' in %q", truncate(s))
	}
	j := strings.IndexByte(s[i:], ']')
	if j < 0 {
		return NormBox{}, fmt.Errorf("parse box: no ']' after '[' in %q", truncate(s))
	}
	parts := strings.Split(s[i+1:i+j], ",")
	if len(parts) != 4 {
		return NormBox{}, fmt.Errorf("parse box: want 4 numbers, got %d in %q", len(parts), truncate(s))
	}
	var n NormBox
	for k, p := range parts {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return NormBox{}, fmt.Errorf("parse box: number %d: %w", k+1, err)
		}
		if v < 0 || v > 1 || math.IsNaN(v) {
			return NormBox{}, fmt.Errorf("parse box: number %d = %v outside [0, 1]", k+1, v)
		}
		n[k] = v + 0 // -0 reads as 0
	}
	if n[0] > n[2] || n[1] > n[3] {
		return NormBox{}, fmt.Errorf("parse box: corners out of order in %q", truncate(s))
	}
	return n, nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
