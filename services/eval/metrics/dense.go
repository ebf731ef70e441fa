package metrics

import (
	"sort"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// Grounded is one (phrase, box) pair of a grounded description, the box in
// pixel xyxy of the original image.
type Grounded struct {
	Phrase string
	Box    dataset.Box
}

// ParseGrounded extracts (phrase, box) pairs from a grounded description
// written GroundingGPT's way: each box follows the phrase it grounds
// ("a red circle [0.1, 0.2, 0.3, 0.4] left of a blue square [...]").
// The phrase of a box is the text since the previous box or sentence end
// ('.', ';', newline); the matcher looks for the true phrase inside it, so
// connecting words do no harm. Bracketed spans that are not valid boxes are
// counted in bad and skipped.
func ParseGrounded(text string, w, h int) (pairs []Grounded, bad int) {
	start := 0
	for i := 0; i < len(text); {
		open := strings.IndexByte(text[i:], '[')
		if open < 0 {
			break
		}
		open += i
		end := strings.IndexByte(text[open:], ']')
		if end < 0 {
			bad++
			break
		}
		end += open
		n, err := model.ParseBox(text[open : end+1])
		if err != nil {
			bad++
		} else {
			phrase := text[start:open]
			if k := strings.LastIndexAny(phrase, ".;\n"); k >= 0 {
				phrase = phrase[k+1:]
			}
			pairs = append(pairs, Grounded{Phrase: strings.TrimSpace(phrase), Box: model.Denormalize(n, w, h)})
		}
		start, i = end+1, end+1
	}
	return pairs, bad
}

// PhraseMatches reports whether a predicted phrase names a true phrase: the
// true phrase's words appear in the predicted phrase as a contiguous run.
func PhraseMatches(pred, truth string) bool {
	return containsRun(Words(pred), Words(truth))
}

// MatchGrounded matches predicted to true pairs one-to-one, greedily by
// descending IoU: a pair is a candidate when its phrases match and its
// IoU >= thr; the best remaining candidate is taken while both sides are
// unmatched. It returns the number of matches and, per prediction, the index
// of its true pair or -1.
func MatchGrounded(pred, truth []Grounded, thr float64) (matched int, assign []int) {
	type cand struct {
		i, j int
		iou  float64
	}
	var cands []cand
	for i, p := range pred {
		for j, t := range truth {
			if !PhraseMatches(p.Phrase, t.Phrase) {
				continue
			}
			if iou := IoU(p.Box, t.Box); iou >= thr {
				cands = append(cands, cand{i, j, iou})
			}
		}
	}
	// Ties broken by index so the matching is deterministic.
	sort.SliceStable(cands, func(a, b int) bool {
		if cands[a].iou != cands[b].iou {
			return cands[a].iou > cands[b].iou
		}
		if cands[a].i != cands[b].i {
			return cands[a].i < cands[b].i
		}
		return cands[a].j < cands[b].j
	})
	assign = make([]int, len(pred))
	for i := range assign {
		assign[i] = -1
	}
	used := make([]bool, len(truth))
	for _, c := range cands {
		if assign[c.i] >= 0 || used[c.j] {
			continue
		}
		assign[c.i], used[c.j] = c.j, true
		matched++
	}
	return matched, assign
}

// DenseAccumulator micro-averages grounded-description matching over
// samples: precision = matched / predicted pairs, recall = matched / true
// pairs, summed over all samples. The zero value is ready to use.
type DenseAccumulator struct {
	N, Pred, Truth, Matched, BadBoxes int
}

// DenseIoU is the IoU a (phrase, box) pair needs to match.
const DenseIoU = 0.5

// Add scores one description and returns its matches.
func (a *DenseAccumulator) Add(text string, truth []Grounded, w, h int) (matched int, pred []Grounded) {
	pred, bad := ParseGrounded(text, w, h)
	matched, _ = MatchGrounded(pred, truth, DenseIoU)
	a.N++
	a.Pred += len(pred)
	a.Truth += len(truth)
	a.Matched += matched
	a.BadBoxes += bad
	return matched, pred
}

// DenseResult holds grounded-description metrics.
type DenseResult struct {
	N                    int
	Precision, Recall    float64
	F1                   float64
	Pred, Truth, Matched int
	BadBoxes             int
}

// Result returns the metrics so far.
func (a DenseAccumulator) Result() DenseResult {
	r := DenseResult{N: a.N, Pred: a.Pred, Truth: a.Truth, Matched: a.Matched, BadBoxes: a.BadBoxes}
	r.Precision = ratio(a.Matched, a.Pred)
	r.Recall = ratio(a.Matched, a.Truth)
	if r.Precision+r.Recall > 0 {
		r.F1 = 2 * r.Precision * r.Recall / (r.Precision + r.Recall)
	}
	return r
}

// Map returns the result as metric rows, named as they are stored.
func (r DenseResult) Map() map[string]float64 {
	return map[string]float64{
		"n":         float64(r.N),
		"precision": r.Precision,
		"recall":    r.Recall,
		"f1":        r.F1,
		"pairs":     float64(r.Pred),
		"bad_boxes": float64(r.BadBoxes),
	}
}
