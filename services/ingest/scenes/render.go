package scenes

import (
	"image"
	"image/color"
	"math"
	"math/rand/v2"
)

// rgb values of Colors, in order.
var palette = []color.RGBA{
	{220, 40, 40, 255},   // red
	{40, 170, 60, 255},   // green
	{45, 85, 225, 255},   // blue
	{235, 215, 40, 255},  // yellow
	{145, 60, 185, 255},  // purple
	{245, 140, 30, 255},  // orange
	{40, 205, 215, 255},  // cyan
	{245, 135, 185, 255}, // pink
}

// sizeRange is the side of an object's nominal square as a fraction of the
// image side, per size class. The classes are far enough apart that any
// large box has at least 1.5x the area of any medium one, and so on.
var sizeRange = [][2]float64{{0.13, 0.15}, {0.20, 0.23}, {0.30, 0.34}}

// mask is the set of pixels a shape covers, in image coordinates.
type mask struct {
	x0, y0, w, h int
	on           []bool
	count        int
	// tight box of the covered pixels, xyxy, exclusive max.
	bx1, by1, bx2, by2 int
}

func (m *mask) at(x, y int) bool {
	x, y = x-m.x0, y-m.y0
	return x >= 0 && y >= 0 && x < m.w && y < m.h && m.on[y*m.w+x]
}

// rasterize covers the pixels whose centres fall inside shape, centred at
// (cx, cy) in a square of the given side. ok is false when any covered
// pixel would fall outside the image.
func rasterize(shape string, cx, cy, side float64, imgW, imgH int) (*mask, bool) {
	r := side / 2
	x0, y0 := int(math.Floor(cx-r)), int(math.Floor(cy-r))
	x1, y1 := int(math.Ceil(cx+r)), int(math.Ceil(cy+r))
	m := &mask{x0: x0, y0: y0, w: x1 - x0, h: y1 - y0, bx1: math.MaxInt, by1: math.MaxInt}
	m.on = make([]bool, m.w*m.h)
	poly := polygon(shape, r)
	for y := y0; y < y1; y++ {
		for x := x0; x < x1; x++ {
			dx, dy := float64(x)+0.5-cx, float64(y)+0.5-cy
			if !inside(shape, poly, dx, dy, r) {
				continue
			}
			if x < 0 || y < 0 || x >= imgW || y >= imgH {
				return nil, false
			}
			m.on[(y-y0)*m.w+(x-x0)] = true
			m.count++
			m.bx1, m.by1 = min(m.bx1, x), min(m.by1, y)
			m.bx2, m.by2 = max(m.bx2, x+1), max(m.by2, y+1)
		}
	}
	return m, m.count > 0
}

func polygon(shape string, r float64) [][2]float64 {
	var pts [][2]float64
	switch shape {
	case "triangle":
		pts = [][2]float64{{0, -r}, {r, r}, {-r, r}}
	case "star":
		for i := 0; i < 10; i++ {
			rad := r
			if i%2 == 1 {
				rad = r * 0.45
			}
			a := -math.Pi/2 + float64(i)*math.Pi/5
			pts = append(pts, [2]float64{rad * math.Cos(a), rad * math.Sin(a)})
		}
	case "hexagon":
		for i := 0; i < 6; i++ {
			a := float64(i) * math.Pi / 3
			pts = append(pts, [2]float64{r * math.Cos(a), r * math.Sin(a)})
		}
	}
	return pts
}

func inside(shape string, poly [][2]float64, dx, dy, r float64) bool {
	switch shape {
	case "circle":
		return dx*dx+dy*dy <= r*r
	case "ring":
		d := dx*dx + dy*dy
		return d <= r*r && d >= 0.3*r*r
	case "square":
		return math.Abs(dx) <= r*0.9 && math.Abs(dy) <= r*0.9
	case "diamond":
		return math.Abs(dx)+math.Abs(dy) <= r
	case "cross":
		t := r / 3
		return (math.Abs(dx) <= t && math.Abs(dy) <= r) || (math.Abs(dy) <= t && math.Abs(dx) <= r)
	}
	// Even-odd rule.
	in := false
	for i, j := 0, len(poly)-1; i < len(poly); j, i = i, i+1 {
		xi, yi, xj, yj := poly[i][0], poly[i][1], poly[j][0], poly[j][1]
		if (yi > dy) != (yj > dy) && dx < (xj-xi)*(dy-yi)/(yj-yi)+xi {
			in = !in
		}
	}
	return in
}

// scenePalette is the fixed palette of every image: the colours, their dark
// texture shades, then grey levels (index = grey value for 16..255). A
// paletted PNG is smaller than RGBA and skips row filtering, which made
// encoding the bulk of generation time.
var scenePalette = func() color.Palette {
	p := make(color.Palette, 256)
	for i, c := range palette {
		p[i] = c
		p[len(palette)+i] = dark(c)
	}
	for g := 2 * len(palette); g < 256; g++ {
		p[g] = color.RGBA{uint8(g), uint8(g), uint8(g), 255}
	}
	return p
}()

func dark(c color.RGBA) color.RGBA {
	return color.RGBA{c.R * 2 / 5, c.G * 2 / 5, c.B * 2 / 5, 255}
}

// paint draws the background, clutter and objects (owner[i] is the index
// of the object visible at pixel i, or -1).
func paint(rng *rand.Rand, size int, objs []*placed, owner []int16) *image.Paletted {
	img := image.NewPaletted(image.Rect(0, 0, size, size), scenePalette)
	base := 170 + rng.IntN(40)
	for i := 0; i < size*size; i++ {
		img.Pix[i] = uint8(base + rng.IntN(13) - 6)
	}
	// Clutter: grey strokes and specks, never coloured, never annotated.
	for n := 3 + rng.IntN(5); n > 0; n-- {
		g := uint8(105 + rng.IntN(50))
		x, y := rng.Float64()*float64(size), rng.Float64()*float64(size)
		a := rng.Float64() * math.Pi
		l := float64(size) * (0.1 + 0.3*rng.Float64())
		for t := 0.0; t < l; t += 0.5 {
			px, py := int(x+t*math.Cos(a)), int(y+t*math.Sin(a))
			if px >= 0 && py >= 0 && px < size && py < size {
				img.Pix[py*size+px] = g
			}
		}
	}
	period := max(2, size/32)
	for i, o := range owner {
		if o < 0 {
			continue
		}
		p := objs[o]
		x, y := i%size, i/size
		idx := uint8(p.color)
		switch Textures[p.texture] {
		case "striped":
			if ((x+y)/period)%2 == 1 {
				idx += uint8(len(palette))
			}
		case "dotted":
			if x%(period+1) == period/2 && y%(period+1) == period/2 {
				idx += uint8(len(palette))
			}
		}
		img.Pix[i] = idx
	}
	return img
}
