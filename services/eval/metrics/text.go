package metrics

import (
	"strings"
	"unicode"
)

// Words lower-cases s and splits it into words of letters and digits; all
// punctuation separates words. It is the normal form every text comparison
// here uses.
func Words(s string) []string {
	return strings.FieldsFunc(strings.ToLower(s), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
}

// containsRun reports whether needle occurs in hay as a contiguous run of
// words. An empty needle never matches: a blank truth must not score.
func containsRun(hay, needle []string) bool {
	if len(needle) == 0 || len(needle) > len(hay) {
		return false
	}
outer:
	for i := 0; i+len(needle) <= len(hay); i++ {
		for j, w := range needle {
			if hay[i+j] != w {
				continue outer
			}
		}
		return true
	}
	return false
}

// NameMatches scores crop recognition (I->T): the prediction is right when
// the true name, with all its attributes in order ("small red striped
// circle"), appears in it as a run of words; articles and surrounding words
// ("it is a ...") do not matter, a missing or extra attribute inside the
// name does.
func NameMatches(pred, truth string) bool {
	return containsRun(Words(pred), Words(truth))
}

// Choice extracts the candidate a pick answer names: the first number
// ("2", "image 2", "(2)") or, failing that, the first one-letter word
// ("B", "(b)"). ok is false when the text names none.
func Choice(text string) (choice string, ok bool) {
	ws := Words(text)
	for _, w := range ws {
		// Digits of any length, not strconv.Atoi: a number past int64 is
		// still the answer's first number.
		if w != "" && strings.TrimLeft(w, "0123456789") == "" {
			return strings.TrimLeft(w, "0") + "#", true
		}
	}
	for _, w := range ws {
		if len([]rune(w)) == 1 && unicode.IsLetter([]rune(w)[0]) && w != "a" && w != "i" {
			return w, true
		}
	}
	return "", false
}

// ChoiceMatches scores pick tasks (T->I, C->I): the prediction names the
// same candidate as the reference answer, in whatever numbering the
// reference uses. When the reference names no candidate, the normalized
// texts must be equal.
func ChoiceMatches(pred, reference string) bool {
	want, ok := Choice(reference)
	if !ok {
		p, r := Words(pred), Words(reference)
		return len(r) > 0 && strings.Join(p, " ") == strings.Join(r, " ")
	}
	got, ok := Choice(pred)
	return ok && got == want
}

// Accuracy counts right and wrong answers. The zero value is ready to use.
type Accuracy struct {
	N, Correct, Unparsed int
}

// Add records one answer; unparsed marks an answer with nothing to score
// (it is also wrong).
func (a *Accuracy) Add(correct, unparsed bool) {
	a.N++
	if correct {
		a.Correct++
	}
	if unparsed {
		a.Unparsed++
	}
}

// Value is the fraction answered right (0 for no answers).
func (a Accuracy) Value() float64 { return ratio(a.Correct, a.N) }

// Map returns the accuracy as metric rows, named as they are stored.
func (a Accuracy) Map() map[string]float64 {
	return map[string]float64{
		"n":          float64(a.N),
		"accuracy":   a.Value(),
		"parse_fail": ratio(a.Unparsed, a.N),
	}
}
