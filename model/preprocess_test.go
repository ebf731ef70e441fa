package model

import (
	"bytes"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// overlap is the length of [a0, a1) ∩ [b0, b1).
func overlap(a0, a1, b0, b1 float64) float64 { return math.Max(0, math.Min(a1, b1)-math.Max(a0, b0)) }

// TestPreprocessBoxAlignment draws a coloured box on a black image, and
// checks every output pixel against the coverage, in the output grid, of
// Normalize(box) and of the image itself (the rest being PadGray padding).
// So a box normalized by the codec lands exactly on the pixels the model
// sees, half-pixel padding included.
func TestPreprocessBoxAlignment(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	col := [3]float64{200, 50, 10}
	for _, sz := range [][2]int{{37, 20}, {20, 37}, {50, 50}, {101, 64}, {64, 101}, {7, 3}, {3, 8}, {640, 427}, {1, 1}} {
		for _, size := range []int{48, 16, 5} {
			w, h := sz[0], sz[1]
			for range 4 {
				x1, y1 := r.IntN(w), r.IntN(h)
				x2, y2 := x1+1+r.IntN(w-x1), y1+1+r.IntN(h-y1)
				img := image.NewRGBA(image.Rect(0, 0, w, h))
				for y := range h {
					for x := range w {
						c := color.RGBA{0, 0, 0, 255}
						if x >= x1 && x < x2 && y >= y1 && y < y2 {
							c = color.RGBA{uint8(col[0]), uint8(col[1]), uint8(col[2]), 255}
						}
						img.SetRGBA(x, y, c)
					}
				}
				out, err := Preprocess(img, size)
				if err != nil {
					t.Fatal(err)
				}
				box := Normalize(dataset.Box{X1: float64(x1), Y1: float64(y1), X2: float64(x2), Y2: float64(y2)}, w, h)
				whole := Normalize(dataset.Box{X2: float64(w), Y2: float64(h)}, w, h)
				fs := float64(size)
				for k := range size {
					for i := range size {
						cx0, cx1, cy0, cy1 := float64(i)/fs, float64(i+1)/fs, float64(k)/fs, float64(k+1)/fs
						cell := 1 / (fs * fs)
						covBox := overlap(cx0, cx1, box[0], box[2]) * overlap(cy0, cy1, box[1], box[3]) / cell
						covImg := overlap(cx0, cx1, whole[0], whole[2]) * overlap(cy0, cy1, whole[1], whole[3]) / cell
						for c := range 3 {
							want := col[c]*covBox + PadGray*(1-covImg)
							got := float64(out[(k*size+i)*3+c])
							if math.Abs(got-want) > 0.5+1e-6 {
								t.Fatalf("%dx%d box %v -> %d px: pixel (%d,%d) channel %d = %v, want %.3f",
									w, h, []int{x1, y1, x2, y2}, size, i, k, c, got, want)
							}
						}
					}
				}
			}
		}
	}
}

func TestPreprocessPadsCentred(t *testing.T) {
	// A 4x2 white image: the square is 4x4, one row of padding above and below.
	img := image.NewRGBA(image.Rect(0, 0, 4, 2))
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	out, err := Preprocess(img, 4)
	if err != nil {
		t.Fatal(err)
	}
	for k := range 4 {
		want := uint8(255)
		if k == 0 || k == 3 {
			want = PadGray
		}
		for i := range 4 * 3 {
			if out[k*12+i] != want {
				t.Fatalf("row %d = %v, want %d", k, out[k*12:k*12+12], want)
			}
		}
	}
}

type opaqueImage struct{ image.Image } // hides the concrete type: forces the generic path

func TestRGBPixelsPathsAgree(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	nrgba := image.NewNRGBA(image.Rect(3, 5, 20, 14))
	for i := range nrgba.Pix {
		nrgba.Pix[i] = uint8(r.IntN(256))
	}
	rgba := image.NewRGBA(nrgba.Bounds())
	for i := range rgba.Pix {
		rgba.Pix[i] = uint8(r.IntN(256))
	}
	for i := 3; i < len(rgba.Pix); i += 4 {
		rgba.Pix[i] = 255
	}
	for _, img := range []image.Image{nrgba, rgba, nrgba.SubImage(image.Rect(4, 6, 10, 9))} {
		fast, w, h := RGBPixels(img)
		slow, w2, h2 := RGBPixels(opaqueImage{img})
		if w != w2 || h != h2 || !bytes.Equal(fast, slow) {
			t.Fatalf("%T: fast and generic paths differ", img)
		}
		if w != img.Bounds().Dx() || h != img.Bounds().Dy() || len(fast) != w*h*3 {
			t.Fatalf("%T: %dx%d, %d bytes", img, w, h, len(fast))
		}
	}
	g := image.NewGray(image.Rect(0, 0, 2, 1))
	g.Pix[0], g.Pix[1] = 7, 250
	if p, _, _ := RGBPixels(g); !bytes.Equal(p, []byte{7, 7, 7, 250, 250, 250}) {
		t.Fatalf("gray: %v", p)
	}
}

func TestPreprocessErrorsAndDeterminism(t *testing.T) {
	if _, err := PreprocessRGB(nil, 0, 3, 8); err == nil {
		t.Error("empty image accepted")
	}
	if _, err := PreprocessRGB(make([]byte, 5), 2, 1, 8); err == nil {
		t.Error("short pixel buffer accepted")
	}
	pix := make([]byte, 33*17*3)
	for i := range pix {
		pix[i] = byte(i * 7)
	}
	a, _ := PreprocessRGB(pix, 33, 17, 48)
	b, _ := PreprocessRGB(pix, 33, 17, 48)
	if !bytes.Equal(a, b) || len(a) != 48*48*3 {
		t.Fatal("preprocessing is not deterministic")
	}
}

func TestNormalizePixels(t *testing.T) {
	in := make([]uint8, 256)
	for i := range in {
		in[i] = uint8(i)
	}
	out := NormalizePixels(in)
	for i, v := range out {
		want := (float64(i)/255 - 0.5) / 0.25
		if math.Abs(float64(v)-want) > 1e-6 {
			t.Fatalf("NormalizePixels(%d) = %v, want %v", i, v, want)
		}
	}
	if out[0] != -2 || out[255] != 2 {
		t.Fatalf("ends %v %v", out[0], out[255])
	}
	ci, err := ComputeImage(image.NewGray(image.Rect(0, 0, 3, 3)), 6)
	if err != nil || ci.Size != 6 || len(ci.Pixels) != 6*6*3 || ci.Pixels[0] != -2 {
		t.Fatalf("ComputeImage: %+v %v", ci.Size, err)
	}
}
