package gomlx

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// The name task: a noisy grey image with one object at its centre, a
// square or a plus sign in one of four colours and of random size, named
// by two words (colour, shape). Word ids are in the fine-digit range the
// name head may answer with (model.NameTokens).
const (
	nameColour0 = 116 // +0..3: red, green, blue, yellow
	nameShape0  = 120 // +0 square, +1 plus
	nameEOS     = 2   // the model's <eos> (model.Tokenizer.EOSID), not this package's toy layout
)

var nameColours = [4][3]byte{{220, 40, 40}, {40, 200, 60}, {50, 70, 230}, {230, 220, 50}}

type nameItem struct {
	img  []byte
	toks []int32
	name []int32 // colour, shape
}

func nameImage(size, colour, shape, half int, rng *rand.Rand) []byte {
	img := make([]byte, size*size*3)
	mid := size / 2
	for y := range size {
		for x := range size {
			v := byte(110 + rng.IntN(36))
			px := [3]byte{v, v, v}
			dx, dy := x-mid, y-mid
			in := dx >= -half && dx < half && dy >= -half && dy < half
			if shape == 1 { // a plus: two bars a third of the side wide
				bar := max(half/3, 1)
				in = in && (dx >= -bar && dx < bar || dy >= -bar && dy < bar)
			}
			if in {
				px = nameColours[colour]
			}
			copy(img[(y*size+x)*3:], px[:])
		}
	}
	return img
}

// nameShard writes n name samples: the question before the image, no
// answer to learn (the grounder objective trains the heads alone), and the
// name as name_ids.
func nameShard(t testing.TB, c model.Config, n int, seed uint64, path string) []nameItem {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 11))
	slots := c.GrounderNameSlots
	names := make([]int32, n*slots)
	items := make([]nameItem, n)
	probes := make([]probeItem, n)
	for i := range n {
		colour, shape := rng.IntN(4), rng.IntN(2)
		img := nameImage(c.ImageSize, colour, shape, 4+rng.IntN(c.ImageSize/2-6), rng)
		seq, at := probeSeq(c, 2, 0, [4]int{}, rng)
		seq = seq[:at+1]
		items[i] = nameItem{img: img, toks: seq, name: []int32{int32(nameColour0 + colour), int32(nameShape0 + shape)}}
		probes[i] = probeItem{img: img, toks: seq, at: at}
		row := names[i*slots : (i+1)*slots]
		copy(row, items[i].name)
		row[2] = nameEOS
		for k := 3; k < slots; k++ {
			row[k] = model.NoNameWord
		}
	}
	writeProbeShard(t, c, path, probes, map[string]stTensor{"name_ids": i32Tensor(names, n, slots)})
	return items
}

// TestNameHeadNamesTheObject trains Config.GrounderNameSlots' head alone
// (the grounder objective, no referent or existence labels) on the name
// task and serves it: the names Prefill returns (HeadBox.Name) must give
// both words of the held-out images' objects far more often than chance
// (one in eight), and a host's NameFromHead answer must be that name. A
// head that read the sentence instead of the pixels, lost the name_ids
// labels or decoded the wrong slots fails it.
func TestNameHeadNamesTheObject(t *testing.T) {
	if testing.Short() {
		t.Skip("trains for about fifteen seconds")
	}
	c := grounderConfig(32)
	c.GrounderNameSlots = 4
	dir := t.TempDir()
	shard := filepath.Join(dir, "train.safetensors")
	nameShard(t, c, 2048, 1, shard)
	test := nameShard(t, c, 128, 2, filepath.Join(dir, "test.safetensors"))
	b := newTestBackend(t)
	ctx := context.Background()
	res, err := b.Train(ctx, compute.TrainRequest{
		RunID: "names", Stage: "stage1", ModelConfig: configJSON(t, c), Shards: []string{shard},
		Steps: 150, BatchSize: 32, LearningRate: 2e-3, WarmupSteps: 20, Seed: 1,
		LogEvery: 50, CheckpointEvery: 150, CheckpointDir: dir, Objective: compute.ObjectiveGrounder,
	}, func(compute.TrainProgress) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	ld, err := b.Load(ctx, compute.LoadRequest{ModelConfig: configJSON(t, c), Checkpoint: res.Final.Path})
	if err != nil {
		t.Fatal(err)
	}
	batch := make([]compute.Sequence, len(test))
	for i, it := range test {
		batch[i] = compute.Sequence{Tokens: it.toks, Images: []compute.Image{{Size: c.ImageSize, Pixels: model.NormalizePixels(it.img)}}}
	}
	out, err := b.Prefill(ctx, compute.PrefillRequest{Session: ld.Session, Batch: batch, HeadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	right := 0
	for i, it := range test {
		h := out.HeadBoxes[i]
		if !h.OK || len(h.Name) == 0 || len(h.Name) > c.GrounderNameSlots {
			t.Fatalf("sequence %d: head %+v, want a name of 1 to %d words", i, h, c.GrounderNameSlots)
		}
		if slices.Equal(h.Name, it.name) {
			right++
		}
		if i < 12 {
			t.Logf("item %d: name %v, head %v", i, it.name, h.Name)
		}
	}
	acc := float64(right) / float64(len(test))
	t.Logf("name head, 150 steps: loss %.3f -> %.3f, both words right %.3f", res.FirstLoss, res.LastLoss, acc)
	if acc < 0.9 {
		t.Fatalf("names right %.3f, want >= 0.9", acc)
	}
	gen, err := model.DecodeLoop(ctx, b, c, compute.GenerateRequest{Session: ld.Session, Batch: batch[:8], NameFromHead: true, MaxNew: 16})
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range gen.Answers {
		if !slices.Equal(a.Tokens, out.HeadBoxes[i].Name) || a.Finish != model.FinishEOS {
			t.Errorf("answer %d: %v (%s), want the head's name %v", i, a.Tokens, a.Finish, out.HeadBoxes[i].Name)
		}
	}
}
