package eval

import (
	"fmt"
	"sort"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/eval/metrics"
)

// Benchmark names, as stored in evaluations.benchmark.
const (
	BenchREC         = "rec"          // T->C: referring expression to box
	BenchRECBaseline = "rec_baseline" // the fixed-box baseline on the REC records
	BenchCropName    = "crop_name"    // I->T: name and attributes of a crop
	BenchCropLocate  = "crop_locate"  // I->C: box of a crop in the full image
	BenchCropPick    = "crop_pick"    // T->I: pick the crop an expression names
	BenchBoxPick     = "box_pick"     // C->I: pick the crop of a box
	BenchDense       = "dense"        // grounded description
	BenchPOPEPrefix  = "pope_"        // pope_random, pope_popular, pope_adversarial
)

// StageBaseline is the stage recorded for baselines, which use no checkpoint.
const StageBaseline = "baseline"

// benchOrder fixes the order benchmarks are run and reported in.
var benchOrder = []string{
	BenchREC, BenchRECBaseline, BenchCropLocate, BenchCropName, BenchCropPick, BenchBoxPick, BenchDense,
	BenchPOPEPrefix + metrics.POPERandom, BenchPOPEPrefix + metrics.POPEPopular, BenchPOPEPrefix + metrics.POPEAdversarial,
}

// HeadBenchmarks are the benchmarks whose answers come from the grounding
// head (REC's box, POPE's yes or no), not from the language model: the
// ones a checkpoint of a stage trained under the grounder objective is
// scored on.
func HeadBenchmarks() []string {
	return []string{BenchREC, BenchPOPEPrefix + metrics.POPERandom, BenchPOPEPrefix + metrics.POPEPopular, BenchPOPEPrefix + metrics.POPEAdversarial}
}

func benchRank(b string) int {
	for i, x := range benchOrder {
		if x == b {
			return i
		}
	}
	return len(benchOrder)
}

// sortBenches orders benchmark names for reports: known ones first.
func sortBenches(bs []string) {
	sort.SliceStable(bs, func(i, j int) bool {
		ri, rj := benchRank(bs[i]), benchRank(bs[j])
		if ri != rj {
			return ri < rj
		}
		return bs[i] < bs[j]
	})
}

// BenchmarkOf names the benchmark a synth record belongs to, or "" when it
// is training-only material (captions, inventories, conversations, C->T).
func BenchmarkOf(r model.Record) string {
	switch {
	case r.Task == "pope":
		split := r.Answer.PopeSplit
		if split == "" {
			split = metrics.POPERandom
		}
		return BenchPOPEPrefix + split
	case r.Direction == "T->C" || r.Task == "rec":
		return BenchREC
	case r.Direction == "I->T" || r.Task == "crop_name":
		return BenchCropName
	case r.Direction == "I->C" || r.Task == "crop_locate":
		return BenchCropLocate
	case r.Direction == "T->I" || r.Task == "crop_pick":
		return BenchCropPick
	case r.Direction == "C->I" || r.Task == "box_pick":
		return BenchBoxPick
	case r.Task == "dense":
		return BenchDense
	}
	return ""
}

// boxTask reports whether a benchmark's answer is a single box.
func boxTask(bench string) bool {
	return bench == BenchREC || bench == BenchRECBaseline || bench == BenchCropLocate
}

// SampleResult is one line of an evaluation's predictions.jsonl: the record,
// what the model said, and how it was scored.
type SampleResult struct {
	ID        string           `json:"id"`
	Benchmark string           `json:"benchmark"`
	Split     string           `json:"split"`
	Task      string           `json:"task"`
	Direction string           `json:"direction,omitempty"`
	Images    []model.ImageRef `json:"images"`
	Prompt    string           `json:"prompt"`
	Reference string           `json:"reference"`
	// Truth is the structured answer for text benchmarks: the POPE label,
	// the crop's name, the pick's candidate.
	Truth  string `json:"truth,omitempty"`
	Output string `json:"output"`
	// PredBox and TrueBoxes are pixel xyxy in the first image.
	PredBox    *[4]float64  `json:"pred_box,omitempty"`
	TrueBoxes  [][4]float64 `json:"true_boxes,omitempty"`
	IoU        *float64     `json:"iou,omitempty"`
	Correct    bool         `json:"correct"`
	ParseError string       `json:"parse_error,omitempty"`
	// Dense: predicted (phrase, box) pairs and how many matched.
	PredPairs []PairJSON `json:"pred_pairs,omitempty"`
	Matched   int        `json:"matched,omitempty"`
	// Attention is the mean attention of the answer's box tokens over the
	// first image's patches (row-major square grid), when the backend
	// returned it.
	Attention []float32 `json:"attention,omitempty"`
}

// PairJSON is a (phrase, pixel box) pair in predictions.jsonl.
type PairJSON struct {
	Phrase string     `json:"phrase"`
	Box    [4]float64 `json:"box"`
}

func boxArr(b dataset.Box) [4]float64 { return [4]float64{b.X1, b.Y1, b.X2, b.Y2} }
func arrBox(a [4]float64) dataset.Box { return dataset.Box{X1: a[0], Y1: a[1], X2: a[2], Y2: a[3]} }

// scorer accumulates one benchmark's metrics.
type scorer interface {
	// add scores one record and returns its result line.
	add(r model.Record, p Prediction) SampleResult
	metrics() map[string]float64
}

func newScorer(bench string) (scorer, error) {
	switch {
	case boxTask(bench):
		return &boxScorer{isREC: bench == BenchREC}, nil
	case strings.HasPrefix(bench, BenchPOPEPrefix):
		return &popeScorer{}, nil
	case bench == BenchCropName:
		return &textScorer{match: metrics.NameMatches, truth: func(r model.Record, ref string) string { return r.Answer.Text }}, nil
	case bench == BenchCropPick || bench == BenchBoxPick:
		return &textScorer{match: metrics.ChoiceMatches, truth: pickTruth}, nil
	case bench == BenchDense:
		return &denseScorer{}, nil
	}
	return nil, fmt.Errorf("no scorer for benchmark %q", bench)
}

// pickTruth is the reference answer text; when a record has none, the
// 1-based candidate number of its structured answer.
func pickTruth(r model.Record, ref string) string {
	if ref == "" && r.Answer.Index != nil {
		return fmt.Sprint(*r.Answer.Index + 1)
	}
	return ref
}

func baseResult(r model.Record, p Prediction) SampleResult {
	prompt, ref := infer.PromptOf(r)
	return SampleResult{
		ID: r.ID, Split: r.Split, Task: r.Task, Direction: r.Direction,
		Images: r.Images, Prompt: prompt, Reference: ref, Output: p.Text,
		Attention: infer.MeanAttention(p.Attention),
	}
}

func imageSize(r model.Record) (w, h int) {
	if len(r.Images) == 0 {
		return 0, 0
	}
	return r.Images[0].Width, r.Images[0].Height
}

type boxScorer struct {
	acc metrics.RECAccumulator
	// rec splits REC's results (selection, precision, expression kind,
	// size); crop localization has no expression and leaves it empty.
	rec   metrics.RECBreakdown
	isREC bool
}

func (s *boxScorer) add(r model.Record, p Prediction) SampleResult {
	res := baseResult(r, p)
	w, h := imageSize(r)
	truth := arrBox(r.Answer.Boxes[0])
	res.TrueBoxes = r.Answer.Boxes[:1]
	var pred *dataset.Box
	if b, err := infer.PixelBox(p.Text, p.Box, w, h); err != nil {
		res.ParseError = err.Error()
	} else {
		pred = &b
		a := boxArr(b)
		res.PredBox = &a
	}
	iou := s.acc.Add(pred, truth)
	if s.isREC {
		var others []dataset.Box
		for _, o := range r.Answer.Others {
			others = append(others, arrBox(o))
		}
		if r.Answer.Others != nil && others == nil {
			others = []dataset.Box{}
		}
		expr := ""
		if len(r.Answer.Phrases) > 0 {
			expr = r.Answer.Phrases[0]
		}
		s.rec.Add(pred, truth, others, expr, r.SizeBin)
	}
	res.IoU = &iou
	res.Correct = iou >= 0.5
	return res
}

func (s *boxScorer) metrics() map[string]float64 {
	m := s.acc.Result().Map()
	for k, v := range s.rec.Map() {
		m[k] = v
	}
	return m
}

type popeScorer struct{ c metrics.POPECounts }

func (s *popeScorer) add(r model.Record, p Prediction) SampleResult {
	res := baseResult(r, p)
	res.Truth = r.Answer.YesNo
	res.Correct = s.c.Add(p.Text, r.Answer.YesNo) == r.Answer.YesNo
	return res
}

func (s *popeScorer) metrics() map[string]float64 { return s.c.Result().Map() }

type textScorer struct {
	acc   metrics.Accuracy
	match func(pred, truth string) bool
	truth func(r model.Record, ref string) string
}

func (s *textScorer) add(r model.Record, p Prediction) SampleResult {
	res := baseResult(r, p)
	res.Truth = s.truth(r, res.Reference)
	res.Correct = s.match(p.Text, res.Truth)
	unparsed := strings.TrimSpace(p.Text) == ""
	if unparsed {
		res.ParseError = "empty answer"
	}
	s.acc.Add(res.Correct, unparsed)
	return res
}

func (s *textScorer) metrics() map[string]float64 { return s.acc.Map() }

type denseScorer struct{ acc metrics.DenseAccumulator }

func (s *denseScorer) add(r model.Record, p Prediction) SampleResult {
	res := baseResult(r, p)
	w, h := imageSize(r)
	truth := make([]metrics.Grounded, 0, len(r.Answer.Boxes))
	for i, b := range r.Answer.Boxes {
		phrase := ""
		if i < len(r.Answer.Phrases) {
			phrase = r.Answer.Phrases[i]
		}
		truth = append(truth, metrics.Grounded{Phrase: phrase, Box: arrBox(b)})
	}
	matched, pred := s.acc.Add(p.Text, truth, w, h)
	res.TrueBoxes = r.Answer.Boxes
	res.Matched = matched
	for _, g := range pred {
		res.PredPairs = append(res.PredPairs, PairJSON{Phrase: g.Phrase, Box: boxArr(g.Box)})
	}
	res.Correct = len(truth) > 0 && matched == len(truth) && matched == len(pred)
	return res
}

func (s *denseScorer) metrics() map[string]float64 { return s.acc.Result().Map() }

// validFor reports why a record cannot be scored on a benchmark ("" when it can).
func validFor(r model.Record, bench string) string {
	w, h := imageSize(r)
	switch {
	case boxTask(bench) || bench == BenchDense:
		if w <= 0 || h <= 0 {
			return "first image has no size"
		}
		if len(r.Answer.Boxes) == 0 {
			return "answer has no box"
		}
	case strings.HasPrefix(bench, BenchPOPEPrefix):
		if r.Answer.YesNo != "yes" && r.Answer.YesNo != "no" {
			return fmt.Sprintf("pope answer %q", r.Answer.YesNo)
		}
	case bench == BenchCropName:
		if strings.TrimSpace(r.Answer.Text) == "" {
			return "answer has no text"
		}
	}
	return ""
}
