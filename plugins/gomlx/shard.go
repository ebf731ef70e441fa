package gomlx

import (
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/groundmesh/groundmesh/model"
)

// sampleRef addresses one row of one shard; n is its length (positions up
// to the last that is not padding).
type sampleRef struct {
	shard, row, n int
}

// groupBatches is how many consecutive batches share a length-sorted group
// (see dataset.batchRefs).
const groupBatches = 16

// dataset is the concatenation of a stage's shards with a deterministic,
// seeded order: epoch e visits the samples in the permutation drawn from
// PCG(seed, e), so a run's data position is a function of its step alone
// and a resumed run sees exactly the batches the uninterrupted one would.
// Batches are cut from length-sorted groups of consecutive positions
// (batchRefs), so that a batch pads to a length near its samples'.
type dataset struct {
	cfg     model.Config
	shards  []*model.Shard
	samples []sampleRef
	seed    int64

	permEpoch int
	perm      []int
}

// checkShard validates a shard against the model config.
func checkShard(s *model.Shard, c model.Config) error {
	switch {
	case s.SeqLen != c.MaxSeq:
		return fmt.Errorf("sequence length %d, config max_seq %d", s.SeqLen, c.MaxSeq)
	case s.ImageSlots != c.MaxImages:
		return fmt.Errorf("%d image slots, config max_images %d", s.ImageSlots, c.MaxImages)
	case s.NumImages > 0 && s.ImageSize != c.ImageSize:
		return fmt.Errorf("images of %d px, config image_size %d", s.ImageSize, c.ImageSize)
	}
	for r := range s.N {
		tokens, targets, slots := s.Sample(r)
		patches, imgs := 0, 0
		for t, tok := range tokens {
			if tok < 0 || int(tok) >= c.VocabSize {
				return fmt.Errorf("row %d: token %d at %d outside vocab %d", r, tok, t, c.VocabSize)
			}
			if tg := targets[t]; tg < -1 || int(tg) >= c.VocabSize {
				return fmt.Errorf("row %d: target %d at %d outside vocab %d", r, tg, t, c.VocabSize)
			}
			if tok == c.PatchToken {
				patches++
			}
		}
		for _, ix := range slots {
			if ix >= 0 {
				imgs++
			}
		}
		if patches > imgs*c.Patches() {
			return fmt.Errorf("row %d: %d patch tokens but %d images of %d patches", r, patches, imgs, c.Patches())
		}
	}
	return nil
}

// rowImages returns a row's present images in slot order.
func rowImages(s *model.Shard, r int) [][]byte {
	_, _, slots := s.Sample(r)
	var out [][]byte
	for _, ix := range slots {
		if ix >= 0 {
			out = append(out, s.Image(int(ix)))
		}
	}
	return out
}

func newDataset(paths []string, c model.Config, seed int64) (*dataset, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("load dataset: no shards")
	}
	d := &dataset{cfg: c, seed: seed, permEpoch: -1}
	for i, p := range paths {
		s, err := model.ReadShard(p)
		if err != nil {
			return nil, fmt.Errorf("load dataset: %w", err)
		}
		if err := checkShard(s, c); err != nil {
			return nil, fmt.Errorf("load dataset: shard %s: %w", p, err)
		}
		d.shards = append(d.shards, s)
		for r := range s.N {
			tokens, targets, _ := s.Sample(r)
			d.samples = append(d.samples, sampleRef{shard: i, row: r, n: seqLen(c, tokens, targets)})
		}
	}
	if len(d.samples) == 0 {
		return nil, fmt.Errorf("load dataset: shards hold no samples")
	}
	return d, nil
}

// at returns the sample at global data position pos (epochs concatenated).
func (d *dataset) at(pos int64) sampleRef {
	n := int64(len(d.samples))
	epoch := int(pos / n)
	if epoch != d.permEpoch {
		rng := rand.New(rand.NewPCG(uint64(d.seed), uint64(epoch)))
		d.perm = rng.Perm(int(n))
		d.permEpoch = epoch
	}
	return d.samples[d.perm[pos%n]]
}

// seqLen is a row's length: up to its last position that holds a token
// other than padding or carries a target.
func seqLen(c model.Config, tokens, targets []int32) int {
	n := 0
	for t, tok := range tokens {
		if tok != c.PadToken || targets[t] != -1 {
			n = t + 1
		}
	}
	return n
}

// batchRefs returns the samples of the batch at data position pos. The
// positions run in groups of groupBatches batches; a group's samples are
// sorted by length and cut into batches, and the group visits those in an
// order drawn from the seed and the group's index. Every sample is still
// visited once per epoch and a batch is still a function of its position,
// but a batch holds samples of similar length: a stage that mixes
// one-image records with four-image ones pads far less (a batch costs what
// its longest row does). A position that is not a multiple of batchSize
// (a run resumed with another batch size) takes the positions in order.
func (d *dataset) batchRefs(pos int64, batchSize int) []sampleRef {
	if pos%int64(batchSize) != 0 {
		refs := make([]sampleRef, batchSize)
		for i := range refs {
			refs[i] = d.at(pos + int64(i))
		}
		return refs
	}
	m := int64(batchSize * groupBatches)
	g0 := pos - pos%m
	group := make([]sampleRef, m)
	for i := range group {
		group[i] = d.at(g0 + int64(i))
	}
	slices.SortStableFunc(group, func(a, b sampleRef) int { return a.n - b.n })
	order := rand.New(rand.NewPCG(uint64(d.seed), uint64(g0/m)|1<<63)).Perm(groupBatches)
	j := order[(pos-g0)/int64(batchSize)] * batchSize
	return group[j : j+batchSize]
}

// batchAt builds the batch of batchSize samples at data position pos (see
// batchRefs).
func (d *dataset) batchAt(pos int64, batchSize int) trainBatch {
	rows := make([]batchRow, batchSize)
	for i, ref := range d.batchRefs(pos, batchSize) {
		s := d.shards[ref.shard]
		tokens, targets, _ := s.Sample(ref.row)
		rows[i] = batchRow{tokens: tokens, targets: targets, images: rowImages(s, ref.row), patchTargets: s.PatchTargetRow(ref.row), patchBoxes: s.PatchBoxRow(ref.row), refBox: s.RefBoxRow(ref.row), exists: s.RefExistsAt(ref.row) + 1, cells: s.CellWordsRow(ref.row, d.cfg.Patches()), name: s.NameRow(ref.row)}
	}
	return makeBatch(d.cfg, rows)
}

// batchPrefetch builds the batches of consecutive data positions in a
// goroutine of its own, one batch ahead of the step that reads it: on the
// two-core machines the demo runs on, libtorch's step takes one core, and
// building a batch (normalizing its pixels, unpacking its tokens) was 7% of
// stage 1's CPU profile on the same thread before it moved here. The batches are the
// ones batchAt gives at those positions, in order: only this goroutine
// reads the dataset (batchAt is not safe for concurrent use) until close.
type batchPrefetch struct {
	out  chan trainBatch
	stop chan struct{}
	done chan struct{}
}

// prefetch starts building the batches of batchSize samples at data
// positions pos, pos+batchSize, ...
func (d *dataset) prefetch(pos int64, batchSize int) *batchPrefetch {
	p := &batchPrefetch{out: make(chan trainBatch, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			bt := d.batchAt(pos, batchSize)
			pos += int64(batchSize)
			select {
			case p.out <- bt:
			case <-p.stop:
				return
			}
		}
	}()
	return p
}

// next returns the next batch.
func (p *batchPrefetch) next() trainBatch { return <-p.out }

// close stops the goroutine and waits for it; the dataset may be read
// again after it returns.
func (p *batchPrefetch) close() {
	close(p.stop)
	<-p.done
}
