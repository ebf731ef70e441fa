package gomlx

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// grounderConfig is the two-square task's model with Config.Grounder.
func grounderConfig(size int) model.Config {
	c := model.DefaultConfig(130)
	c.ImageSize, c.Width, c.Depth, c.Heads, c.VisionDepth = size, 32, 1, 2, 0
	c.VisionWidth = 32
	c.MaxSeq, c.MaxImages = (size/8)*(size/8)+24, 1
	c.ImagesAfterText, c.PatchPositions = true, true
	c.Grounder, c.GrounderQueries, c.GrounderLossWeight = true, 2, 1
	return c
}

// grounderShard writes n two-square probe samples (the question is the
// colour of the square asked for) with their referents as ref_boxes.
func grounderShard(t testing.TB, c model.Config, n int, seed uint64, path string) []probeItem {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 9))
	refs := make([]int32, n*4)
	items := make([]probeItem, n)
	for i := range n {
		img, q, box := computetest.Squares(c.ImageSize, 2, rng)
		seq, at := probeSeq(c, 2, q, box, rng)
		items[i] = probeItem{img: img, toks: seq, at: at, box: box}
		for k := range 4 {
			refs[i*4+k] = int32(box[k] * 10)
		}
	}
	writeProbeShard(t, c, path, items, map[string]stTensor{"ref_boxes": i32Tensor(refs, n, 4)})
	return items
}

// writeProbeShard writes one-image probe samples: each item's tokens
// padded to MaxSeq, its targets the tokens after position at (the
// answer; none where the sequence ends at at), its image in slot 0, and
// the label tensors of labels.
func writeProbeShard(t testing.TB, c model.Config, path string, items []probeItem, labels map[string]stTensor) {
	t.Helper()
	n, L := len(items), c.MaxSeq
	tokens := make([]int32, n*L)
	targets := make([]int32, n*L)
	index := make([]int32, n)
	images := make([]byte, 0, n*c.ImageSize*c.ImageSize*3)
	for i, it := range items {
		images = append(images, it.img...)
		index[i] = int32(i)
		for p := range L {
			tokens[i*L+p], targets[i*L+p] = c.PadToken, -1
			if p < len(it.toks) {
				tokens[i*L+p] = it.toks[p]
			}
		}
		for p := it.at; p < len(it.toks)-1; p++ {
			targets[i*L+p] = it.toks[p+1]
		}
	}
	tensors := map[string]stTensor{
		"tokens": i32Tensor(tokens, n, L), "targets": i32Tensor(targets, n, L), "image_index": i32Tensor(index, n, 1),
		"images": {DType: "U8", Shape: []int{n, c.ImageSize, c.ImageSize, 3}, Data: images}}
	maps.Copy(tensors, labels)
	f := &stFile{Metadata: map[string]string{"config_sha256": "probe", "synth_set": "probe"}, Tensors: tensors}
	if _, _, err := writeSafetensorsAtomic(path, f); err != nil {
		t.Fatal(err)
	}
}

// TestGrounderFindsTheSquareAskedFor trains Config.Grounder's head on the
// two-square probe (a red and a green square; the question names one
// colour) and serves it: the boxes Prefill returns must overlap the square
// asked for (IoU >= 0.5) far more often than the other one could (chance
// is about half). A head that ignored the text, the FiLM path, the
// coordinate channels or the ref_boxes labels fails it.
func TestGrounderFindsTheSquareAskedFor(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for about half a minute")
	}
	c := grounderConfig(32)
	dir := t.TempDir()
	shard := filepath.Join(dir, "train.safetensors")
	grounderShard(t, c, 2048, 1, shard)
	test := grounderShard(t, c, 128, 2, filepath.Join(dir, "test.safetensors"))
	b := newTestBackend(t)
	if os.Getenv("GROUNDMESH_PROBE_LOG") != "" {
		b.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx := context.Background()
	res, err := b.Train(ctx, compute.TrainRequest{
		RunID: "grounder", Stage: "stage1", ModelConfig: configJSON(t, c), Shards: []string{shard},
		Steps: 300, BatchSize: 32, LearningRate: 2e-3, WarmupSteps: 20, Seed: 1,
		LogEvery: 50, CheckpointEvery: 300, CheckpointDir: dir,
	}, func(compute.TrainProgress) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	acc := headAccuracy(t, b, c, res.Final.Path, test)
	t.Logf("grounder, 300 steps: loss %.3f -> %.3f, head Acc@0.5 %.3f", res.FirstLoss, res.LastLoss, acc)
	if acc < 0.8 {
		t.Fatalf("head Acc@0.5 %.3f on the square asked for, want >= 0.8", acc)
	}
}

// headAccuracy loads a checkpoint of c and returns the share of the test
// items whose head box (one Prefill of the question and image) overlaps
// the item's box with an IoU of at least 0.5; every sequence must have a
// head box with an existence probability in [0, 1].
func headAccuracy(t *testing.T, b *Backend, c model.Config, ckpt string, test []probeItem) float64 {
	t.Helper()
	ctx := context.Background()
	ld, err := b.Load(ctx, compute.LoadRequest{ModelConfig: configJSON(t, c), Checkpoint: ckpt})
	if err != nil {
		t.Fatal(err)
	}
	batch := make([]compute.Sequence, len(test))
	for i, it := range test {
		batch[i] = compute.Sequence{Tokens: it.toks[:it.at+1], Images: []compute.Image{{Size: c.ImageSize, Pixels: model.NormalizePixels(it.img)}}}
	}
	out, err := b.Prefill(ctx, compute.PrefillRequest{Session: ld.Session, Batch: batch})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.HeadBoxes) != len(test) {
		t.Fatalf("%d head boxes for %d sequences", len(out.HeadBoxes), len(test))
	}
	hits := 0
	for i, it := range test {
		h := out.HeadBoxes[i]
		if !h.OK {
			t.Fatalf("sequence %d: no head box", i)
		}
		if !(h.Exists >= 0 && h.Exists <= 1) {
			t.Fatalf("sequence %d: existence %v outside [0, 1]", i, h.Exists)
		}
		var pred [4]int
		for k := range 4 {
			pred[k] = int(h.Box[k]*100 + 0.5)
		}
		if probeBox(pred).IoU(probeBox(it.box)) >= 0.5 {
			hits++
		}
	}
	return float64(hits) / float64(len(test))
}

// TestGrounderObjective trains the two-square probe with
// compute.ObjectiveGrounder: the head must find the square asked for as
// the whole-model objective does, every parameter outside
// model.GrounderReads must come out bit for bit as initialized (the
// language model is neither run nor changed), and a request for the
// objective on a model without the head, or for an unknown objective, is
// refused.
func TestGrounderObjective(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for about ten seconds")
	}
	c := grounderConfig(32)
	c.GrounderNorm = true
	dir := t.TempDir()
	shard := filepath.Join(dir, "train.safetensors")
	grounderShard(t, c, 2048, 1, shard)
	test := grounderShard(t, c, 128, 2, filepath.Join(dir, "test.safetensors"))
	b := newTestBackend(t)
	ctx := context.Background()
	req := compute.TrainRequest{
		RunID: "grounder-only", Stage: "stage1", ModelConfig: configJSON(t, c), Shards: []string{shard},
		Steps: 300, BatchSize: 32, LearningRate: 2e-3, WarmupSteps: 20, WeightDecay: 0.01, Seed: 1,
		LogEvery: 50, CheckpointEvery: 300, CheckpointDir: dir, Objective: compute.ObjectiveGrounder,
	}
	res, err := b.Train(ctx, req, func(compute.TrainProgress) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	specs := paramSpecs(c)
	st, err := readCheckpoint(res.Final.Path, specs, selectTrainable(specs, nil, nil), false)
	if err != nil {
		t.Fatal(err)
	}
	init := initParams(specs, 1)
	changed := 0
	for _, p := range specs {
		same := slices.Equal(st.weights[p.Name], init[p.Name])
		if !model.GrounderReads(p.Name) && !same {
			t.Errorf("%s changed under the grounder objective", p.Name)
		}
		if model.GrounderReads(p.Name) && !same {
			changed++
		}
	}
	if changed == 0 {
		t.Fatal("no grounder parameter changed")
	}
	acc := headAccuracy(t, b, c, res.Final.Path, test)
	t.Logf("grounder objective, 300 steps: loss %.3f -> %.3f, head Acc@0.5 %.3f, %d grounder tensors changed", res.FirstLoss, res.LastLoss, acc, changed)
	if acc < 0.8 {
		t.Fatalf("head Acc@0.5 %.3f on the square asked for, want >= 0.8", acc)
	}

	bad := req
	bad.Objective, bad.CheckpointDir = "answers", t.TempDir()
	if _, err := b.Train(ctx, bad, nil); !errors.Is(err, compute.ErrInvalidArgument) || !strings.Contains(err.Error(), `"answers"`) {
		t.Errorf("unknown objective: %v, want an invalid-argument error naming it", err)
	}
	plain := c
	plain.Grounder, plain.GrounderQueries, plain.GrounderLossWeight = false, 0, 0
	bad = req
	bad.ModelConfig, bad.CheckpointDir = configJSON(t, plain), t.TempDir()
	if _, err := b.Train(ctx, bad, nil); !errors.Is(err, compute.ErrInvalidArgument) || !strings.Contains(err.Error(), "grounder") {
		t.Errorf("grounder objective without the head: %v, want an invalid-argument error", err)
	}
}

// TestNormedConvInit: under Config.GrounderNorm the tower's kernels start
// at normedConvGain of He initialization (an instance norm follows each, so
// their scale sets only how fast Adam moves them); without it, at He.
func TestNormedConvInit(t *testing.T) {
	for _, norm := range []bool{false, true} {
		c := grounderConfig(32)
		c.GrounderNorm = norm
		for _, p := range paramSpecs(c) {
			if !strings.HasPrefix(p.Name, "grounder.conv.") || !strings.HasSuffix(p.Name, ".w") {
				continue
			}
			he := math.Sqrt(2 / float64(p.Shape[0]*p.Shape[1]*p.Shape[2]))
			want := he
			if norm {
				want = normedConvGain * he
			}
			if math.Abs(p.Std-want) > 1e-12 {
				t.Errorf("grounder_norm %v: %s std %v, want %v", norm, p.Name, p.Std, want)
			}
		}
	}
}
