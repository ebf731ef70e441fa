package computetest

import (
	"math"
	"math/rand/v2"
)

// Squares draws a size x size RGB image (8-bit, HWC) of grey noise with
// squares (1 or 2; 5 to 14 pixels, red then green), which of them is asked
// for, and that one's box in hundredths of the image: the localization
// world of the probes (bench/probe) and of the backends' learning tests.
func Squares(size, squares int, rng *rand.Rand) (img []byte, q int, box [4]int) {
	img = make([]byte, size*size*3)
	for i := range img {
		img[i] = byte(100 + rng.IntN(40))
	}
	cols := [2][3]byte{{220, 30, 30}, {30, 200, 30}}
	var boxes [2][4]int
	for k := range squares {
		side := 5 + rng.IntN(10)
		x, y := rng.IntN(size-side), rng.IntN(size-side)
		boxes[k] = [4]int{x, y, x + side, y + side}
		for yy := y; yy < y+side; yy++ {
			for xx := x; xx < x+side; xx++ {
				copy(img[(yy*size+xx)*3:], cols[k][:])
			}
		}
	}
	q = rng.IntN(squares)
	for i := range 4 {
		box[i] = int(math.Round(float64(boxes[q][i]) / float64(size) * 100))
	}
	return img, q, box
}
