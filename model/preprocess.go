package model

import (
	"fmt"
	"image"
	"image/color"

	"github.com/groundmesh/groundmesh/plugins/compute"
)

// PadGray is the colour (R = G = B = 128) the shorter side of an image is
// padded with: the normalization mean 0.5, as LLaVA's expand2square pads
// with its normalization mean, so that padding normalizes to (almost) zero.
const PadGray = 128

// RGBPixels returns the pixels of img as tightly packed 8-bit RGB, row
// major (HWC), with any alpha composited over black.
func RGBPixels(img image.Image) (pix []uint8, w, h int) {
	b := img.Bounds()
	w, h = b.Dx(), b.Dy()
	pix = make([]uint8, 0, w*h*3)
	switch m := img.(type) {
	case *image.RGBA:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, y):]
			for x := range w {
				pix = append(pix, row[4*x], row[4*x+1], row[4*x+2])
			}
		}
	case *image.NRGBA:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			row := m.Pix[m.PixOffset(b.Min.X, y):]
			for x := range w {
				// Same arithmetic as color.RGBAModel, so both paths agree.
				a := uint32(row[4*x+3]) * 0x101
				pm := func(c uint8) uint8 { return uint8((uint32(c) * 0x101 * a / 0xffff) >> 8) }
				pix = append(pix, pm(row[4*x]), pm(row[4*x+1]), pm(row[4*x+2]))
			}
		}
	default:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				c := color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
				pix = append(pix, c.R, c.G, c.B)
			}
		}
	}
	return pix, w, h
}

// Preprocess pads img to a square with PadGray (centred, exactly as
// PadOffsets assumes, half pixels included) and resizes it to size x size by
// area averaging, returning 8-bit RGB HWC pixels.
func Preprocess(img image.Image, size int) ([]uint8, error) {
	pix, w, h := RGBPixels(img)
	return PreprocessRGB(pix, w, h, size)
}

// PreprocessRGB is Preprocess over packed 8-bit RGB pixels of a w x h image.
//
// Every output pixel is the exact area average of the part of the padded
// square it covers, computed in integers (so every machine gets the same
// bytes) and rounded half up. The padded square has side s = max(w, h); the
// image sits at (s-w)/2, (s-h)/2, which may be a half pixel. In units of
// 1/(2*size) source pixels every edge is an integer: output pixel i covers
// [2*s*i, 2*s*(i+1)), source pixel j covers [size*(s-w) + 2*size*j, ... +
// 2*size).
func PreprocessRGB(pix []uint8, w, h, size int) ([]uint8, error) {
	if w <= 0 || h <= 0 || size <= 0 {
		return nil, fmt.Errorf("preprocess: image %dx%d to %d: empty", w, h, size)
	}
	if len(pix) != w*h*3 {
		return nil, fmt.Errorf("preprocess: %d bytes for a %dx%d RGB image", len(pix), w, h)
	}
	s := max(w, h)
	xs := axisWeights(w, s, size)
	ys := axisWeights(h, s, size)
	unit := int64(2 * s) // total weight of one output pixel along one axis

	// Horizontal pass: per source row, per output column, weighted sums
	// (pad contributions included).
	rows := make([]int64, h*size*3)
	for y := range h {
		src := pix[y*w*3 : (y+1)*w*3]
		dst := rows[y*size*3 : (y+1)*size*3]
		for i, taps := range xs {
			var r, g, b int64
			for _, t := range taps {
				if t.src < 0 {
					r += t.w * PadGray
					g += t.w * PadGray
					b += t.w * PadGray
					continue
				}
				p := src[t.src*3:]
				r += t.w * int64(p[0])
				g += t.w * int64(p[1])
				b += t.w * int64(p[2])
			}
			dst[i*3], dst[i*3+1], dst[i*3+2] = r, g, b
		}
	}
	padRow := unit * PadGray
	out := make([]uint8, size*size*3)
	den := unit * unit
	for k, taps := range ys {
		for i := range size * 3 {
			var acc int64
			for _, t := range taps {
				if t.src < 0 {
					acc += t.w * padRow
				} else {
					acc += t.w * rows[t.src*size*3+i]
				}
			}
			out[k*size*3+i] = uint8((2*acc + den) / (2 * den))
		}
	}
	return out, nil
}

// tap is one source pixel's weight in an output pixel; src -1 is padding.
type tap struct {
	src int
	w   int64
}

// axisWeights returns, for each of size output pixels along an axis of n
// source pixels padded to s, the source pixels it covers and by how much
// (in units of 1/(2*size) source pixel; each output pixel's weights sum to
// 2*s).
func axisWeights(n, s, size int) [][]tap {
	sz := int64(size)
	off := sz * int64(s-n)     // start of source pixel 0
	end := off + 2*sz*int64(n) // end of the last source pixel
	taps := make([][]tap, size)
	for i := range size {
		lo, hi := 2*int64(s)*int64(i), 2*int64(s)*int64(i+1)
		var ts []tap
		if p := min(hi, off) - lo; p > 0 {
			ts = append(ts, tap{-1, p})
		}
		if p := hi - max(lo, end); p > 0 {
			ts = append(ts, tap{-1, p})
		}
		first := max(int64(0), (lo-off)/(2*sz))
		for j := first; j < int64(n); j++ {
			a, b := off+2*sz*j, off+2*sz*(j+1)
			if a >= hi {
				break
			}
			if p := min(b, hi) - max(a, lo); p > 0 {
				ts = append(ts, tap{int(j), p})
			}
		}
		taps[i] = ts
	}
	return taps
}

// normTable maps a byte to (p/255 - 0.5) / 0.25, computed in float64 and
// rounded to float32 once.
var normTable = func() [256]float32 {
	var t [256]float32
	for p := range t {
		t[p] = float32((float64(p)/255 - 0.5) / 0.25)
	}
	return t
}()

// NormalizePixels maps 8-bit pixels to the model's input: (p/255 - 0.5) /
// 0.25 per channel, the function every backend applies to shard images.
func NormalizePixels(u8 []uint8) []float32 {
	out := make([]float32, len(u8))
	for i, p := range u8 {
		out[i] = normTable[p]
	}
	return out
}

// ComputeImage preprocesses and normalizes img for a backend.
func ComputeImage(img image.Image, size int) (compute.Image, error) {
	u8, err := Preprocess(img, size)
	if err != nil {
		return compute.Image{}, err
	}
	return compute.Image{Size: size, Pixels: NormalizePixels(u8)}, nil
}
