package model

import (
	"image"
	"image/color"
	"strings"
	"testing"
)

func TestApplyTransform(t *testing.T) {
	img := image.NewRGBA(image.Rect(2, 1, 5, 3)) // 3 x 2, not at the origin
	img.Set(2, 1, color.RGBA{R: 255, A: 255})
	img.Set(4, 2, color.RGBA{B: 255, A: 255})
	same, err := ApplyTransform(img, "")
	if err != nil || same != image.Image(img) {
		t.Fatalf("no transform: %v, %v", same, err)
	}
	m, err := ApplyTransform(img, TransformMirror)
	if err != nil {
		t.Fatal(err)
	}
	if b := m.Bounds(); b.Dx() != 3 || b.Dy() != 2 {
		t.Fatalf("mirrored bounds %v", b)
	}
	b0 := m.Bounds().Min
	if r, _, _, _ := m.At(b0.X+2, b0.Y).RGBA(); r != 0xffff {
		t.Errorf("the red pixel did not move to the right edge")
	}
	if _, _, bl, _ := m.At(b0.X, b0.Y+1).RGBA(); bl != 0xffff {
		t.Errorf("the blue pixel did not move to the left edge")
	}
	if _, err := ApplyTransform(img, "rotate"); err == nil || !strings.Contains(err.Error(), `"rotate"`) {
		t.Errorf("unknown transform: %v", err)
	}
	if got := MirrorBox([4]float64{1, 2, 4, 6}, 10); got != [4]float64{6, 2, 9, 6} {
		t.Errorf("MirrorBox = %v", got)
	}
	if (ImageRef{Kind: "image", Path: "a.png"}).Key() == (ImageRef{Kind: "image", Path: "a.png", Transform: TransformMirror}).Key() {
		t.Error("a mirrored image shares the plain one's cache key")
	}
}
