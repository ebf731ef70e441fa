package synth

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
)

// ManifestFormat names the manifest schema.
const ManifestFormat = "groundmesh.synth/v1"

// Manifest describes one synthesized set: what was asked, what was written
// and how it was checked. It is stored as JSON next to the shards and holds
// no timestamps, so that the same inputs give the same manifest bytes.
type Manifest struct {
	Format      string `json:"format"`
	DatasetID   string `json:"dataset_id"`
	DatasetName string `json:"dataset_name"`
	// Params are the normalized build options (the set's identity together
	// with the dataset).
	Params BuildOptions `json:"params"`
	// ContentHash is the sha256 over the shard names and their sha256, in
	// name order. Crops are content-addressed and named inside the records,
	// so the hash covers them too.
	ContentHash string `json:"content_hash"`
	Target      int64  `json:"target"` // requested samples
	Total       int64  `json:"total"`  // records written
	RawBytes    int64  `json:"raw_bytes"`
	Counts      Counts `json:"counts"`
	// SizeBins documents how small/medium/large were decided.
	SizeBins SizeBinRule   `json:"size_bins"`
	Shards   []Shard       `json:"shards"`
	Crops    CropStats     `json:"crops"`
	Quality  Quality       `json:"quality"`
	Rewrite  *RewriteStats `json:"rewrite,omitempty"`

	// Key is the manifest's blob key (set by Build and OpenShards, not
	// stored).
	Key string `json:"-"`
}

// Counts are record counts per dimension; Cells holds the full cross
// product "stage/task/direction/scale/size_bin" (empty parts stay empty).
type Counts struct {
	Stage     map[string]int64 `json:"stage"`
	Task      map[string]int64 `json:"task"`
	Direction map[string]int64 `json:"direction"`
	Scale     map[string]int64 `json:"scale"`
	SizeBin   map[string]int64 `json:"size_bin"`
	Split     map[string]int64 `json:"split"`
	// PopeSplit and PopeAnswer count POPE probes by negative strategy and
	// by yes/no.
	PopeSplit  map[string]int64 `json:"pope_split"`
	PopeAnswer map[string]int64 `json:"pope_answer"`
	Cells      map[string]int64 `json:"cells"`
}

func newCounts() Counts {
	return Counts{
		Stage: map[string]int64{}, Task: map[string]int64{}, Direction: map[string]int64{},
		Scale: map[string]int64{}, SizeBin: map[string]int64{}, Split: map[string]int64{},
		PopeSplit: map[string]int64{}, PopeAnswer: map[string]int64{}, Cells: map[string]int64{},
	}
}

// Flat returns the counts as one map with prefixed keys ("total",
// "stage/stage2", "task/rec", "direction/T->C", "scale/1.5x",
// "size_bin/small", "split/train", "pope_split/adversarial",
// "pope_answer/yes"), the form events.SynthCompleted carries.
func (c Counts) Flat(total int64) map[string]int64 {
	out := map[string]int64{"total": total}
	add := func(p string, m map[string]int64) {
		for k, v := range m {
			out[p+"/"+k] = v
		}
	}
	add("stage", c.Stage)
	add("task", c.Task)
	add("direction", c.Direction)
	add("scale", c.Scale)
	add("size_bin", c.SizeBin)
	add("split", c.Split)
	add("pope_split", c.PopeSplit)
	add("pope_answer", c.PopeAnswer)
	return out
}

// SizeBinRule records the COCO thresholds as scaled for this set.
type SizeBinRule struct {
	Rule        string     `json:"rule"`
	SmallMax    float64    `json:"small_max"`  // COCO: 32, scaled by L/640
	MediumMax   float64    `json:"medium_max"` // COCO: 96, scaled by L/640
	ObjectsBins [3]int     `json:"objects"`    // valid objects per bin in the dataset
	Weights     [3]float64 `json:"weights"`    // stage-2 sampling weight per bin
}

// Shard is one gzip JSONL file of records of one stage and split.
type Shard struct {
	Key      string `json:"key"`
	Name     string `json:"name"` // key without the set prefix
	Stage    string `json:"stage"`
	Split    string `json:"split"`
	Records  int64  `json:"records"`
	Bytes    int64  `json:"bytes"`     // compressed
	RawBytes int64  `json:"raw_bytes"` // JSONL
	SHA256   string `json:"sha256"`
}

// CropStats counts the PNG crops of the set.
type CropStats struct {
	Prefix string `json:"prefix"`
	Unique int64  `json:"unique"` // distinct crops (per split) the set produced
	Bytes  int64  `json:"bytes"`  // their total size
	Refs   int64  `json:"refs"`   // crop references in written records
}

// Quality reports what the controls removed and what they verified.
type Quality struct {
	Generated        int64 `json:"generated"`        // candidate records produced
	Duplicates       int64 `json:"duplicates"`       // same images + prompt + answer (retried, then dropped)
	Leaks            int64 `json:"leaks"`            // answer box text or name found in a human turn
	BoxOutside       int64 `json:"box_outside"`      // an answer or crop box not inside its image
	SplitViolations  int64 `json:"split_violations"` // a record reading an image of another split
	Unfilled         int64 `json:"unfilled"`         // quota slots no valid record could fill
	ObjectsInvalid   int   `json:"objects_invalid"`  // annotations dropped: box degenerate or outside
	BoxesClipped     int   `json:"boxes_clipped"`    // annotations clipped to their image
	RelationsBroken  int   `json:"relations_broken"` // relations whose ends are missing
	ImagesUnreadable int64 `json:"images_unreadable"`
	// Drops counts removals per "<task>/<reason>" (reasons: duplicate,
	// leak, box_outside, split_violation, unfilled).
	Drops map[string]int64 `json:"drops"`
	// ImagesPerSplit and CropSplitsChecked prove the split separation:
	// every record's images, crops and candidates were checked to come
	// from the record's own split (violations are dropped and counted).
	ImagesPerSplit  map[string]int64 `json:"images_per_split"`
	CropRefsChecked int64            `json:"crop_refs_checked"`
}

// contentHash hashes shard names and digests in name order.
func contentHash(shards []Shard) string {
	s := append([]Shard(nil), shards...)
	sort.Slice(s, func(i, j int) bool { return s[i].Name < s[j].Name })
	var sb strings.Builder
	for _, sh := range s {
		sb.WriteString(sh.Name)
		sb.WriteByte(' ')
		sb.WriteString(sh.SHA256)
		sb.WriteByte('\n')
	}
	sum := sha256.Sum256([]byte(sb.String()))
	return hex.EncodeToString(sum[:])
}
