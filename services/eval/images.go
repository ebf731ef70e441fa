package eval

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// scaled returns img resized (nearest neighbour) so that its longer side is
// at most maxSide, as RGBA, and the scale factor applied.
func scaled(img image.Image, maxSide int) (*image.RGBA, float64) {
	b := img.Bounds()
	s := math.Min(1, float64(maxSide)/float64(max(b.Dx(), b.Dy())))
	w, h := max(1, int(math.Round(float64(b.Dx())*s))), max(1, int(math.Round(float64(b.Dy())*s)))
	out := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		sy := b.Min.Y + min(b.Dy()-1, int(float64(y)/s))
		for x := range w {
			sx := b.Min.X + min(b.Dx()-1, int(float64(x)/s))
			out.Set(x, y, img.At(sx, sy))
		}
	}
	return out, s
}

var (
	colTrue = color.RGBA{0, 200, 0, 255}
	colPred = color.RGBA{230, 0, 0, 255}
)

// strokeRect draws the outline of a pixel box (already scaled) with the
// given thickness, clipped to the image.
func strokeRect(img *image.RGBA, b dataset.Box, c color.Color, thick int) {
	r := image.Rect(int(math.Round(b.X1)), int(math.Round(b.Y1)), int(math.Round(b.X2)), int(math.Round(b.Y2)))
	u := image.NewUniform(c)
	for _, side := range []image.Rectangle{
		image.Rect(r.Min.X, r.Min.Y, r.Max.X, r.Min.Y+thick),
		image.Rect(r.Min.X, r.Max.Y-thick, r.Max.X, r.Max.Y),
		image.Rect(r.Min.X, r.Min.Y, r.Min.X+thick, r.Max.Y),
		image.Rect(r.Max.X-thick, r.Min.Y, r.Max.X, r.Max.Y),
	} {
		draw.Draw(img, side.Intersect(img.Bounds()), u, image.Point{}, draw.Over)
	}
}

func scaleBox(b dataset.Box, s float64) dataset.Box {
	return dataset.Box{X1: b.X1 * s, Y1: b.Y1 * s, X2: b.X2 * s, Y2: b.Y2 * s}
}

// drawBoxes draws true boxes (green, 4 px) and the predicted box (red,
// 2 px, on top, so that a hit shows green inside red), each with a 1 px
// white halo so that they stand out on any colour.
func drawBoxes(img *image.RGBA, truth []dataset.Box, pred *dataset.Box) {
	halo := func(b dataset.Box) dataset.Box {
		return dataset.Box{X1: b.X1 - 1, Y1: b.Y1 - 1, X2: b.X2 + 1, Y2: b.Y2 + 1}
	}
	white := color.RGBA{255, 255, 255, 255}
	for _, t := range truth {
		strokeRect(img, halo(t), white, 1)
		strokeRect(img, t, colTrue, 4)
	}
	if pred != nil {
		strokeRect(img, halo(*pred), white, 1)
		strokeRect(img, *pred, colPred, 2)
	}
}

// boxesImage draws true boxes (green) and the predicted box (red) on img.
func boxesImage(img image.Image, truth []dataset.Box, pred *dataset.Box, maxSide int) *image.RGBA {
	out, s := scaled(img, maxSide)
	var ts []dataset.Box
	for _, t := range truth {
		ts = append(ts, scaleBox(t, s))
	}
	var p *dataset.Box
	if pred != nil {
		b := scaleBox(*pred, s)
		p = &b
	}
	drawBoxes(out, ts, p)
	return out
}

// padSquare pads img to a square with its mean colour, centred, the way
// the model's preprocessing does, so that patch grids line up.
func padSquare(img image.Image) *image.RGBA {
	b := img.Bounds()
	side := max(b.Dx(), b.Dy())
	var sr, sg, sb, n uint64
	for y := b.Min.Y; y < b.Max.Y; y += max(1, b.Dy()/64) {
		for x := b.Min.X; x < b.Max.X; x += max(1, b.Dx()/64) {
			r, g, bl, _ := img.At(x, y).RGBA()
			sr, sg, sb, n = sr+uint64(r>>8), sg+uint64(g>>8), sb+uint64(bl>>8), n+1
		}
	}
	mean := color.RGBA{uint8(sr / max(n, 1)), uint8(sg / max(n, 1)), uint8(sb / max(n, 1)), 255}
	out := image.NewRGBA(image.Rect(0, 0, side, side))
	draw.Draw(out, out.Bounds(), image.NewUniform(mean), image.Point{}, draw.Src)
	_, px, py := model.PadOffsets(b.Dx(), b.Dy())
	draw.Draw(out, image.Rect(int(px), int(py), int(px)+b.Dx(), int(py)+b.Dy()), img, b.Min, draw.Src)
	return out
}

// heatColor maps v in [0, 1] to a blue-yellow-red ramp.
func heatColor(v float64) color.RGBA {
	v = math.Max(0, math.Min(1, v))
	switch {
	case v < 0.5:
		t := v / 0.5
		return color.RGBA{uint8(255 * t), uint8(255 * t), uint8(255 * (1 - t)), 255}
	default:
		t := (v - 0.5) / 0.5
		return color.RGBA{255, uint8(255 * (1 - t)), 0, 255}
	}
}

// attentionImage overlays a square patch grid of attention weights on the
// padded-square image; the predicted and true boxes are drawn on top in the
// padded frame. ok is false when att is not a square grid.
func attentionImage(img image.Image, att []float32, truth []dataset.Box, pred *dataset.Box, side int) (*image.RGBA, bool) {
	g := int(math.Round(math.Sqrt(float64(len(att)))))
	if g == 0 || g*g != len(att) {
		return nil, false
	}
	b := img.Bounds()
	_, px, py := model.PadOffsets(b.Dx(), b.Dy())
	sq, s := scaled(padSquare(img), side)
	lo, hi := float32(math.Inf(1)), float32(math.Inf(-1))
	for _, v := range att {
		lo, hi = min(lo, v), max(hi, v)
	}
	span := float64(hi - lo)
	if span <= 0 {
		span = 1
	}
	w := sq.Bounds().Dx()
	for y := range w {
		gy := min(g-1, y*g/w)
		for x := range w {
			gx := min(g-1, x*g/w)
			hc := heatColor(float64(att[gy*g+gx]-lo) / span)
			o := sq.RGBAAt(x, y)
			const a = 0.55
			sq.SetRGBA(x, y, color.RGBA{
				uint8(float64(o.R)*(1-a) + float64(hc.R)*a),
				uint8(float64(o.G)*(1-a) + float64(hc.G)*a),
				uint8(float64(o.B)*(1-a) + float64(hc.B)*a), 255})
		}
	}
	shift := func(bx dataset.Box) dataset.Box {
		return scaleBox(dataset.Box{X1: bx.X1 + px, Y1: bx.Y1 + py, X2: bx.X2 + px, Y2: bx.Y2 + py}, s)
	}
	var ts []dataset.Box
	for _, t := range truth {
		ts = append(ts, shift(t))
	}
	var p *dataset.Box
	if pred != nil {
		b := shift(*pred)
		p = &b
	}
	drawBoxes(sq, ts, p)
	return sq, true
}

func encodePNG(img image.Image) ([]byte, error) {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("encode png: %w", err)
	}
	return buf.Bytes(), nil
}

// dataURI encodes img as a PNG data: URI.
func dataURI(img image.Image) (string, error) {
	b, err := encodePNG(img)
	if err != nil {
		return "", err
	}
	return "data:image/png;base64," + base64.StdEncoding.EncodeToString(b), nil
}
