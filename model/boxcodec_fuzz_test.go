package model

import (
	"math"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// FuzzBoxCodec runs a pixel box of a w x h image through the whole codec,
// as training writes it and inference reads it back: Normalize, FormatBox,
// ParseBox, Denormalize. The text must be in the box grammar the tokenizer
// and the constrained decoder know, parse back to the normalized box within
// the text's rounding, and land back on the box clipped to the image within
// half a thousandth of the padded side.
func FuzzBoxCodec(f *testing.F) {
	f.Add(10.0, 20.0, 110.0, 70.0, 200, 100)
	f.Add(0.0, 0.0, 640.0, 480.0, 640, 480)
	f.Add(-5.0, -5.0, 5000.0, 3.5, 64, 64)
	f.Add(3.0, 3.0, 3.0, 3.0, 1, 1)
	f.Add(0.4999, 0.0005, 0.5001, 1e-9, 1000, 1)
	f.Add(-1e300, 1e300, 1e300, 1e300, 1<<16, 7)
	f.Fuzz(func(t *testing.T, x1, y1, x2, y2 float64, w, h int) {
		// Boxes come from readers that refuse non-finite and inverted
		// boxes, and images have a positive size.
		for _, v := range []float64{x1, y1, x2, y2} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return
			}
		}
		if x1 > x2 || y1 > y2 || w < 1 || h < 1 || w > 1<<16 || h > 1<<16 {
			return
		}
		b := dataset.Box{X1: x1, Y1: y1, X2: x2, Y2: y2}
		n := Normalize(b, w, h)
		for k, v := range n {
			if !(v >= 0 && v <= 1) {
				t.Fatalf("Normalize(%+v, %d, %d)[%d] = %v outside [0, 1]", b, w, h, k, v)
			}
		}
		text := FormatBox(n)
		if _, ok := matchBox(text); !ok {
			t.Fatalf("FormatBox(%v) = %q is not in the box grammar", n, text)
		}
		back, err := ParseBox(text)
		if err != nil {
			t.Fatalf("ParseBox(FormatBox(%v) = %q): %v", n, text, err)
		}
		for k := range n {
			if math.Abs(back[k]-n[k]) > 0.0005+1e-12 {
				t.Fatalf("%v -> %q -> %v: number %d moved by more than the rounding", n, text, back, k)
			}
		}
		if again := FormatBox(back); again != text {
			t.Fatalf("FormatBox is not a fixed point: %q -> %v -> %q", text, back, again)
		}

		px := Denormalize(back, w, h)
		if !(px.X1 >= 0 && px.X1 <= px.X2 && px.X2 <= float64(w) && px.Y1 >= 0 && px.Y1 <= px.Y2 && px.Y2 <= float64(h)) {
			t.Fatalf("Denormalize(%v, %d, %d) = %+v: not an ordered box inside the image", back, w, h, px)
		}
		side := float64(max(w, h))
		clip := func(v, hi float64) float64 { return math.Min(hi, math.Max(0, v)) }
		want := dataset.Box{X1: clip(x1, float64(w)), Y1: clip(y1, float64(h)), X2: clip(x2, float64(w)), Y2: clip(y2, float64(h))}
		tol := 0.0005*side + 1e-9*side
		for k, d := range [4]float64{px.X1 - want.X1, px.Y1 - want.Y1, px.X2 - want.X2, px.Y2 - want.Y2} {
			if math.Abs(d) > tol {
				t.Fatalf("%+v in %dx%d -> %q -> %+v: coordinate %d is %v off the clipped box %+v (tolerance %v)",
					b, w, h, text, px, k, d, want, tol)
			}
		}
	})
}
