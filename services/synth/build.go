package synth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"golang.org/x/sync/errgroup"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
)

var tracer = otel.Tracer("groundmesh/synth")

// poolSize is the number of objects per split kept as extra pick-task
// distractors, for images with too few objects of their own.
const poolSize = 64

// builder holds everything the workers share; it is read-only once the
// workers start (apart from the crop store, which locks).
type builder struct {
	opts    BuildOptions
	ds      *dataset.Dataset
	ix      *index
	prompts templateSet
	answers templateSet
	tasks   []string           // enabled tasks in generation order
	quota   map[string][]int32 // task -> records (POPE: pairs) per image
	popeOff []int64            // POPE pairs before each image (balanced strategies)
	crops   *cropStore
	pool    map[string][]cropPoolEntry // split -> distractors
	// fileSHA holds hashes computed for distractor pool images the dataset
	// gave none for (lineage of the records that show their crops).
	fileSHA map[string]string
}

type cropPoolEntry struct {
	ii    *imgInfo
	obj   int
	crops []cropRef // by scale index
}

// Build synthesizes the alignment set of ds into out under prefix and
// returns its manifest (also stored at "<prefix>/manifest.json"). It is
// pure: no database, no clock; the same dataset, options and seed give
// byte-identical shards and the same content hash. progress, when not nil,
// is called from one goroutine with records written so far and the target.
func Build(ctx context.Context, ds *dataset.Dataset, opts BuildOptions, out blob.Store, prefix string, progress func(done, total int64)) (Manifest, error) {
	ctx, span := tracer.Start(ctx, "synth.Build")
	defer span.End()
	m, err := build(ctx, ds, opts, out, prefix, progress)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return Manifest{}, err
	}
	span.SetAttributes(attribute.Int64("synth.records", m.Total), attribute.String("synth.content_hash", m.ContentHash))
	return m, nil
}

func build(ctx context.Context, ds *dataset.Dataset, opts BuildOptions, out blob.Store, prefix string, progress func(done, total int64)) (Manifest, error) {
	if ds == nil {
		return Manifest{}, errors.New("build synth set: nil dataset")
	}
	if out == nil {
		return Manifest{}, errors.New("build synth set: nil blob store")
	}
	if prefix == "" {
		return Manifest{}, errors.New("build synth set: empty prefix")
	}
	if err := opts.normalize(); err != nil {
		return Manifest{}, fmt.Errorf("build synth set: %w", err)
	}
	if opts.DatasetID == "" {
		opts.DatasetID = ds.Name
	}
	if opts.DatasetID == "" {
		return Manifest{}, errors.New("build synth set: no dataset id (set BuildOptions.DatasetID or Dataset.Name)")
	}
	if opts.CropPrefix == "" {
		opts.CropPrefix = prefix + "/crops"
	}
	log := opts.Logger
	start := time.Now()

	b := &builder{opts: opts, ds: ds, crops: newCropStore(out, opts.CropPrefix), fileSHA: map[string]string{}}
	defer b.crops.wait() // stop the writers on every path
	b.ix = buildIndex(ds, opts.BalanceCap)
	if len(b.ix.images) == 0 {
		return Manifest{}, errors.New("build synth set: dataset has no usable images")
	}
	var err error
	if b.answers, err = compileAll(answerTemplates); err != nil {
		return Manifest{}, fmt.Errorf("build synth set: %w", err)
	}
	var rstats *RewriteStats
	b.prompts, rstats, err = b.promptTemplates(ctx)
	if err != nil {
		return Manifest{}, fmt.Errorf("build synth set: %w", err)
	}
	b.planQuotas()
	if err := b.buildPool(ctx); err != nil {
		return Manifest{}, fmt.Errorf("build synth set: %w", err)
	}
	log.Info("synth plan", "dataset", opts.DatasetID, "images", len(b.ix.images), "target", opts.Samples,
		"tasks", len(b.tasks), "workers", opts.Workers, "bins", b.ix.binCount)

	shards := newShardSet(out, prefix, opts.ShardRecords, opts.GzipLevel)
	w := newWriter(b, shards, progress)
	if err := b.run(ctx, w); err != nil {
		shards.abort()
		return Manifest{}, fmt.Errorf("build synth set: %w", err)
	}
	if err := shards.close(); err != nil {
		return Manifest{}, fmt.Errorf("build synth set: %w", err)
	}
	if err := b.crops.wait(); err != nil {
		return Manifest{}, fmt.Errorf("build synth set: %w", err)
	}

	m := Manifest{
		Format: ManifestFormat, DatasetID: opts.DatasetID, DatasetName: ds.Name, Params: opts,
		Target: int64(opts.Samples), Total: w.total, RawBytes: shards.raw, Counts: w.counts,
		Shards: shards.done, Quality: w.quality, Rewrite: rstats,
	}
	slices.SortFunc(m.Shards, func(a, b Shard) int { return compareStr(a.Name, b.Name) })
	m.ContentHash = contentHash(m.Shards)
	m.SizeBins = SizeBinRule{
		Rule:        "COCO area thresholds scaled by L/640, L = longer image side: small < (32L/640)^2, medium < (96L/640)^2",
		SmallMax:    cocoSmallMax,
		MediumMax:   cocoMedMax,
		ObjectsBins: b.ix.binCount,
		Weights:     b.ix.binW,
	}
	uniq, cbytes, written := b.crops.stats()
	m.Crops = CropStats{Prefix: opts.CropPrefix, Unique: uniq, Bytes: cbytes, Refs: w.cropRefs}
	m.Quality.ObjectsInvalid = b.ix.invalid
	m.Quality.BoxesClipped = b.ix.clipped
	m.Quality.RelationsBroken = b.ix.orphanRel
	m.Quality.ImagesPerSplit = map[string]int64{}
	for _, ii := range b.ix.images {
		m.Quality.ImagesPerSplit[ii.src.Split]++
	}
	m.Key = prefix + "/manifest.json"
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, fmt.Errorf("build synth set: encode manifest: %w", err)
	}
	if _, _, err := out.Put(m.Key, bytes.NewReader(append(data, '\n'))); err != nil {
		return Manifest{}, fmt.Errorf("build synth set: write manifest: %w", err)
	}
	el := time.Since(start)
	log.Info("synth built", "dataset", opts.DatasetID, "records", m.Total, "target", m.Target,
		"shards", len(m.Shards), "crops", uniq, "crops_written", written, "seconds", el.Seconds(),
		"duplicates", m.Quality.Duplicates, "leaks", m.Quality.Leaks, "unfilled", m.Quality.Unfilled,
		"content_hash", m.ContentHash)
	return m, nil
}

func compareStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// planQuotas splits the target over stages, tasks and images. Each task's
// share goes to the images that can produce it, in proportion to an image
// weight (stage 2: the sum of its eligible objects' size-bin weights, so
// that small, medium and large objects are balanced; other tasks: 1), with
// cumulative rounding so that the per-task totals are exact.
func (b *builder) planQuotas() {
	o := &b.opts
	var stageSum float64
	for _, s := range o.Stages {
		stageSum += o.StageWeights[s]
	}
	b.quota = map[string][]int32{}
	n := len(b.ix.images)
	for _, st := range allStages {
		if !slices.Contains(o.Stages, st) || stageSum == 0 {
			continue
		}
		var taskSum float64
		for _, t := range stageTasks[st] {
			taskSum += o.TaskWeights[t]
		}
		if taskSum == 0 {
			continue
		}
		stageTarget := float64(o.Samples) * o.StageWeights[st] / stageSum
		for _, t := range stageTasks[st] {
			target := stageTarget * o.TaskWeights[t] / taskSum
			if t == TaskPOPE {
				target /= 2 // quota counts yes/no pairs
			}
			weights := make([]float64, n)
			var total float64
			for i, ii := range b.ix.images {
				weights[i] = b.imageWeight(t, ii)
				total += weights[i]
			}
			if total == 0 || target < 0.5 {
				continue
			}
			q := make([]int32, n)
			var cum float64
			prev := int64(0)
			for i, w := range weights {
				cum += w
				cur := int64(math.Floor(target*cum/total + 0.5))
				q[i] = int32(cur - prev)
				prev = cur
			}
			b.quota[t] = q
			b.tasks = append(b.tasks, t)
		}
	}
	if q := b.quota[TaskPOPE]; q != nil {
		b.popeOff = make([]int64, n)
		var c int64
		for i, v := range q {
			b.popeOff[i] = c
			c += int64(v)
		}
	}
}

// imageWeight is how much of task t an image can carry (0: none).
func (b *builder) imageWeight(t string, ii *imgInfo) float64 {
	switch t {
	case TaskInventory, TaskCaption, TaskDense, TaskConversation:
		if len(ii.objs) > 0 {
			return 1
		}
	case TaskRelation:
		if len(ii.rels) > 0 {
			return 1
		}
	case TaskPOPE:
		if l := b.popeLevels(ii); l[0] || l[1] {
			return 1
		}
	default: // stage 2: sum of eligible referents' bin weights
		var w float64
		for k := range ii.objs {
			if b.eligible(t, ii, k) {
				w += ii.objs[k].weight
			}
		}
		if t == TaskREC || t == TaskREG {
			for _, r := range ii.regions {
				w += b.ix.binW[r.bin]
			}
		}
		return w
	}
	return 0
}

// eligible says whether object k of ii can be the referent of stage-2 task t.
func (b *builder) eligible(t string, ii *imgInfo, k int) bool {
	o := &ii.objs[k]
	if o.crowd {
		return false // a crowd box is many objects: no single-object task targets it
	}
	switch t {
	case TaskREC:
		return o.expr != "" || len(o.refs) > 0
	case TaskREG:
		return !o.boxAmbiguous
	case TaskCropName, TaskCropPick:
		return o.cropOK
	case TaskCropLocate:
		if !o.cropOK {
			return false
		}
		for j := range ii.objs {
			if j != k && ii.objs[j].desc == o.desc {
				return false // a twin makes the crop's location ambiguous
			}
		}
		return true
	case TaskBoxPick:
		return o.cropOK && !o.boxAmbiguous
	}
	return false
}

// buildPool picks, per split, poolSize crop-able objects (in seed order) and
// crops them at every scale: pick tasks fill up their candidates from it
// when the image itself has too few distinct objects.
func (b *builder) buildPool(ctx context.Context) error {
	needs := b.quota[TaskCropPick] != nil || b.quota[TaskBoxPick] != nil
	if !needs {
		return nil
	}
	type cand struct {
		ii  *imgInfo
		k   int
		key uint64
	}
	bySplit := map[string][]cand{}
	for _, ii := range b.ix.images {
		for k := range ii.objs {
			if ii.objs[k].cropOK && !ii.objs[k].crowd {
				h := newSeedHash(b.opts.Seed).str("pool").str(ii.objs[k].src.ID).sum()
				bySplit[ii.src.Split] = append(bySplit[ii.src.Split], cand{ii, k, h})
			}
		}
	}
	b.pool = map[string][]cropPoolEntry{}
	cr := newCropper(b.crops, b.ds.Root)
	for split, cs := range bySplit {
		slices.SortFunc(cs, func(a, c cand) int {
			switch {
			case a.key < c.key:
				return -1
			case a.key > c.key:
				return 1
			}
			return 0
		})
		// Prefer distinct descriptions so that a target always finds
		// distractors that differ from it.
		var picked []cand
		seen := map[string]bool{}
		for pass := 0; pass < 2 && len(picked) < poolSize; pass++ {
			for _, c := range cs {
				if len(picked) >= poolSize {
					break
				}
				d := c.ii.objs[c.k].desc
				if (pass == 0) == seen[d] {
					continue
				}
				if pass == 0 {
					seen[d] = true
				}
				picked = append(picked, c)
			}
		}
		// Crop grouped by image so each is decoded once.
		slices.SortStableFunc(picked, func(a, c cand) int { return a.ii.idx - c.ii.idx })
		for _, c := range picked {
			if err := ctx.Err(); err != nil {
				return err
			}
			if cr.cur != c.ii {
				cr.reset(c.ii)
			}
			e := cropPoolEntry{ii: c.ii, obj: c.k}
			ok := true
			for si, s := range b.opts.Scales {
				r, err := cr.crop(c.k, si, s)
				if err != nil {
					var u errUnreadable
					if errors.As(err, &u) {
						ok = false
						break
					}
					return fmt.Errorf("crop distractor pool: %w", err)
				}
				e.crops = append(e.crops, r)
			}
			if ok {
				b.pool[split] = append(b.pool[split], e)
				if c.ii.src.SHA256 == "" {
					if raw, err := cr.fileBytes(); err == nil {
						sum := sha256.Sum256(raw)
						b.fileSHA[c.ii.src.ID] = hex.EncodeToString(sum[:])
					}
				}
			}
		}
	}
	return nil
}

// run generates records image by image on a worker pool and writes them in
// image order, so that the shards do not depend on scheduling.
func (b *builder) run(ctx context.Context, w *writer) error {
	g, ctx := errgroup.WithContext(ctx)
	n := len(b.ix.images)
	window := b.opts.Workers * 8
	sem := make(chan struct{}, window)
	jobs := make(chan int)
	results := make(chan *batch, window)

	g.Go(func() error {
		defer close(jobs)
		for i := 0; i < n; i++ {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case jobs <- i:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	var wg sync.WaitGroup
	for range b.opts.Workers {
		wg.Add(1)
		wk := newWorker(b)
		g.Go(func() error {
			defer wg.Done()
			for i := range jobs {
				bt, err := wk.image(b.ix.images[i])
				if err != nil {
					return err
				}
				select {
				case results <- bt:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
	}
	go func() { wg.Wait(); close(results) }()
	g.Go(func() error {
		pending := make(map[int]*batch, window)
		next := 0
		for bt := range results {
			pending[bt.idx] = bt
			for {
				cur, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				if err := w.write(cur); err != nil {
					return err
				}
				next++
				<-sem
			}
		}
		if next != n && ctx.Err() == nil {
			return fmt.Errorf("write records: %d of %d images written", next, n)
		}
		return nil
	})
	return g.Wait()
}
