package synth

import (
	"compress/gzip"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sort"
)

// Stage names.
const (
	Stage1 = "stage1"
	Stage2 = "stage2"
	Stage3 = "stage3"
)

// Task names (model.Record.Task).
const (
	TaskInventory    = "inventory"
	TaskRelation     = "relation"
	TaskCaption      = "caption"
	TaskREC          = "rec"         // T->C
	TaskREG          = "reg"         // C->T
	TaskCropName     = "crop_name"   // I->T
	TaskCropPick     = "crop_pick"   // T->I
	TaskCropLocate   = "crop_locate" // I->C
	TaskBoxPick      = "box_pick"    // C->I
	TaskDense        = "dense"
	TaskConversation = "conversation"
	TaskPOPE         = "pope"
)

// Directions of stage 2 between text (T), coordinates (C) and crop image (I).
const (
	DirTC = "T->C"
	DirCT = "C->T"
	DirIT = "I->T"
	DirTI = "T->I"
	DirIC = "I->C"
	DirCI = "C->I"
)

// Crop context scales: the crop is the object box grown about its centre by
// this factor in each dimension (then clipped to the image).
const (
	ScaleTight = "tight"
	Scale15    = "1.5x"
	Scale25    = "2.5x"
)

var scaleFactor = map[string]float64{ScaleTight: 1, Scale15: 1.5, Scale25: 2.5}

// POPE negative sampling strategies.
const (
	PopeRandom      = "random"
	PopePopular     = "popular"
	PopeAdversarial = "adversarial"
)

var popeSplits = [3]string{PopeRandom, PopePopular, PopeAdversarial}

// stageTasks lists the task families of each stage, in generation order.
var stageTasks = map[string][]string{
	Stage1: {TaskInventory, TaskRelation, TaskCaption},
	Stage2: {TaskREC, TaskREG, TaskCropName, TaskCropPick, TaskCropLocate, TaskBoxPick},
	Stage3: {TaskDense, TaskConversation, TaskPOPE},
}

var allStages = []string{Stage1, Stage2, Stage3}

var taskDirection = map[string]string{
	TaskREC: DirTC, TaskREG: DirCT, TaskCropName: DirIT,
	TaskCropPick: DirTI, TaskCropLocate: DirIC, TaskBoxPick: DirCI,
}

var taskStage = func() map[string]string {
	m := map[string]string{}
	for st, ts := range stageTasks {
		for _, t := range ts {
			m[t] = st
		}
	}
	return m
}()

// Default mix: stage 2 (the paper's contribution, six directions) gets the
// largest share; stage 1 is short perception pretraining; stage 3 is the
// detailed global alignment.
var (
	defaultStageWeights = map[string]float64{Stage1: 0.2, Stage2: 0.55, Stage3: 0.25}
	defaultTaskWeights  = map[string]float64{
		TaskInventory: 0.4, TaskRelation: 0.35, TaskCaption: 0.25,
		TaskREC: 1, TaskREG: 1, TaskCropName: 1, TaskCropPick: 1, TaskCropLocate: 1, TaskBoxPick: 1,
		TaskDense: 0.3, TaskConversation: 0.3, TaskPOPE: 0.4,
	}
)

// BuildOptions configures Build. The zero value is usable: every field has a
// documented default. Fields tagged json:"-" do not change the output and
// are not part of the set's parameters.
type BuildOptions struct {
	// DatasetID is written into every record's lineage (default: the
	// dataset's name).
	DatasetID string `json:"dataset_id"`
	// Seed makes the set reproducible: same dataset, options and seed give
	// byte-identical shards.
	Seed int64 `json:"seed"`
	// Samples is the target total number of records (default 20000). The
	// written total can fall slightly short: duplicates and leaks are
	// dropped, not replaced.
	Samples int `json:"samples"`
	// Stages to generate (default all three).
	Stages []string `json:"stages"`
	// StageWeights splits Samples between stages (default stage1 0.2,
	// stage2 0.55, stage3 0.25; renormalized over Stages).
	StageWeights map[string]float64 `json:"stage_weights"`
	// TaskWeights splits a stage's share between its tasks (defaults:
	// stage1 inventory 0.4, relation 0.35, caption 0.25; stage2 the six
	// directions equally; stage3 dense 0.3, conversation 0.3, pope 0.4).
	// Missing tasks take their default; a weight of 0 disables a task.
	TaskWeights map[string]float64 `json:"task_weights"`
	// Mirror is the fraction of training-split REC and POPE records asked
	// about their image mirrored left to right (model.TransformMirror):
	// boxes mirrored, "left" and "right" swapped in the text. Validation
	// and test records never are. Default 0; at most 1.
	Mirror float64 `json:"mirror,omitempty"`
	// Scales are the crop context scales (default tight, 1.5x, 2.5x).
	Scales []string `json:"scales"`
	// Candidates is the number of crops offered by pick tasks, T->I and
	// C->I (default 3, at least 2: with the full image that fills model.DefaultConfig's four image slots).
	Candidates int `json:"candidates"`
	// MaxObjects caps the objects listed by inventories and dense
	// descriptions (default 24), to bound sequence length.
	MaxObjects int `json:"max_objects"`
	// BalanceCap is the most a rare size bin's objects are up-weighted when
	// balancing small/medium/large in stage 2 (default 4).
	BalanceCap float64 `json:"balance_cap"`
	// ShardRecords is the number of records per shard (default 50000).
	ShardRecords int `json:"shard_records"`
	// GzipLevel is the shard compression level (default gzip.BestSpeed).
	GzipLevel int `json:"gzip_level"`
	// Rewriter, when set, paraphrases the prompt templates before
	// generation (see Rewriter); its Name is part of the parameters.
	Rewriter Rewriter `json:"-"`
	// RewriterName identifies the rewriter in the parameters (set from
	// Rewriter.Name()).
	RewriterName string `json:"rewriter,omitempty"`
	// CropPrefix is the blob key prefix of the content-addressed crops
	// (default "<prefix>/crops"). Sets that share it store identical crops
	// once.
	CropPrefix string `json:"-"`
	// Workers is the number of generator goroutines (default GOMAXPROCS).
	Workers int `json:"-"`
	// Logger receives progress and quality logs (default: discard).
	Logger *slog.Logger `json:"-"`
}

func (o *BuildOptions) normalize() error {
	if o.Samples == 0 {
		o.Samples = 20000
	}
	if o.Samples < 0 {
		return fmt.Errorf("samples %d: must be positive", o.Samples)
	}
	if len(o.Stages) == 0 {
		o.Stages = slices.Clone(allStages)
	}
	seen := map[string]bool{}
	for _, s := range o.Stages {
		if _, ok := stageTasks[s]; !ok {
			return fmt.Errorf("stage %q: unknown (want stage1, stage2, stage3)", s)
		}
		if seen[s] {
			return fmt.Errorf("stage %q: listed twice", s)
		}
		seen[s] = true
	}
	sort.Strings(o.Stages)
	sw := map[string]float64{}
	for _, s := range o.Stages {
		w, ok := o.StageWeights[s]
		if !ok {
			w = defaultStageWeights[s]
		}
		if w < 0 {
			return fmt.Errorf("stage weight %s=%v: must not be negative", s, w)
		}
		sw[s] = w
	}
	for s := range o.StageWeights {
		if _, ok := stageTasks[s]; !ok {
			return fmt.Errorf("stage weight %q: unknown stage", s)
		}
	}
	o.StageWeights = sw
	tw := map[string]float64{}
	for t, d := range defaultTaskWeights {
		w, ok := o.TaskWeights[t]
		if !ok {
			w = d
		}
		if w < 0 {
			return fmt.Errorf("task weight %s=%v: must not be negative", t, w)
		}
		tw[t] = w
	}
	for t := range o.TaskWeights {
		if _, ok := defaultTaskWeights[t]; !ok {
			return fmt.Errorf("task weight %q: unknown task", t)
		}
	}
	o.TaskWeights = tw
	if !(o.Mirror >= 0 && o.Mirror <= 1) {
		return fmt.Errorf("mirror %v: want a fraction from 0 to 1", o.Mirror)
	}
	if len(o.Scales) == 0 {
		o.Scales = []string{ScaleTight, Scale15, Scale25}
	}
	for _, s := range o.Scales {
		if _, ok := scaleFactor[s]; !ok {
			return fmt.Errorf("scale %q: unknown (want tight, 1.5x, 2.5x)", s)
		}
	}
	if o.Candidates == 0 {
		o.Candidates = 3
	}
	if o.Candidates < 2 || o.Candidates > 10 {
		return fmt.Errorf("candidates %d: want 2..10", o.Candidates)
	}
	if o.MaxObjects == 0 {
		o.MaxObjects = 24
	}
	if o.MaxObjects < 1 {
		return fmt.Errorf("max objects %d: must be positive", o.MaxObjects)
	}
	if o.BalanceCap == 0 {
		o.BalanceCap = 4
	}
	if o.BalanceCap < 1 {
		return fmt.Errorf("balance cap %v: must be >= 1", o.BalanceCap)
	}
	if o.ShardRecords == 0 {
		o.ShardRecords = 50000
	}
	if o.ShardRecords < 1 {
		return fmt.Errorf("shard records %d: must be positive", o.ShardRecords)
	}
	if o.GzipLevel == 0 {
		o.GzipLevel = gzip.BestSpeed
	}
	if o.GzipLevel < gzip.HuffmanOnly || o.GzipLevel > gzip.BestCompression {
		return fmt.Errorf("gzip level %d: invalid", o.GzipLevel)
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Rewriter != nil {
		o.RewriterName = o.Rewriter.Name()
	}
	return nil
}
