package gomlx

import (
	"context"
	"fmt"
	"image"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	gmdataset "github.com/groundmesh/groundmesh/internal/dataset"
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
// rest of the pipeline: one expression per sequence, teacher-forced boxes.

const (
	sceneWord0 = 130 // colours, then shapes, sizes, textures
	sceneVocab = 130 + 8 + 8 + 3 + 3
)

// sceneImages is the size of the probe's world: the demo's 6,000 images,
// or GROUNDMESH_PROBE_IMAGES.
func sceneImages() int {
	if n, err := strconv.Atoi(os.Getenv("GROUNDMESH_PROBE_IMAGES")); err == nil && n > 0 {
		return n
	}
	return 6000
}

var sceneAttrSubsets = [][]string{
	{}, {scenes.AttrColor}, {scenes.AttrSize}, {scenes.AttrTexture},
	{scenes.AttrSize, scenes.AttrColor}, {scenes.AttrColor, scenes.AttrTexture}, {scenes.AttrSize, scenes.AttrTexture},
	{scenes.AttrSize, scenes.AttrColor, scenes.AttrTexture},
}

// sceneWords are the probe's words from sceneWord0 on: each attribute's
// values in order ("shape" for the category).
var sceneWords = []struct {
	attr string
	vals []string
}{{scenes.AttrColor, scenes.Colors}, {"shape", scenes.Shapes}, {scenes.AttrSize, scenes.Sizes}, {scenes.AttrTexture, scenes.Textures}}

func sceneWordID(attr, v string) int32 {
	base := sceneWord0
	for _, l := range sceneWords {
		if l.attr == attr {
			for i, x := range l.vals {
				if x == v {
					return int32(base + i)
				}
			}
		}
		base += len(l.vals)
	}
	panic("scene probe: unknown word " + attr + "=" + v)
}

// sceneWordAttr is the attribute ("shape" for the category) of a
// sceneWordID.
func sceneWordAttr(id int32) string {
	i := int(id) - sceneWord0
	for _, l := range sceneWords {
		if i < len(l.vals) {
			return l.attr
		}
		i -= len(l.vals)
	}
	panic(fmt.Sprintf("scene probe: word id %d outside the scene words", id))
}

// sceneExpr is the shortest attribute subset (in sceneAttrSubsets order)
// plus the shape that matches only object k; ok is false when none does.
func sceneExpr(objs []gmdataset.Object, k int) (words []int32, ok bool) {
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
				for _, b := range attrs {
					if a == b {
						words = append(words, sceneWordID(a, objs[k].Attributes[a]))
					}
				}
			}
			return append(words, sceneWordID("shape", objs[k].Category)), true
		}
	}
	return nil, false
}

// wordExpr is one attribute's word alone (attr "shape" for the category),
// for an object whose value of it no other object in the image has.
func wordExpr(objs []gmdataset.Object, k int, attr string) ([]int32, bool) {
	val := func(o gmdataset.Object) string {
		if attr == "shape" {
			return o.Category
		}
		return o.Attributes[attr]
	}
	for j, o := range objs {
		if j != k && val(o) == val(objs[k]) {
			return nil, false
		}
	}
	return []int32{sceneWordID(attr, val(objs[k]))}, true
}

// sceneItems returns the probe items of world's train split (train) or of
// its val and test splits.
func sceneItems(t testing.TB, world *scenes.World, c model.Config, o probeOpts, train bool) []probeItem {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	var items []probeItem
	for _, sc := range world.Scenes {
		if (sc.Split == gmdataset.SplitTrain) != train || sc.Split == gmdataset.SplitHeldOut {
			continue
		}
		im, img := sceneImage(t, world, sc, c)
		for k, obj := range sc.Objects {
			if o.CropShape {
				items = append(items, cropShapeItem(t, im, obj, c, o, rng))
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
			toks := []int32{tokBOS}
			filler := o.Filler
			if o.FillerJitter > 0 {
				filler += rng.IntN(o.FillerJitter + 1)
			}
			for range filler {
				toks = append(toks, int32(probeFiller0+rng.IntN(probeFillers)))
			}
			toks = append(toks, words...)
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
			items = append(items, probeItem{img: img, toks: append(toks, tokEOS), at: at, box: box, size: slices.Index(scenes.Sizes, obj.Attributes[scenes.AttrSize])})
		}
	}
	return items
}

// sceneImage reads a scene's image and preprocesses it for c.
func sceneImage(t testing.TB, world *scenes.World, sc *scenes.Scene, c model.Config) (image.Image, []byte) {
	t.Helper()
	f, err := os.Open(filepath.Join(world.Dir, sc.File))
	if err != nil {
		t.Fatal(err)
	}
	im, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	img, err := model.Preprocess(im, c.ImageSize)
	if err != nil {
		t.Fatal(err)
	}
	return im, img
}

// templatedSceneItems is Templated's items (train, then val) and
// the config c with the vocabulary and sequence length they need: each
// object's shortest unique description ("the small red circle") in one of
// services/synth's REC instructions (synth.RECPromptTemplates), encoded by model.EncodeRecord with a tokenizer built
// from the records, with the image after the text
// (Config.ImagesAfterText) and the box as model.FormatBox writes it.
func templatedSceneItems(t testing.TB, world *scenes.World, c model.Config, o probeOpts) (model.Config, []probeItem, []probeItem) {
	t.Helper()
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
		if sc.Split == gmdataset.SplitHeldOut {
			continue
		}
		_, img := sceneImage(t, world, sc, c)
		for k, obj := range sc.Objects {
			ids, ok := sceneExpr(sc.Objects, k)
			if o.ColourOnly {
				// "the red circle" for an object whose colour is its own.
				ids, ok = wordExpr(sc.Objects, k, scenes.AttrColor)
				ids = append(ids, sceneWordID("shape", obj.Category))
			}
			if !ok {
				continue
			}
			words := []string{"the"}
			var attrs []string
			for _, id := range ids {
				words = append(words, sceneWordName(id))
				if a := sceneWordAttr(id); a != "shape" {
					attrs = append(attrs, a)
				}
			}
			kind := strings.Join(attrs, "+")
			if kind == "" {
				kind = "shape"
			}
			tmpl := templates[rng.IntN(len(templates))]
			if os.Getenv("GROUNDMESH_PROBE_BARE") != "" {
				tmpl = "{expr}" // the expression alone, no instruction around it
			}
			q := strings.Replace(tmpl, "{expr}", strings.Join(words, " "), 1)
			box := model.Normalize(obj.Box, sc.Size, sc.Size)
			rec := model.Record{
				ID: sc.File + "/" + obj.ID, Stage: "stage2", Task: "rec", Split: sc.Split,
				Images:        []model.ImageRef{{Kind: "image", Path: sc.File, Width: sc.Size, Height: sc.Size}},
				Conversations: []model.Turn{{From: "human", Value: "<image>\n" + q}, {From: "gpt", Value: model.FormatBox(box)}},
			}
			vb.AddRecord(rec)
			all = append(all, pending{rec: rec, img: img, size: slices.Index(scenes.Sizes, obj.Attributes[scenes.AttrSize]), train: sc.Split == gmdataset.SplitTrain, sc: sc, kind: kind, expr: strings.Join(words, " ")})
		}
	}
	tok, err := vb.Build(1024)
	if err != nil {
		t.Fatal(err)
	}
	c.VocabSize, c.MaxSeq = tok.VocabSize(), c.Patches()+64
	var train, test []probeItem
	for _, p := range all {
		s, err := model.EncodeRecord(tok, c, p.rec)
		if err != nil {
			t.Fatal(err)
		}
		at := slices.Index(s.Tokens, tok.AssistantID())
		var coarse [4]int
		var box [4]int
		n := 0
		for i := at + 1; i < len(s.Tokens) && n < 4; i++ {
			if v := s.Tokens[i] - probeBox0; v >= 0 && v <= 100 {
				coarse[n], box[n] = i-1, int(v)
				n++
			}
		}
		if at < 0 || n != 4 {
			t.Fatalf("templated probe: record %s encodes without an answer box: %v", p.rec.ID, tok.Decode(s.Tokens))
		}
		it := probeItem{img: p.img, toks: s.Tokens, at: at, box: box, coarse: &coarse, size: p.size, kind: p.kind, expr: p.expr}
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
		case p.sc.Split == gmdataset.SplitVal:
			test = append(test, it)
		}
	}
	return c, train, test
}

// sceneWordName is the word of a sceneWordID.
func sceneWordName(id int32) string {
	i := int(id) - sceneWord0
	for _, l := range sceneWords {
		if i < len(l.vals) {
			return l.vals[i]
		}
		i -= len(l.vals)
	}
	panic("scene probe: unknown word id")
}

// cropShapeItem is CropShape's item for obj: its 1.5x crop of im, the
// filler words, the patches, the answer marker and the shape word.
func cropShapeItem(t testing.TB, im image.Image, obj gmdataset.Object, c model.Config, o probeOpts, rng *rand.Rand) probeItem {
	t.Helper()
	bx := obj.Box
	cx, cy := (bx.X1+bx.X2)/2, (bx.Y1+bx.Y2)/2
	side := 1.5 * max(bx.X2-bx.X1, bx.Y2-bx.Y1)
	b := im.Bounds()
	r := image.Rect(int(math.Floor(cx-side/2)), int(math.Floor(cy-side/2)), int(math.Ceil(cx+side/2)), int(math.Ceil(cy+side/2))).Intersect(b)
	sub, ok := im.(interface {
		SubImage(image.Rectangle) image.Image
	})
	if !ok {
		t.Fatalf("scene image %T cannot be cropped", im)
	}
	img, err := model.Preprocess(sub.SubImage(r), c.ImageSize)
	if err != nil {
		t.Fatal(err)
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
	toks = append(toks, sceneWordID("shape", obj.Category), tokEOS)
	return probeItem{img: img, toks: toks, at: at}
}

// BenchmarkSceneProbe reports the teacher-forced box Acc@0.5 on val and
// test objects after GROUNDMESH_PROBE_STEPS steps (default 600) of the
// demo's model shape on the scene world's train objects: with and without
// the grounding loss (Config.GroundLossWeight), on the shortest unique
// descriptions, on colour words alone (objects of a colour no other
// object in their image has) and on shape words alone, the last also from
// 64-pixel images; with the text pooled for fusion by learned attention
// (Config.FusionAttention, "-attn": the demo's model) and by the plain
// mean, and on colour words without the filler words ("-nofill"); with
// the convolutional stem ("-stem"), the box loss ("-box") and the
// grounding readout ("-readout"). It reports Acc@0.5 and how often the
// box's centre lies in the true box, teacher forced and with the box
// decoded greedily after the model's own numbers ("free-"), as eval does,
// and logs the freely decoded figures per size class (small, medium,
// large).
// "-templated" asks the way the pipeline does (probeOpts.Templated: synth's
// REC templates, the chat template, the answer as "[0.123, ...]" text;
// with ColourOnly, "the red circle" for an object whose colour is its
// own; "-nofine" leaves the third decimals out of the loss). "-jitter"
// puts 4 to 12 filler words before the colour word, so that the patches'
// sequence positions move as a template's length does, and "-patchpos"
// gives the patches Config.PatchPositions.
// "crop-shape" asks for the shape of an object's 1.5x crop instead, and
// reports its accuracy. It measures learning, not time, and asserts
// nothing.
func BenchmarkSceneProbe(b *testing.B) {
	steps := probeSteps(600)
	world, err := scenes.Generate(context.Background(), filepath.Join(b.TempDir(), "world"), scenes.Spec{Seed: 1, Images: sceneImages(), Size: 64}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range []struct {
		name string
		o    probeOpts
	}{
		{"ground", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8, Ground: 1}},
		{"ground-attn", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, Ground: 1}},
		{"no-ground", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8}},
		{"colour-ground", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8, ColourOnly: true, Ground: 1}},
		{"shape-ground", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8, ShapeOnly: true, Ground: 1}},
		{"shape-ground-64px", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8, ShapeOnly: true, Ground: 1, ImageSize: 64}},
		{"colour-ground-nofill", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, ColourOnly: true, Ground: 1}},
		{"colour-ground-attn", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, ColourOnly: true, Ground: 1}},
		{"crop-shape", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, CropShape: true}},
		{"crop-shape-stem", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, CropShape: true, Stem: true}},
		{"shape-ground-stem", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, ShapeOnly: true, Ground: 1, Stem: true}},
		{"shape-ground-stem-box", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, ShapeOnly: true, Ground: 1, Stem: true, Box: 1}},
		{"colour-ground-attn-box", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, ColourOnly: true, Ground: 1, Box: 1}},
		{"ground-stem-box", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, Ground: 1, Stem: true, Box: 1}},
		{"ground-stem-box-readout", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, Ground: 1, Stem: true, Box: 1, Readout: true}},
		{"ground-stem-box-readout-64", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, Ground: 1, Stem: true, Box: 1, Readout: true, ImageSize: 64}},
		{"ground-stem-box-templated", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Stem: true, Box: 1, Templated: true}},
		{"colour-stem-box-templated", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Stem: true, Box: 1, Templated: true, ColourOnly: true}},
		{"colour-stem-box-templated-nofine", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Stem: true, Box: 1, Templated: true, ColourOnly: true, NoFine: true}},
		{"colour-stem-box", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, ColourOnly: true, Ground: 1, Stem: true, Box: 1}},
		{"colour-box-templated", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Box: 1, Templated: true, ColourOnly: true}},
		{"colour-box-jitter", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 4, FillerJitter: 8, ColourOnly: true, Ground: 1, Box: 1}},
		{"colour-box-jitter-patchpos", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 4, FillerJitter: 8, ColourOnly: true, Ground: 1, Box: 1, PatchPos: true}},
		{"colour-box-templated-patchpos", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Box: 1, Templated: true, ColourOnly: true, PatchPos: true}},
		{"ground-box-templated-patchpos", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Box: 1, Templated: true, PatchPos: true}},
		{"ground-stem", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, Ground: 1, Stem: true}},
		{"colour-no-ground", probeOpts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8, ColourOnly: true}},
	} {
		b.Run(v.name, func(b *testing.B) {
			c := v.o.config()
			c.VocabSize, c.MaxSeq = sceneVocab, 20+c.Patches()+v.o.Filler+v.o.FillerJitter
			var train, test []probeItem
			if v.o.Templated {
				c, train, test = templatedSceneItems(b, world, c, v.o)
			} else {
				train, test = sceneItems(b, world, c, v.o, true), sceneItems(b, world, c, v.o, false)
			}
			var r probeResult
			for range b.N {
				r = trainProbe(b, c, v.o, train, test)
			}
			if v.o.CropShape {
				b.Logf("%s: %d train / %d test crops, loss %.3f -> %.3f, shape accuracy %.3f (most frequent shape %.3f)",
					v.name, len(train), len(test), r.FirstLoss, r.LastLoss, r.ShapeAcc, r.ShapeAccBaseline)
				b.ReportMetric(r.LastLoss, "loss")
				b.ReportMetric(r.ShapeAcc, "shape-acc")
				b.ReportMetric(r.ShapeAccBaseline, "majority-acc")
				return
			}
			b.Logf("%s: %d train / %d test objects, loss %.3f -> %.3f, Acc@0.5 %.3f (mean box %.3f), centre in box %.3f (mean box %.3f), |error| %.2f (mean box %.2f); decoded free: Acc@0.5 %.3f, centre in box %.3f",
				v.name, len(train), len(test), r.FirstLoss, r.LastLoss, r.Acc05, r.Acc05Baseline, r.Point, r.PointBaseline, r.MeanErr, r.MeanErrBaseline, r.FreeAcc05, r.FreePoint)
			for k, name := range scenes.Sizes {
				if n := float64(r.SizeN[k]); n > 0 {
					b.Logf("%s objects (%d): decoded free Acc@0.5 %.3f, centre in box %.3f", name, r.SizeN[k], r.BySize[k][0]/n, r.BySize[k][1]/n)
				}
			}
			r.report(b)
		})
	}
}
