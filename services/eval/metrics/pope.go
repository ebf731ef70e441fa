package metrics

import (
	"fmt"
	"strings"
)

// POPE splits: how the negative objects of the probes were sampled.
const (
	POPERandom      = "random"
	POPEPopular     = "popular"
	POPEAdversarial = "adversarial"
)

// POPESplits lists the POPE splits in report order.
var POPESplits = []string{POPERandom, POPEPopular, POPEAdversarial}

// NormalizeYesNo maps a free-text answer to "yes" or "no" the way LLaVA's
// POPE evaluation does: keep the text before the first '.', drop commas,
// split on single spaces, and answer "no" when one of the words is exactly
// "No", "no" or "not"; everything else, an empty answer included, is "yes".
// The rule is deliberately the published one (case-sensitive, space-split)
// so that our numbers are comparable with the papers'.
func NormalizeYesNo(text string) string {
	if i := strings.IndexByte(text, '.'); i >= 0 {
		text = text[:i]
	}
	text = strings.ReplaceAll(text, ",", "")
	for _, w := range strings.Split(text, " ") {
		if w == "No" || w == "no" || w == "not" {
			return "no"
		}
	}
	return "yes"
}

// POPECounts is the confusion matrix of yes/no probes, "yes" (the object is
// present) being the positive class. The zero value is ready to use.
type POPECounts struct {
	TP, FP, TN, FN int
}

// Add scores one probe: answer is the model's raw text, label the ground
// truth "yes" or "no" (anything but "no" counts as yes, as in LLaVA).
// It returns the normalized answer.
func (c *POPECounts) Add(answer, label string) string {
	pred := NormalizeYesNo(answer)
	pos := label != "no"
	switch {
	case pred == "yes" && pos:
		c.TP++
	case pred == "yes" && !pos:
		c.FP++
	case pred == "no" && !pos:
		c.TN++
	default:
		c.FN++
	}
	return pred
}

// POPEResult holds POPE metrics. Ratios whose denominator is 0 are 0
// (LLaVA's script would divide by zero there).
type POPEResult struct {
	N              int
	TP, FP, TN, FN int
	Accuracy       float64 // (TP+TN)/N
	Precision      float64 // TP/(TP+FP)
	Recall         float64 // TP/(TP+FN)
	F1             float64 // harmonic mean of precision and recall
	YesRatio       float64 // predicted yes / N, from the predictions, not the labels
}

// Result computes the metrics from the counts.
func (c POPECounts) Result() POPEResult {
	r := POPEResult{N: c.TP + c.FP + c.TN + c.FN, TP: c.TP, FP: c.FP, TN: c.TN, FN: c.FN}
	r.Accuracy = ratio(c.TP+c.TN, r.N)
	r.Precision = ratio(c.TP, c.TP+c.FP)
	r.Recall = ratio(c.TP, c.TP+c.FN)
	if r.Precision+r.Recall > 0 {
		r.F1 = 2 * r.Precision * r.Recall / (r.Precision + r.Recall)
	}
	r.YesRatio = ratio(c.TP+c.FP, r.N)
	return r
}

// Map returns the result as metric rows, named as they are stored.
func (r POPEResult) Map() map[string]float64 {
	return map[string]float64{
		"n":         float64(r.N),
		"accuracy":  r.Accuracy,
		"precision": r.Precision,
		"recall":    r.Recall,
		"f1":        r.F1,
		"yes_ratio": r.YesRatio,
	}
}

// POPE scores parallel slices of answers and labels.
func POPE(answers, labels []string) (POPEResult, error) {
	if len(answers) != len(labels) {
		return POPEResult{}, fmt.Errorf("score pope: %d answers for %d labels", len(answers), len(labels))
	}
	var c POPECounts
	for i := range answers {
		c.Add(answers[i], labels[i])
	}
	return c.Result(), nil
}

func ratio(num, den int) float64 {
	if den == 0 {
		return 0
	}
	return float64(num) / float64(den)
}
