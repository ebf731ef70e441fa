package infer

import (
	"fmt"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// PixelBox turns a model's answer into a pixel box in the original w x h
// image. A box the decoder already produced (box-constrained decoding)
// wins over the text; otherwise the first "[a, b, c, d]" in text is
// parsed. The error says why no box could be had.
func PixelBox(text string, decoded *model.NormBox, w, h int) (dataset.Box, error) {
	if w <= 0 || h <= 0 {
		return dataset.Box{}, fmt.Errorf("predicted box: image size %dx%d", w, h)
	}
	if decoded != nil {
		return model.Denormalize(*decoded, w, h), nil
	}
	n, err := model.ParseBox(text)
	if err != nil {
		return dataset.Box{}, err
	}
	return model.Denormalize(n, w, h), nil
}

// BoxAnswer is a box answer in both frames.
type BoxAnswer struct {
	// Text is the answer as the model wrote it.
	Text string
	// Norm is the box normalized to the image padded to a square, as the
	// model writes it.
	Norm model.NormBox
	// Pixel is the box in the original image's pixels (xyxy), clipped to it.
	Pixel dataset.Box
}

// ReadBox reads a generation's box in the frame of a w x h image.
func ReadBox(g model.Generation, w, h int) (BoxAnswer, error) {
	var n model.NormBox
	if g.Box != nil {
		n = *g.Box
	} else {
		var err error
		if n, err = model.ParseBox(g.Text); err != nil {
			return BoxAnswer{}, err
		}
	}
	px, err := PixelBox(g.Text, &n, w, h)
	if err != nil {
		return BoxAnswer{}, err
	}
	return BoxAnswer{Text: g.Text, Norm: n, Pixel: px}, nil
}
