package probe

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/services/ingest/scenes"
)

// setup reads the knobs and opens the backend they name, closed when tb
// ends.
func setup(tb testing.TB) (knobs, compute.Backend) {
	tb.Helper()
	k, err := readKnobs(os.Getenv)
	if err != nil {
		tb.Fatal(err)
	}
	b, closeFn, err := openBackend(k)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := closeFn(); err != nil {
			tb.Errorf("close backend: %v", err)
		}
	})
	d, err := describe(context.Background(), b)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Logf("backend: %s", d)
	return k, b
}

// sceneWorld generates the probe's scene world: seed 1, 64 pixels,
// GROUNDMESH_PROBE_IMAGES images (the demo's 6,000).
func sceneWorld(tb testing.TB, k knobs) *scenes.World {
	tb.Helper()
	world, err := scenes.Generate(context.Background(), filepath.Join(tb.TempDir(), "world"), scenes.Spec{Seed: 1, Images: k.images(), Size: 64}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return world
}

// runSquares trains and scores the squares probe o: 4,096 training
// samples, 64 test ones.
func runSquares(tb testing.TB, b compute.Backend, o opts) result {
	tb.Helper()
	c := o.config()
	train := squareItems(c, o, 4096, rand.New(rand.NewPCG(1, 2)))
	test := squareItems(c, o, 64, rand.New(rand.NewPCG(77, 2)))
	r, err := runLM(context.Background(), b, tb.TempDir(), c, o, train, test)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// report reports r as benchmark metrics.
func (r result) report(b *testing.B) {
	b.ReportMetric(r.LastLoss, "loss")
	b.ReportMetric(r.MeanErr, "err/coord")
	b.ReportMetric(r.MeanErrBaseline, "meanbox-err/coord")
	b.ReportMetric(r.Acc05, "acc@0.5")
	b.ReportMetric(r.Acc05Baseline, "meanbox-acc@0.5")
	b.ReportMetric(r.Point, "point")
	b.ReportMetric(r.PointBaseline, "meanbox-point")
	b.ReportMetric(r.FreeAcc05, "free-acc@0.5")
	b.ReportMetric(r.FreePoint, "free-point")
}

// TestProbeLocalizesOneSquare: a few hundred steps of the demo's model
// shape must learn where a lone square is, to within a few hundredths of
// the image, far better than the mean box. A broken patch layout, position
// table or box-token loss fails it, on whichever backend the knobs name;
// colour-only tests cannot see those.
func TestProbeLocalizesOneSquare(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for about a minute")
	}
	_, b := setup(t)
	r := runSquares(t, b, opts{Squares: 1, Steps: 250, LR: 3e-3, Heads: 2, VisDepth: 0, TextFirst: true, Fusion: true})
	t.Logf("one square, 250 steps: loss %.3f -> %.3f, mean |error| %.2f (mean box %.2f), Acc@0.5 %.2f, decoded free %.2f",
		r.FirstLoss, r.LastLoss, r.MeanErr, r.MeanErrBaseline, r.Acc05, r.FreeAcc05)
	if r.MeanErr > 8 || r.MeanErr > 0.5*r.MeanErrBaseline {
		t.Fatalf("mean |error| %.2f hundredths of the image (mean box %.2f): the model does not localize", r.MeanErr, r.MeanErrBaseline)
	}
}

// TestReadKnobs: knobs parse into the fields the contract carries, and a
// value that does not parse is refused naming its variable.
func TestReadKnobs(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	k, err := readKnobs(env(map[string]string{
		"GROUNDMESH_PROBE_STEPS": "30", "GROUNDMESH_PROBE_GRID": "0", "GROUNDMESH_PROBE_SIGMA": "0.3",
		"GROUNDMESH_PROBE_ENGINE": "libtorch", "GROUNDMESH_LIBTORCH_THREADS": "2", "GOMLX_BACKEND": "go:parallelism=-1",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if k.steps(600) != 30 || k.Grid == nil || *k.Grid != 0 || k.Sigma != 0.3 || k.Threads != 2 || k.GoMLXOptions != "parallelism=-1" || k.images() != 6000 {
		t.Errorf("knobs %+v", k)
	}
	if k, err := readKnobs(env(nil)); err != nil || k.steps(600) != 600 || k.Grid != nil {
		t.Errorf("no knobs: %+v, %v", k, err)
	}
	for name, v := range map[string]string{
		"GROUNDMESH_PROBE_STEPS": "0", "GROUNDMESH_PROBE_WIDTH": "wide", "GROUNDMESH_PROBE_LR": "-1",
		"GROUNDMESH_PROBE_GRID": "-1", "GROUNDMESH_PROBE_ENGINE": "onnx",
	} {
		if _, err := readKnobs(env(map[string]string{name: v})); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: %v, want an error naming it", name, v, err)
		}
	}
	if _, err := readKnobs(env(map[string]string{"GROUNDMESH_PROBE_PLUGIN": "bin/groundmesh-gomlx", "GROUNDMESH_PROBE_ENGINE": "gomlx"})); err == nil {
		t.Error("plugin and engine both set: no error")
	}
}

// TestTemplatedItems: every templated scene item's coarse positions are
// followed by its box's coarse numbers, so that scoring reads the logits
// that predict them, and the prompt ends at the assistant marker after the
// image.
func TestTemplatedItems(t *testing.T) {
	world, err := scenes.Generate(context.Background(), filepath.Join(t.TempDir(), "world"), scenes.Spec{Seed: 1, Images: 40, Size: 64}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, train, test, err := templatedSceneItems(world, grounderConfig(knobs{}), opts{})
	if err != nil {
		t.Fatal(err)
	}
	if len(train) == 0 || len(test) == 0 {
		t.Fatalf("%d train and %d val items from 40 images", len(train), len(test))
	}
	for i, it := range append(train, test...) {
		for k := range 4 {
			if got := it.toks[it.coarseAt(k)+1]; got != int32(probeBox0+it.box[k]) {
				t.Fatalf("item %d (%s): token %d after coarse position %d, want box number %d", i, it.expr, got, k, it.box[k])
			}
		}
		patches := 0
		for _, tok := range it.toks[:it.at+1] {
			if tok == c.PatchToken {
				patches++
			}
		}
		if patches != c.Patches() || len(it.toks) > c.MaxSeq {
			t.Fatalf("item %d: %d patch tokens before the answer (want %d), %d tokens (max_seq %d)", i, patches, c.Patches(), len(it.toks), c.MaxSeq)
		}
	}
}

// BenchmarkProbeBinding measures how far the model gets in binding a colour
// word to one of two squares: GROUNDMESH_PROBE_STEPS steps (default 400),
// for the demo's layout, for it without text fusion, for both with eight
// random filler words before the colour word (filler8: a real prompt's
// template around its telling words), and for the earlier layout (four
// heads, one vision block, image first, no fusion). It reports loss and
// errors, not time.
func BenchmarkProbeBinding(b *testing.B) {
	k, be := setup(b)
	steps := k.steps(400)
	for _, v := range []struct {
		name string
		o    opts
	}{
		{"demo", opts{Squares: 2, Steps: steps, LR: 3e-3, Heads: 2, VisDepth: 0, TextFirst: true, Fusion: true}},
		{"no-fusion", opts{Squares: 2, Steps: steps, LR: 3e-3, Heads: 2, VisDepth: 0, TextFirst: true}},
		{"filler8", opts{Squares: 2, Steps: steps, LR: 3e-3, Heads: 2, VisDepth: 0, TextFirst: true, Fusion: true, Filler: 8}},
		{"filler8-no-fusion", opts{Squares: 2, Steps: steps, LR: 3e-3, Heads: 2, VisDepth: 0, TextFirst: true, Filler: 8}},
		{"image-first-h4-vd1", opts{Squares: 2, Steps: steps, LR: 3e-3, Heads: 4, VisDepth: 1}},
	} {
		b.Run(v.name, func(b *testing.B) {
			var r result
			for range b.N {
				r = runSquares(b, be, v.o)
			}
			b.Logf("%s, %d steps: loss %.3f -> %.3f, |error| %.2f (mean box %.2f), Acc@0.5 %.3f (mean box %.3f), centre in box %.3f; decoded free: Acc@0.5 %.3f, centre in box %.3f",
				v.name, steps, r.FirstLoss, r.LastLoss, r.MeanErr, r.MeanErrBaseline, r.Acc05, r.Acc05Baseline, r.Point, r.FreeAcc05, r.FreePoint)
			r.report(b)
		})
	}
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
// "-templated" asks the way the pipeline does (opts.Templated: synth's
// REC templates, the chat template, the answer as "[0.123, ...]" text;
// with ColourOnly, "the red circle" for an object whose colour is its
// own; "-nofine" leaves the third decimals out of the loss;
// GROUNDMESH_PROBE_BARE asks with the expression alone). "-jitter" puts 4
// to 12 filler words before the colour word, so that the patches'
// sequence positions move as a template's length does, and "-patchpos"
// gives the patches Config.PatchPositions.
// "crop-shape" asks for the shape of an object's 1.5x crop instead, and
// reports its accuracy. It measures learning, not time, and asserts
// nothing.
func BenchmarkSceneProbe(b *testing.B) {
	k, be := setup(b)
	steps := k.steps(600)
	world := sceneWorld(b, k)
	for _, v := range []struct {
		name string
		o    opts
	}{
		{"ground", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8, Ground: 1}},
		{"ground-attn", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, Ground: 1}},
		{"no-ground", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8}},
		{"colour-ground", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8, ColourOnly: true, Ground: 1}},
		{"shape-ground", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8, ShapeOnly: true, Ground: 1}},
		{"shape-ground-64px", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8, ShapeOnly: true, Ground: 1, ImageSize: 64}},
		{"colour-ground-nofill", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, ColourOnly: true, Ground: 1}},
		{"colour-ground-attn", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, ColourOnly: true, Ground: 1}},
		{"crop-shape", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, CropShape: true}},
		{"crop-shape-stem", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, CropShape: true, Stem: true}},
		{"shape-ground-stem", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, ShapeOnly: true, Ground: 1, Stem: true}},
		{"shape-ground-stem-box", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, ShapeOnly: true, Ground: 1, Stem: true, Box: 1}},
		{"colour-ground-attn-box", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, ColourOnly: true, Ground: 1, Box: 1}},
		{"ground-stem-box", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, Ground: 1, Stem: true, Box: 1}},
		{"ground-stem-box-readout", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, Ground: 1, Stem: true, Box: 1, Readout: true}},
		{"ground-stem-box-readout-64", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, Ground: 1, Stem: true, Box: 1, Readout: true, ImageSize: 64}},
		{"ground-stem-box-templated", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Stem: true, Box: 1, Templated: true}},
		{"colour-stem-box-templated", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Stem: true, Box: 1, Templated: true, ColourOnly: true}},
		{"colour-stem-box-templated-nofine", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Stem: true, Box: 1, Templated: true, ColourOnly: true, NoFine: true}},
		{"colour-stem-box", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, ColourOnly: true, Ground: 1, Stem: true, Box: 1}},
		{"colour-box-templated", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Box: 1, Templated: true, ColourOnly: true}},
		{"colour-box-jitter", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 4, FillerJitter: 8, ColourOnly: true, Ground: 1, Box: 1}},
		{"colour-box-jitter-patchpos", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 4, FillerJitter: 8, ColourOnly: true, Ground: 1, Box: 1, PatchPos: true}},
		{"colour-box-templated-patchpos", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Box: 1, Templated: true, ColourOnly: true, PatchPos: true}},
		{"ground-box-templated-patchpos", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Ground: 1, Box: 1, Templated: true, PatchPos: true}},
		{"ground-stem", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, FusionAttn: true, Filler: 8, Ground: 1, Stem: true}},
		{"colour-no-ground", opts{Steps: steps, LR: 3e-3, Heads: 2, TextFirst: true, Fusion: true, Filler: 8, ColourOnly: true}},
	} {
		b.Run(v.name, func(b *testing.B) {
			o := v.o
			o.Bare = k.Bare
			c := o.config()
			c.VocabSize, c.MaxSeq = sceneVocab, 20+c.Patches()+o.Filler+o.FillerJitter
			var train, test []item
			var err error
			if o.Templated {
				c, train, test, err = templatedSceneItems(world, c, o)
			} else if train, err = sceneItems(world, c, o, true); err == nil {
				test, err = sceneItems(world, c, o, false)
			}
			if err != nil {
				b.Fatal(err)
			}
			var r result
			for range b.N {
				if r, err = runLM(context.Background(), be, b.TempDir(), c, o, train, test); err != nil {
					b.Fatal(err)
				}
			}
			if o.CropShape {
				b.Logf("%s: %d train / %d test crops, loss %.3f -> %.3f, shape accuracy %.3f (most frequent shape %.3f)",
					v.name, len(train), len(test), r.FirstLoss, r.LastLoss, r.ShapeAcc, r.ShapeAccBaseline)
				b.ReportMetric(r.LastLoss, "loss")
				b.ReportMetric(r.ShapeAcc, "shape-acc")
				b.ReportMetric(r.ShapeAccBaseline, "majority-acc")
				return
			}
			var tab strings.Builder
			tw := tabwriter.NewWriter(&tab, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "%s: %d train / %d test objects, loss %.3f -> %.3f\n", v.name, len(train), len(test), r.FirstLoss, r.LastLoss)
			fmt.Fprintln(tw, "\tAcc@0.5\tcentre in box\t|error|")
			fmt.Fprintf(tw, "teacher forced\t%.3f\t%.3f\t%.2f\n", r.Acc05, r.Point, r.MeanErr)
			fmt.Fprintf(tw, "mean box\t%.3f\t%.3f\t%.2f\n", r.Acc05Baseline, r.PointBaseline, r.MeanErrBaseline)
			fmt.Fprintf(tw, "decoded free\t%.3f\t%.3f\t\n", r.FreeAcc05, r.FreePoint)
			for k, name := range scenes.Sizes {
				if n := float64(r.SizeN[k]); n > 0 {
					fmt.Fprintf(tw, "  %s objects (%d), free\t%.3f\t%.3f\t\n", name, r.SizeN[k], r.BySize[k][0]/n, r.BySize[k][1]/n)
				}
			}
			tw.Flush()
			// On stdout: go test cuts a benchmark's log after ten lines.
			fmt.Print("\n" + tab.String())
			r.report(b)
		})
	}
}

// grounderConfig is the grounder probe's model: model.Config.Grounder on
// 64-pixel images after the text, with the demo's language model and the
// knobs' tower.
func grounderConfig(k knobs) model.Config {
	c := model.DefaultConfig(squaresVocab)
	c.ImageSize, c.Width, c.Depth, c.Heads, c.VisionDepth = 64, 64, 2, 2, 0
	c.VisionWidth = 64
	if k.Width > 0 {
		c.VisionWidth = k.Width
	}
	c.MaxSeq, c.MaxImages = c.Patches()+24, 1
	c.ImagesAfterText, c.PatchPositions = true, true
	c.Grounder, c.GrounderQueries, c.GrounderLossWeight = true, 4, 1
	c.GrounderCellWords = k.CellWords
	c.GrounderNorm = !k.NoNorm
	c.GrounderStem = k.Stem
	c.GrounderSigma = k.Sigma
	c.GrounderTextDepth = k.TextDepth
	if k.Grid != nil {
		c.GrounderGridDepth = *k.Grid
	}
	return c
}

// BenchmarkGrounderScene trains Config.Grounder on the scene world's
// shortest unique descriptions in synth's REC wording (the templated scene
// probe) for GROUNDMESH_PROBE_STEPS steps (default 600, batch 32; the
// objective GROUNDMESH_PROBE_OBJECTIVE, default all losses) and reports
// the head's Acc@0.5 and centre accuracy on up to 1,024 val objects, and
// its Acc@0.5 per expression kind (the attributes it names besides the
// shape). The package doc lists the knobs that set the model and the
// training request.
func BenchmarkGrounderScene(b *testing.B) {
	k, be := setup(b)
	world := sceneWorld(b, k)
	c, train, test, err := templatedSceneItems(world, grounderConfig(k), opts{ColourOnly: k.Colour, Bare: k.Bare})
	if err != nil {
		b.Fatal(err)
	}
	if k.Dump != "" {
		if err := dumpItems(k.Dump, "train", train); err != nil {
			b.Fatal(err)
		}
		if err := dumpItems(k.Dump, "val", test); err != nil {
			b.Fatal(err)
		}
		b.Skip("dumped")
	}
	dir := b.TempDir()
	shard := filepath.Join(dir, "train.safetensors")
	if _, err := writeShard(shard, c, opts{}, train); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	steps := k.steps(600)
	batch, lr := 32, 2e-3
	if k.Batch > 0 {
		batch = k.Batch
	}
	if k.LR > 0 {
		lr = k.LR
	}
	b.ResetTimer()
	res, err := fit(ctx, be, c, compute.TrainRequest{
		RunID: "grounder-scene", Stage: "stage1", Shards: []string{shard},
		Steps: steps, BatchSize: batch, LearningRate: lr, WarmupSteps: 20, Seed: 1,
		LogEvery: 50, CheckpointEvery: steps, CheckpointDir: dir, Objective: k.Objective,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	session, err := load(ctx, be, c, res.Final.Path)
	if err != nil {
		b.Fatal(err)
	}
	scored, what := test[:min(len(test), 1024)], "val"
	if k.TrainAcc {
		// The head on training items instead: how much of the gap to
		// val is fitting and how much is generalizing.
		scored, what = train[:min(len(train), 1024)], "training"
	}
	s, err := scoreHead(ctx, be, session, c, scored)
	if err != nil {
		b.Fatal(err)
	}
	if err := be.Unload(ctx, session); err != nil {
		b.Fatal(err)
	}
	n := float64(s.N)
	var tab strings.Builder
	tw := tabwriter.NewWriter(&tab, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "grounder on the scene world, %d steps, %d training items: loss %.3f -> %.3f\n", steps, len(train), res.FirstLoss, res.LastLoss)
	fmt.Fprintln(tw, "expressions\tobjects\thead Acc@0.5\tcentre")
	fmt.Fprintf(tw, "all %s\t%d\t%.3f\t%.3f\n", what, s.N, float64(s.Hits)/n, float64(s.Centre)/n)
	for _, kind := range s.sortedKinds() {
		fmt.Fprintf(tw, "with %s\t%d\t%.3f\t\n", kind, s.KindN[kind], float64(s.KindHits[kind])/float64(s.KindN[kind]))
	}
	tw.Flush()
	// On stdout: go test cuts a benchmark's log after ten lines.
	fmt.Print("\n" + tab.String())
	b.ReportMetric(float64(s.Hits)/n, "acc@0.5")
	b.ReportMetric(float64(s.Centre)/n, "centre")
}
