package probe

import (
	"fmt"
	"image"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/ingest/scenes"
	"github.com/groundmesh/groundmesh/services/synth"
)

// The scene probe: the localization probe on the built-in scene world (the
// demo's 6,000 images of 64 pixels, seed 1), with the question as the
// words of the shortest attribute-and-shape description that singles the
// object out in its image ("red circle", "small striped square"), after
// Filler random template words. It measures how fast the model learns
// referring-expression grounding on the demo's own images, without the
// rest of the pipeline: one expression per sequence.

// sceneWord0 is the first scene word's id: colours, then shapes, sizes,
// textures, after the squares' vocabulary.
const sceneWord0 = squaresVocab

// sceneWords are the probe's words from sceneWord0 on: each attribute's
// values in order ("shape" for the category).
var sceneWords = []struct {
	attr string
	vals []string
}{{scenes.AttrColor, scenes.Colors}, {"shape", scenes.Shapes}, {scenes.AttrSize, scenes.Sizes}, {scenes.AttrTexture, scenes.Textures}}

// sceneVocab is the scene probe's vocabulary size.
var sceneVocab = func() int {
	n := sceneWord0
	for _, l := range sceneWords {
		n += len(l.vals)
	}
	return n
}()

var sceneAttrSubsets = [][]string{
	{}, {scenes.AttrColor}, {scenes.AttrSize}, {scenes.AttrTexture},
	{scenes.AttrSize, scenes.AttrColor}, {scenes.AttrColor, scenes.AttrTexture}, {scenes.AttrSize, scenes.AttrTexture},
	{scenes.AttrSize, scenes.AttrColor, scenes.AttrTexture},
}

// word is one word of an expression: an attribute ("shape" for the
// category) and its value.
type word struct{ attr, val string }

// id is the word's token id in the untemplated scene probe.
func (w word) id() (int32, error) {
	base := sceneWord0
	for _, l := range sceneWords {
		if l.attr == w.attr {
			if i := slices.Index(l.vals, w.val); i >= 0 {
				return int32(base + i), nil
			}
		}
		base += len(l.vals)
	}
	return 0, fmt.Errorf("scene probe: no word for %s %q", w.attr, w.val)
}

// ids are the token ids of words.
func ids(words []word) ([]int32, error) {
	out := make([]int32, len(words))
	for i, w := range words {
		var err error
		if out[i], err = w.id(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// value is an object's value of attr ("shape": its category).
func value(o dataset.Object, attr string) string {
	if attr == "shape" {
		return o.Category
	}
	return o.Attributes[attr]
}

// sceneExpr is the shortest attribute subset (in sceneAttrSubsets order)
// plus the shape that matches only object k, in size, colour, texture
// order; ok is false when none does.
func sceneExpr(objs []dataset.Object, k int) (words []word, ok bool) {
	for _, attrs := range sceneAttrSubsets {
		unique := true
		for j, o := range objs {
			if j == k || o.Category != objs[k].Category {
				continue
			}
			same := true
			for _, a := range attrs {
				same = same && o.Attributes[a] == objs[k].Attributes[a]
			}
			if same {
				unique = false
				break
			}
		}
		if unique {
			for _, a := range []string{scenes.AttrSize, scenes.AttrColor, scenes.AttrTexture} {
				if slices.Contains(attrs, a) {
					words = append(words, word{a, objs[k].Attributes[a]})
				}
			}
			return append(words, word{"shape", objs[k].Category}), true
		}
	}
	return nil, false
}

// wordExpr is one attribute's word alone (attr "shape" for the category),
// for an object whose value of it no other object in the image has.
func wordExpr(objs []dataset.Object, k int, attr string) ([]word, bool) {
	for j, o := range objs {
		if j != k && value(o, attr) == value(objs[k], attr) {
			return nil, false
		}
	}
	return []word{{attr, value(objs[k], attr)}}, true
}

// sceneItems returns the probe items of world's train split (train) or of
// its val and test splits.
func sceneItems(world *scenes.World, c model.Config, o opts, train bool) ([]item, error) {
	rng := rand.New(rand.NewPCG(3, 4))
	var items []item
	for _, sc := range world.Scenes {
		if (sc.Split == dataset.SplitTrain) != train || sc.Split == dataset.SplitHeldOut {
			continue
		}
		im, img, err := sceneImage(world, sc, c)
		if err != nil {
			return nil, err
		}
		for k, obj := range sc.Objects {
			if o.CropShape {
				it, err := cropShapeItem(im, obj, c, o, rng)
				if err != nil {
					return nil, err
				}
				items = append(items, it)
				continue
			}
			words, ok := sceneExpr(sc.Objects, k)
			if o.ColourOnly {
				words, ok = wordExpr(sc.Objects, k, scenes.AttrColor)
			}
			if o.ShapeOnly {
				words, ok = wordExpr(sc.Objects, k, "shape")
			}
			if !ok {
				continue
			}
			wids, err := ids(words)
			if err != nil {
				return nil, err
			}
			toks := []int32{tokBOS}
			filler := o.Filler
			if o.FillerJitter > 0 {
				filler += rng.IntN(o.FillerJitter + 1)
			}
			for range filler {
				toks = append(toks, int32(probeFiller0+rng.IntN(probeFillers)))
			}
			toks = append(toks, wids...)
			for range c.Patches() {
				toks = append(toks, c.PatchToken)
			}
			toks = append(toks, probeAnswer)
			at := len(toks) - 1
			var box [4]int
			for i, v := range []float64{obj.Box.X1, obj.Box.Y1, obj.Box.X2, obj.Box.Y2} {
				box[i] = int(math.Round(v / float64(sc.Size) * 100))
				toks = append(toks, int32(probeBox0+box[i]))
			}
			items = append(items, item{img: img, toks: append(toks, tokEOS), at: at, box: box, size: slices.Index(scenes.Sizes, obj.Attributes[scenes.AttrSize])})
		}
	}
	return items, nil
}

// sceneImage reads a scene's image and preprocesses it for c.
func sceneImage(world *scenes.World, sc *scenes.Scene, c model.Config) (image.Image, []byte, error) {
	f, err := os.Open(filepath.Join(world.Dir, sc.File))
	if err != nil {
		return nil, nil, fmt.Errorf("open scene image: %w", err)
	}
	im, err := png.Decode(f)
	f.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("decode scene image %s: %w", sc.File, err)
	}
	img, err := model.Preprocess(im, c.ImageSize)
	if err != nil {
		return nil, nil, fmt.Errorf("preprocess scene image %s: %w", sc.File, err)
	}
	return im, img, nil
}

// templatedSceneItems is Templated's items (train, then val) and the
// config c with the vocabulary and sequence length they need: each
// object's shortest unique description ("the small red circle") in one of
// services/synth's REC instructions (synth.RECPromptTemplates), encoded by
// model.EncodeRecord with a tokenizer built from the records, with the
// image after the text (Config.ImagesAfterText) and the box as
// model.FormatBox writes it.
func templatedSceneItems(world *scenes.World, c model.Config, o opts) (model.Config, []item, []item, error) {
	c.ImagesAfterText = true
	rng := rand.New(rand.NewPCG(3, 4))
	templates := synth.RECPromptTemplates()
	type pending struct {
		rec   model.Record
		img   []byte
		size  int
		train bool
		sc    *scenes.Scene
		kind  string
		expr  string
	}
	var all []pending
	vb := model.NewVocabBuilder()
	for _, sc := range world.Scenes {
		if sc.Split == dataset.SplitHeldOut {
			continue
		}
		_, img, err := sceneImage(world, sc, c)
		if err != nil {
			return c, nil, nil, err
		}
		for k, obj := range sc.Objects {
			words, ok := sceneExpr(sc.Objects, k)
			if o.ColourOnly {
				// "the red circle" for an object whose colour is its own.
				words, ok = wordExpr(sc.Objects, k, scenes.AttrColor)
				words = append(words, word{"shape", obj.Category})
			}
			if !ok {
				continue
			}
			text := []string{"the"}
			var attrs []string
			for _, w := range words {
				text = append(text, w.val)
				if w.attr != "shape" {
					attrs = append(attrs, w.attr)
				}
			}
			kind := strings.Join(attrs, "+")
			if kind == "" {
				kind = "shape"
			}
			tmpl := templates[rng.IntN(len(templates))]
			if o.Bare {
				tmpl = "{expr}"
			}
			q := strings.Replace(tmpl, "{expr}", strings.Join(text, " "), 1)
			box := model.Normalize(obj.Box, sc.Size, sc.Size)
			rec := model.Record{
				ID: sc.File + "/" + obj.ID, Stage: "stage2", Task: "rec", Split: sc.Split,
				Images:        []model.ImageRef{{Kind: "image", Path: sc.File, Width: sc.Size, Height: sc.Size}},
				Conversations: []model.Turn{{From: "human", Value: "<image>\n" + q}, {From: "gpt", Value: model.FormatBox(box)}},
			}
			vb.AddRecord(rec)
			all = append(all, pending{rec: rec, img: img, size: slices.Index(scenes.Sizes, obj.Attributes[scenes.AttrSize]),
				train: sc.Split == dataset.SplitTrain, sc: sc, kind: kind, expr: strings.Join(text, " ")})
		}
	}
	tok, err := vb.Build(1024)
	if err != nil {
		return c, nil, nil, fmt.Errorf("templated probe: build tokenizer: %w", err)
	}
	c.VocabSize, c.MaxSeq = tok.VocabSize(), c.Patches()+64
	var train, test []item
	for _, p := range all {
		s, err := model.EncodeRecord(tok, c, p.rec)
		if err != nil {
			return c, nil, nil, fmt.Errorf("templated probe: encode record %s: %w", p.rec.ID, err)
		}
		at := slices.Index(s.Tokens, tok.AssistantID())
		var coarse, box [4]int
		n := 0
		for i := at + 1; at >= 0 && i < len(s.Tokens) && n < 4; i++ {
			if v := s.Tokens[i] - probeBox0; v >= 0 && v <= 100 {
				coarse[n], box[n] = i-1, int(v)
				n++
			}
		}
		if at < 0 || n != 4 {
			return c, nil, nil, fmt.Errorf("templated probe: record %s encodes without an answer box: %v", p.rec.ID, tok.Decode(s.Tokens))
		}
		it := item{img: p.img, toks: s.Tokens, at: at, box: box, coarse: &coarse, size: p.size, kind: p.kind, expr: p.expr}
		if c.GrounderCellWords {
			var boxes [][4]float64
			var names []string
			for _, o := range p.sc.Objects {
				boxes = append(boxes, [4]float64{o.Box.X1, o.Box.Y1, o.Box.X2, o.Box.Y2})
				names = append(names, o.Attributes[scenes.AttrSize]+" "+o.Attributes[scenes.AttrColor]+" "+o.Attributes[scenes.AttrTexture]+" "+o.Category)
			}
			it.cells = model.CellLabels(c, tok, p.sc.Size, p.sc.Size, boxes, names)
		}
		switch {
		case p.train:
			train = append(train, it)
		case p.sc.Split == dataset.SplitVal:
			test = append(test, it)
		}
	}
	return c, train, test, nil
}

// cropShapeItem is CropShape's item for obj: its 1.5x crop of im, the
// filler words, the patches, the answer marker and the shape word.
func cropShapeItem(im image.Image, obj dataset.Object, c model.Config, o opts, rng *rand.Rand) (item, error) {
	bx := obj.Box
	cx, cy := (bx.X1+bx.X2)/2, (bx.Y1+bx.Y2)/2
	side := 1.5 * max(bx.X2-bx.X1, bx.Y2-bx.Y1)
	r := image.Rect(int(math.Floor(cx-side/2)), int(math.Floor(cy-side/2)), int(math.Ceil(cx+side/2)), int(math.Ceil(cy+side/2))).Intersect(im.Bounds())
	sub, ok := im.(interface {
		SubImage(image.Rectangle) image.Image
	})
	if !ok {
		return item{}, fmt.Errorf("crop probe: scene image %T cannot be cropped", im)
	}
	img, err := model.Preprocess(sub.SubImage(r), c.ImageSize)
	if err != nil {
		return item{}, fmt.Errorf("crop probe: preprocess crop: %w", err)
	}
	shape, err := word{"shape", obj.Category}.id()
	if err != nil {
		return item{}, err
	}
	toks := []int32{tokBOS}
	for range o.Filler {
		toks = append(toks, int32(probeFiller0+rng.IntN(probeFillers)))
	}
	for range c.Patches() {
		toks = append(toks, c.PatchToken)
	}
	toks = append(toks, probeAnswer)
	at := len(toks) - 1
	return item{img: img, toks: append(toks, shape, tokEOS), at: at}, nil
}
