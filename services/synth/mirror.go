package synth

import (
	"strings"
	"unicode"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// mirrors reports whether the current record is asked about its image
// mirrored left to right (BuildOptions.Mirror): training records only, and
// without drawing from r when the option is off, so that a set built
// without it is the same bytes as before the option existed.
func (w *worker) mirrors(r *rng) bool {
	m := w.b.opts.Mirror
	if m <= 0 || w.ii.src.Split != "train" {
		return false
	}
	return r.float() < m
}

// mirrorImage is the full image mirrored (model.TransformMirror).
func (w *worker) mirrorImage() model.ImageRef {
	ref := w.fullImage()
	ref.Transform = model.TransformMirror
	return ref
}

// mirrorBox is b in the current image mirrored left to right.
func (w *worker) mirrorBox(b dataset.Box) dataset.Box {
	m := model.MirrorBox(boxArr(b), w.ii.src.Width)
	return dataset.Box{X1: m[0], Y1: m[1], X2: m[2], Y2: m[3]}
}

// leftRight pairs each direction word with its mirror image.
var leftRight = map[string]string{
	"left": "right", "right": "left",
	"leftmost": "rightmost", "rightmost": "leftmost",
	"lefthand": "righthand", "righthand": "lefthand",
}

// swapLeftRight is text as it reads of the mirrored image: every whole
// word "left" becomes "right" and the other way round (and "leftmost",
// "lefthand"), keeping a capital first letter.
func swapLeftRight(text string) string {
	var b strings.Builder
	b.Grow(len(text))
	rs := []rune(text)
	for i := 0; i < len(rs); {
		if !unicode.IsLetter(rs[i]) {
			b.WriteRune(rs[i])
			i++
			continue
		}
		j := i
		for j < len(rs) && unicode.IsLetter(rs[j]) {
			j++
		}
		word := string(rs[i:j])
		if to, ok := leftRight[strings.ToLower(word)]; ok {
			if unicode.IsUpper(rs[i]) {
				to = strings.ToUpper(to[:1]) + to[1:]
			}
			word = to
		}
		b.WriteString(word)
		i = j
	}
	return b.String()
}
