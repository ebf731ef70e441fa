package probe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/services/ingest/scenes"
)

// writeShard writes items (one image each, the box in hundredths) as a
// tokenized shard of c: the answer's tokens from it.at on as targets
// (without the fine digits under o.NoFine), and the labels c's losses
// read: patch_targets (GroundLossWeight), patch_boxes (BoxLossWeight),
// ref_boxes and ref_exists (Grounder), cell_words (GrounderCellWords).
// It returns the items' mean box, the mean-box baseline's answer.
func writeShard(path string, c model.Config, o opts, items []item) (mean [4]float64, err error) {
	if len(items) == 0 {
		return mean, errors.New("write probe shard: no items")
	}
	n, L := len(items), c.MaxSeq
	tokens := make([]int32, n*L)
	targets := make([]int32, n*L)
	index := make([]int32, n)
	patchTgt := make([]byte, n*L)
	patchBox := make([]byte, n*L*4)
	refs := make([]int32, n*4)
	exists := make([]int32, n)
	images := make([]byte, 0, n*c.ImageSize*c.ImageSize*3)
	for i, it := range items {
		if len(it.toks) > L {
			return mean, fmt.Errorf("write probe shard: item %d has %d tokens, max_seq is %d", i, len(it.toks), L)
		}
		images = append(images, it.img...)
		index[i], exists[i] = int32(i), 1
		for p := range L {
			tokens[i*L+p], targets[i*L+p] = c.PadToken, -1
			if p < len(it.toks) {
				tokens[i*L+p] = it.toks[p]
			}
		}
		for p := it.at; p < len(it.toks)-1; p++ {
			if o.NoFine && it.toks[p+1] >= fineTok0 && it.toks[p+1] < fineTok0+10 {
				continue
			}
			targets[i*L+p] = it.toks[p+1]
		}
		// The box is in hundredths of the image: a 100 x 100 image's pixels.
		b := it.box
		cover := model.PatchCover(c, 100, 100, [][4]float64{{float64(b[0]), float64(b[1]), float64(b[2]), float64(b[3])}})
		np := 0
		for p := range L {
			patchTgt[i*L+p] = model.NoPatchTarget
			if p < len(it.toks) && it.toks[p] == c.PatchToken {
				patchTgt[i*L+p] = byte(math.Round(cover[np] * model.PatchTargetScale))
				if patchTgt[i*L+p] > 0 {
					for k := range 4 {
						patchBox[(i*L+p)*4+k] = byte(b[k])
					}
				}
				np++
			}
		}
		for k := range 4 {
			mean[k] += float64(b[k]) / float64(n)
			refs[i*4+k] = int32(b[k] * 10)
		}
		// The head's labels need a box of some width: a box rounded to
		// nothing in hundredths keeps one thousandth.
		if refs[i*4+2] <= refs[i*4] {
			refs[i*4+2] = refs[i*4] + 1
		}
		if refs[i*4+3] <= refs[i*4+1] {
			refs[i*4+3] = refs[i*4+1] + 1
		}
	}
	tensors := []model.Tensor{
		{Name: "tokens", DType: "I32", Shape: []int{n, L}, Data: model.Int32Bytes(tokens)},
		{Name: "targets", DType: "I32", Shape: []int{n, L}, Data: model.Int32Bytes(targets)},
		{Name: "image_index", DType: "I32", Shape: []int{n, 1}, Data: model.Int32Bytes(index)},
		{Name: "images", DType: "U8", Shape: []int{n, c.ImageSize, c.ImageSize, 3}, Data: images},
	}
	if c.GroundLossWeight > 0 {
		tensors = append(tensors, model.Tensor{Name: "patch_targets", DType: "U8", Shape: []int{n, L}, Data: patchTgt})
	}
	if c.BoxLossWeight > 0 {
		tensors = append(tensors, model.Tensor{Name: "patch_boxes", DType: "U8", Shape: []int{n, L, 4}, Data: patchBox})
	}
	if c.Grounder {
		tensors = append(tensors,
			model.Tensor{Name: "ref_boxes", DType: "I32", Shape: []int{n, 4}, Data: model.Int32Bytes(refs)},
			model.Tensor{Name: "ref_exists", DType: "I32", Shape: []int{n}, Data: model.Int32Bytes(exists)})
	}
	if c.GrounderCellWords {
		var cells []int32
		for i, it := range items {
			if len(it.cells) != c.Patches()*model.CellWords {
				return mean, fmt.Errorf("write probe shard: item %d has %d cell labels, want %d", i, len(it.cells), c.Patches()*model.CellWords)
			}
			cells = append(cells, it.cells...)
		}
		tensors = append(tensors, model.Tensor{Name: "cell_words", DType: "I32", Shape: []int{n, c.Patches(), model.CellWords}, Data: model.Int32Bytes(cells)})
	}
	f, err := os.Create(path)
	if err != nil {
		return mean, fmt.Errorf("write probe shard: %w", err)
	}
	if _, err := model.WriteSafetensors(f, tensors, map[string]string{"config_sha256": c.SHA256(), "synth_set": "probe"}); err != nil {
		f.Close()
		return mean, fmt.Errorf("write probe shard %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return mean, fmt.Errorf("write probe shard %s: %w", path, err)
	}
	return mean, nil
}

// fit runs req on b with the model c and no progress callback.
func fit(ctx context.Context, b compute.Backend, c model.Config, req compute.TrainRequest) (compute.TrainResult, error) {
	cfg, err := json.Marshal(c)
	if err != nil {
		return compute.TrainResult{}, fmt.Errorf("encode model config: %w", err)
	}
	req.ModelConfig = cfg
	res, err := b.Train(ctx, req, func(compute.TrainProgress) error { return nil })
	if err != nil {
		return res, fmt.Errorf("train %s: %w", req.RunID, err)
	}
	return res, nil
}

// load loads a checkpoint of c for inference.
func load(ctx context.Context, b compute.Backend, c model.Config, ckpt string) (string, error) {
	cfg, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("encode model config: %w", err)
	}
	ld, err := b.Load(ctx, compute.LoadRequest{ModelConfig: cfg, Checkpoint: ckpt})
	if err != nil {
		return "", fmt.Errorf("load %s: %w", ckpt, err)
	}
	return ld.Session, nil
}

// prompts are items up to and including it.at, each with its image.
func prompts(c model.Config, items []item) []compute.Sequence {
	batch := make([]compute.Sequence, len(items))
	for i, it := range items {
		batch[i] = compute.Sequence{Tokens: it.toks[:it.at+1], Images: []compute.Image{{Size: c.ImageSize, Pixels: model.NormalizePixels(it.img)}}}
	}
	return batch
}

// result is what the language-model probes measure.
type result struct {
	FirstLoss, LastLoss float64
	MeanErr             float64 // mean |coarse value error| per coordinate, teacher forced
	MeanErrBaseline     float64 // the same for always answering the training mean box
	Acc05               float64 // IoU >= 0.5, teacher forced
	Acc05Baseline       float64 // the same for the training mean box
	// Point is the fraction of predicted boxes whose centre lies in the
	// true box: whether the model found the object, however loose its box.
	Point, PointBaseline float64
	// FreeAcc05 and FreePoint are Acc05 and Point with the box decoded
	// greedily, each number read after the model's own earlier ones (as
	// eval decodes), not the true ones.
	FreeAcc05, FreePoint float64
	// ShapeAcc and ShapeAccBaseline are CropShape's accuracy and that of
	// always answering the training split's most frequent shape.
	ShapeAcc, ShapeAccBaseline float64
	// BySize are the freely decoded Acc@0.5 and centre hits per size class
	// (item.size), and SizeN the test objects of each.
	BySize [3][2]float64
	SizeN  [3]int
}

// runLM trains the model c on train for o.Steps steps (batch 16, lr o.LR)
// and scores every test item through Prefill and Decode: the argmax coarse
// value of each of the four box numbers, teacher forced and decoded after
// the model's own numbers, or under o.CropShape the shape word.
func runLM(ctx context.Context, b compute.Backend, dir string, c model.Config, o opts, trainItems, test []item) (result, error) {
	shard := filepath.Join(dir, "probe.safetensors")
	mean, err := writeShard(shard, c, o, trainItems)
	if err != nil {
		return result{}, err
	}
	res, err := fit(ctx, b, c, compute.TrainRequest{
		RunID: "probe", Stage: "stage2", Shards: []string{shard},
		Steps: o.Steps, BatchSize: 16, LearningRate: o.LR, WarmupSteps: 20, WeightDecay: 0.01, Seed: 1,
		LogEvery: 100, CheckpointEvery: o.Steps, CheckpointDir: dir,
	})
	if err != nil {
		return result{}, err
	}
	session, err := load(ctx, b, c, res.Final.Path)
	if err != nil {
		return result{}, err
	}
	r := result{FirstLoss: res.FirstLoss, LastLoss: res.LastLoss}
	if o.CropShape {
		err = scoreShapes(ctx, b, session, c, trainItems, test, &r)
	} else {
		err = scoreBoxes(ctx, b, session, c, mean, test, &r)
	}
	if uerr := b.Unload(ctx, session); err == nil && uerr != nil {
		err = fmt.Errorf("unload: %w", uerr)
	}
	return r, err
}

// scoreBatch is how many test items one Prefill carries.
const scoreBatch = 64

// scoreBoxes fills r's box figures for the test items: the teacher-forced
// ones from the logits at each coarse number's position after the true
// tokens, the free ones after the model's own earlier coarse numbers, and
// the mean box's baselines.
func scoreBoxes(ctx context.Context, b compute.Backend, session string, c model.Config, mean [4]float64, test []item, r *result) error {
	var meanBox [4]int
	for k := range 4 {
		meanBox[k] = int(math.Round(mean[k]))
	}
	n := float64(len(test))
	for lo := 0; lo < len(test); lo += scoreBatch {
		part := test[lo:min(lo+scoreBatch, len(test))]
		forced, err := decodeBoxes(ctx, b, session, c, part, false)
		if err != nil {
			return err
		}
		free, err := decodeBoxes(ctx, b, session, c, part, true)
		if err != nil {
			return err
		}
		for i, it := range part {
			if boxOf(free[i]).IoU(boxOf(it.box)) >= 0.5 {
				r.FreeAcc05 += 1 / n
				r.BySize[it.size][0]++
			}
			if centreIn(free[i], it.box) {
				r.FreePoint += 1 / n
				r.BySize[it.size][1]++
			}
			r.SizeN[it.size]++
			pred := forced[i]
			for k := range 4 {
				r.MeanErr += math.Abs(float64(pred[k]-it.box[k])) / (4 * n)
				r.MeanErrBaseline += math.Abs(mean[k]-float64(it.box[k])) / (4 * n)
			}
			if boxOf(pred).IoU(boxOf(it.box)) >= 0.5 {
				r.Acc05 += 1 / n
			}
			if boxOf(meanBox).IoU(boxOf(it.box)) >= 0.5 {
				r.Acc05Baseline += 1 / n
			}
			if centreIn(pred, it.box) {
				r.Point += 1 / n
			}
			if centreIn(meanBox, it.box) {
				r.PointBaseline += 1 / n
			}
		}
	}
	return nil
}

// decodeBoxes reads each item's four coarse box numbers: Prefill up to
// it.at, then one Decode per answer token up to the fourth number's
// position, each number the argmax over the coarse values of the logits
// at its position. The tokens fed are the item's own, except that under
// free the coarse numbers are the model's earlier ones (the fine digits
// and punctuation between them stay the true ones). Items whose numbers
// sit at different offsets after it.at share no cache.
func decodeBoxes(ctx context.Context, b compute.Backend, session string, c model.Config, items []item, free bool) ([][4]int, error) {
	out := make([][4]int, len(items))
	groups := map[[4]int][]int{}
	for i, it := range items {
		var rel [4]int
		for k := range 4 {
			rel[k] = it.coarseAt(k) - it.at
		}
		groups[rel] = append(groups[rel], i)
	}
	argmaxBox := func(l []float32) int { return argmax(l[probeBox0 : probeBox0+101]) }
	for rel, idx := range groups {
		group := make([]item, len(idx))
		for j, i := range idx {
			group[j] = items[i]
		}
		fw, err := b.Prefill(ctx, compute.PrefillRequest{Session: session, Batch: prompts(c, group)})
		if err != nil {
			return nil, fmt.Errorf("prefill: %w", err)
		}
		cache := fw.CacheID
		k := 0
		for d := 0; ; d++ {
			if len(fw.Logits) != len(group) {
				return nil, fmt.Errorf("backend returned %d logits for %d sequences", len(fw.Logits), len(group))
			}
			if rel[k] == d {
				for j, i := range idx {
					out[i][k] = argmaxBox(fw.Logits[j])
				}
				k++
				if k == 4 {
					break
				}
			}
			toks := make([]int32, len(group))
			for j, it := range group {
				toks[j] = it.toks[it.at+d+1]
				if free && k > 0 && rel[k-1] == d {
					toks[j] = int32(probeBox0 + out[idx[j]][k-1])
				}
			}
			if fw, err = b.Decode(ctx, compute.DecodeRequest{Session: session, CacheID: cache, Tokens: toks}); err != nil {
				return nil, fmt.Errorf("decode: %w", err)
			}
		}
		if err := b.ReleaseCache(ctx, session, cache); err != nil {
			return nil, fmt.Errorf("release cache: %w", err)
		}
	}
	return out, nil
}

// scoreShapes fills CropShape's accuracies: the answer token of an item is
// toks[at+1], one of the shape words, and the prediction the argmax over
// the shape words of the logits Prefill returns at it.at.
func scoreShapes(ctx context.Context, b compute.Backend, session string, c model.Config, trainItems, test []item, r *result) error {
	freq := map[int32]int{}
	for _, it := range trainItems {
		freq[it.toks[it.at+1]]++
	}
	var major int32
	for k, v := range freq {
		if v > freq[major] || v == freq[major] && k < major {
			major = k
		}
	}
	// The shape words are consecutive ids.
	lo, err := word{"shape", scenes.Shapes[0]}.id()
	if err != nil {
		return err
	}
	hi := lo + int32(len(scenes.Shapes)) - 1
	n := float64(len(test))
	for start := 0; start < len(test); start += scoreBatch {
		part := test[start:min(start+scoreBatch, len(test))]
		fw, err := b.Prefill(ctx, compute.PrefillRequest{Session: session, Batch: prompts(c, part)})
		if err != nil {
			return fmt.Errorf("prefill: %w", err)
		}
		if len(fw.Logits) != len(part) {
			return fmt.Errorf("backend returned %d logits for %d sequences", len(fw.Logits), len(part))
		}
		for i, it := range part {
			best := lo + int32(argmax(fw.Logits[i][lo:hi+1]))
			want := it.toks[it.at+1]
			if best == want {
				r.ShapeAcc += 1 / n
			}
			if major == want {
				r.ShapeAccBaseline += 1 / n
			}
		}
		if err := b.ReleaseCache(ctx, session, fw.CacheID); err != nil {
			return fmt.Errorf("release cache: %w", err)
		}
	}
	return nil
}

// headScore is what the grounder probe measures, from the head boxes
// Prefill returns: Acc@0.5 and centre hits, overall and per expression
// kind.
type headScore struct {
	N, Hits, Centre int
	KindN, KindHits map[string]int
}

// scoreHead runs the test items' prompts through Prefill (HeadOnly: a
// backend may skip the language model) and scores the head's boxes; a
// sequence without a head box, or with an existence probability outside
// [0, 1], is an error.
func scoreHead(ctx context.Context, b compute.Backend, session string, c model.Config, test []item) (headScore, error) {
	s := headScore{KindN: map[string]int{}, KindHits: map[string]int{}}
	for lo := 0; lo < len(test); lo += scoreBatch {
		part := test[lo:min(lo+scoreBatch, len(test))]
		fw, err := b.Prefill(ctx, compute.PrefillRequest{Session: session, Batch: prompts(c, part), HeadOnly: true})
		if err != nil {
			return s, fmt.Errorf("prefill: %w", err)
		}
		if fw.CacheID != "" {
			if err := b.ReleaseCache(ctx, session, fw.CacheID); err != nil {
				return s, fmt.Errorf("release cache: %w", err)
			}
		}
		if len(fw.HeadBoxes) != len(part) {
			return s, fmt.Errorf("backend returned %d head boxes for %d sequences", len(fw.HeadBoxes), len(part))
		}
		for i, it := range part {
			h := fw.HeadBoxes[i]
			if !h.OK {
				return s, fmt.Errorf("sequence %d: no head box", lo+i)
			}
			if !(h.Exists >= 0 && h.Exists <= 1) {
				return s, fmt.Errorf("sequence %d: existence %v outside [0, 1]", lo+i, h.Exists)
			}
			var pred [4]int
			for k := range 4 {
				pred[k] = int(h.Box[k]*100 + 0.5)
			}
			s.N++
			s.KindN[it.kind]++
			if boxOf(pred).IoU(boxOf(it.box)) >= 0.5 {
				s.Hits++
				s.KindHits[it.kind]++
			}
			if centreIn(pred, it.box) {
				s.Centre++
			}
		}
	}
	return s, nil
}

// argmax is the index of the largest value, the first of equals.
func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// dumpItems writes items' images (uint8, one after another) to
// dir/name.u8 and one JSON line per item (its expression, box and kind)
// to dir/name.jsonl, for a reference trained elsewhere.
func dumpItems(dir, name string, items []item) error {
	var pix, meta []byte
	for _, it := range items {
		pix = append(pix, it.img...)
		line, err := json.Marshal(map[string]any{"expr": it.expr, "box": it.box, "kind": it.kind})
		if err != nil {
			return fmt.Errorf("dump %s: %w", name, err)
		}
		meta = append(append(meta, line...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, name+".u8"), pix, 0o644); err != nil {
		return fmt.Errorf("dump %s: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".jsonl"), meta, 0o644); err != nil {
		return fmt.Errorf("dump %s: %w", name, err)
	}
	return nil
}

// sortedKinds are a score's expression kinds in order.
func (s headScore) sortedKinds() []string { return slices.Sorted(maps.Keys(s.KindN)) }
