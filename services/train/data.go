package train

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/model"
)

// SynthSet is what a run trains on: a synth set's records and how to read
// their images.
type SynthSet struct {
	// Records streams every record of the set (all stages and splits) in a
	// stable order; each call starts a new pass.
	Records func(ctx context.Context) iter.Seq2[model.Record, error]
	// Images resolves the records' image references.
	Images model.ImageResolver
}

// SynthReader opens a synth set from its facts, as the run's request
// carried them (events.TrainRequested.Synth): where its manifest is and the
// directory its image paths are relative to. The service reads no table
// of services/synth or ingest to find them.
type SynthReader func(ctx context.Context, set events.SynthFacts) (SynthSet, error)

// runData is a run's prepared training data. The first stage's shards are
// built before prepareData returns; the later stages' are built behind it,
// while the first stage trains (the plugin trains on one core, the build
// takes the other), and stageShards waits for them.
type runData struct {
	Tokenizer   *model.Tokenizer
	ModelConfig []byte // JSON of model.Config, vocab from the tokenizer

	mu     sync.Mutex
	shards map[string][]string      // stage -> tokenized shard paths, once built
	ready  map[string]chan struct{} // closed when the stage's shards are built or the build failed
	err    error                    // the background build's error
	cancel context.CancelFunc       // stops the background build
	done   chan struct{}            // closed when the background build has ended
}

// stageShards returns stage's shard paths, waiting for their build.
func (d *runData) stageShards(ctx context.Context, stage string) ([]string, error) {
	ch, ok := d.ready[stage]
	if !ok {
		return nil, fmt.Errorf("train: no shards for stage %q", stage)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.shards[stage]; ok {
		return p, nil
	}
	return nil, d.err
}

// stop stops the background build and waits for it to end, so that
// nothing writes into the data directory after the run returns.
func (d *runData) stop() {
	d.cancel()
	<-d.done
}

func newRunData(tok *model.Tokenizer, cfg []byte) *runData {
	d := &runData{Tokenizer: tok, ModelConfig: cfg, shards: map[string][]string{}, ready: map[string]chan struct{}{},
		cancel: func() {}, done: make(chan struct{})}
	for _, st := range Stages {
		d.ready[st] = make(chan struct{})
	}
	return d
}

// dataManifest marks a finished preparation in the run's data directory,
// so that a resumed run in the same data dir reuses its shards.
type dataManifest struct {
	TokenizerID string              `json:"tokenizer_id"`
	ModelConfig json.RawMessage     `json:"model_config"`
	Shards      map[string][]string `json:"shards"`
}

// prepareData returns the run's tokenizer, model config and tokenized
// shards per stage. tok, when set, is the run's recorded tokenizer (a
// resumed run must keep its vocabulary); otherwise one is built from the
// synth set's records. Shards already built in dir for the same tokenizer
// are reused.
func prepareData(ctx context.Context, dir, synthSetID string, spec RunSpec, set SynthSet, tok *model.Tokenizer, logf func(string, ...any)) (*runData, error) {
	if b, err := os.ReadFile(filepath.Join(dir, "data.json")); err == nil && tok != nil {
		var dm dataManifest
		if json.Unmarshal(b, &dm) == nil && dm.TokenizerID == tok.ID() && allExist(dm.Shards) {
			d := newRunData(tok, dm.ModelConfig)
			for _, st := range Stages {
				d.shards[st] = dm.Shards[st]
				close(d.ready[st])
			}
			close(d.done)
			return d, nil
		}
	}
	if tok == nil {
		var splits []string
		for _, st := range Stages {
			for _, s := range spec.Stage(st).Data.Splits {
				if !slices.Contains(splits, s) {
					splits = append(splits, s)
				}
			}
		}
		vb := model.NewVocabBuilder()
		for rec, err := range set.Records(ctx) {
			if err != nil {
				return nil, fmt.Errorf("read synth set %s: %w", synthSetID, err)
			}
			if slices.Contains(splits, rec.Split) {
				vb.AddRecord(rec)
			}
		}
		var err error
		if tok, err = vb.Build(spec.MaxWords); err != nil {
			return nil, fmt.Errorf("build tokenizer: %w", err)
		}
	}
	cfg := spec.Model
	cfg.VocabSize = tok.VocabSize()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("run spec: model: %v: %w", err, ErrInvalidRequest)
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode model config: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("clear data dir: %w", err)
	}
	data := newRunData(tok, cfgJSON)
	build := func(ctx context.Context, stage string) error {
		paths, err := buildStageShards(ctx, shardInput{
			Dir: filepath.Join(dir, stage), Stage: stage, SynthSetID: synthSetID,
			Model: cfg, Tokenizer: tok, Filter: spec.Stage(stage).Data,
			SamplesPerShard: spec.SamplesPerShard, Seed: spec.Seed, Set: set,
			Pack: spec.Packs(stage),
		}, logf)
		data.mu.Lock()
		defer data.mu.Unlock()
		if err != nil {
			data.err = err
			return err
		}
		data.shards[stage] = paths
		close(data.ready[stage])
		return nil
	}
	if err := build(ctx, Stages[0]); err != nil {
		return nil, err
	}
	bctx, cancel := context.WithCancel(ctx)
	data.cancel = cancel
	go func() {
		defer close(data.done)
		defer cancel()
		var err error
		for _, stage := range Stages[1:] {
			if err = build(bctx, stage); err != nil {
				break
			}
		}
		if err == nil {
			data.mu.Lock()
			b, merr := json.Marshal(dataManifest{TokenizerID: tok.ID(), ModelConfig: cfgJSON, Shards: data.shards})
			data.mu.Unlock()
			if merr == nil {
				merr = os.WriteFile(filepath.Join(dir, "data.json"), b, 0o644)
			}
			if merr != nil {
				data.mu.Lock()
				data.err = fmt.Errorf("write data manifest: %w", merr)
				data.mu.Unlock()
			}
		}
		// A failed build releases every stage still waiting: each reads
		// the error.
		data.mu.Lock()
		for _, st := range Stages {
			if _, ok := data.shards[st]; !ok {
				close(data.ready[st])
			}
		}
		data.mu.Unlock()
	}()
	return data, nil
}

func allExist(shards map[string][]string) bool {
	for _, st := range Stages {
		if len(shards[st]) == 0 {
			return false
		}
		for _, p := range shards[st] {
			if _, err := os.Stat(p); err != nil {
				return false
			}
		}
	}
	return true
}

// shardInput is what building one stage's shards needs.
type shardInput struct {
	Dir             string
	Stage           string
	SynthSetID      string
	Model           model.Config
	Tokenizer       *model.Tokenizer
	Filter          DataFilter
	SamplesPerShard int
	Seed            int64
	Pack            bool
	Set             SynthSet
}

// buildStageShards is the one call into model's shard builder:
// the records of the stage's filter, tokenized into shards in in.Dir.
func buildStageShards(ctx context.Context, in shardInput, logf func(string, ...any)) ([]string, error) {
	records := func(yield func(model.Record, error) bool) {
		for rec, err := range in.Set.Records(ctx) {
			if err == nil && len(in.Filter.Tasks) > 0 && !slices.Contains(in.Filter.Tasks, rec.Task) {
				continue
			}
			if !yield(rec, err) {
				return
			}
		}
	}
	b, err := model.NewShardBuilder(model.ShardConfig{
		Model: in.Model, Tokenizer: in.Tokenizer, Dir: in.Dir, Name: in.Stage,
		Stages: in.Filter.Stages, Splits: in.Filter.Splits, SamplesPerShard: in.SamplesPerShard,
		Seed: in.Seed, SynthSet: in.SynthSetID, Pack: in.Pack,
	}, in.Set.Images)
	if err != nil {
		return nil, fmt.Errorf("build %s shards: %w", in.Stage, err)
	}
	infos, err := b.Build(ctx, records)
	if err != nil {
		return nil, fmt.Errorf("build %s shards: %w", in.Stage, err)
	}
	st := b.Stats()
	logf("built shards", "stage", in.Stage, "shards", len(infos), "kept", st.Kept, "packed", st.Packed, "read", st.Read, "dropped", st.Dropped)
	if st.Kept == 0 || len(infos) == 0 {
		return nil, fmt.Errorf("build %s shards: no records of synth stages %v, splits %v, tasks %v in synth set %s (%d read, dropped %v): %w",
			in.Stage, in.Filter.Stages, in.Filter.Splits, in.Filter.Tasks, in.SynthSetID, st.Read, st.Dropped, ErrInvalidRequest)
	}
	paths := make([]string, len(infos))
	for i, info := range infos {
		paths[i] = info.Path
	}
	return paths, nil
}
