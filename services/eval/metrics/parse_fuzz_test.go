package metrics

import (
	"strings"
	"testing"
	"unicode"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// FuzzParseGrounded: whatever a model writes, the grounded description's
// parser returns boxes inside the image and in order, trimmed phrases that
// hold no sentence end, and never more pairs and bad spans than there are
// opening brackets. A phrase followed by a box the codec wrote (what the
// model is trained to write) comes back as one pair: the phrase after its
// last sentence end, and the box within the text's rounding.
func FuzzParseGrounded(f *testing.F) {
	f.Add("a red circle [0.100, 0.200, 0.300, 0.400] left of a blue square [0.5, 0.5, 0.9, 0.9].", "the red circle", 10.0, 20.0, 60.0, 70.0, 200, 100)
	f.Add("unclosed [0.1, 0.2", "x. the square", 0.0, 0.0, 1.0, 1.0, 64, 64)
	f.Add("[[0.1, 0.2, 0.3, 0.4]] ] [", "one; two\nthree", 5.0, 5.0, 5.0, 5.0, 1, 1)
	f.Add("no boxes here", "", 0.0, 0.0, 0.0, 0.0, 4096, 3)
	f.Fuzz(func(t *testing.T, text, phrase string, x1, y1, x2, y2 float64, w, h int) {
		if w < 1 || h < 1 || w > 1<<16 || h > 1<<16 {
			return
		}
		pairs, bad := ParseGrounded(text, w, h)
		if bad < 0 || len(pairs)+bad > strings.Count(text, "[") {
			t.Fatalf("ParseGrounded(%q): %d pairs and %d bad spans from %d '['", text, len(pairs), bad, strings.Count(text, "["))
		}
		for _, p := range pairs {
			checkPair(t, text, p, w, h)
		}

		// A phrase and a box the codec wrote.
		if strings.ContainsAny(phrase, "[]") || !(x1 <= x2 && y1 <= y2) || !finite(x1, y1, x2, y2) {
			return
		}
		n := model.Normalize(dataset.Box{X1: x1, Y1: y1, X2: x2, Y2: y2}, w, h)
		desc := phrase + " " + model.FormatBox(n)
		pairs, bad = ParseGrounded(desc, w, h)
		if bad != 0 || len(pairs) != 1 {
			t.Fatalf("ParseGrounded(%q) = %v, %d bad; want one pair", desc, pairs, bad)
		}
		want := phrase
		if k := strings.LastIndexAny(want, ".;\n"); k >= 0 {
			want = want[k+1:]
		}
		if want = strings.TrimSpace(want); pairs[0].Phrase != want {
			t.Fatalf("ParseGrounded(%q) phrase %q, want %q", desc, pairs[0].Phrase, want)
		}
		back, err := model.ParseBox(model.FormatBox(n))
		if err != nil {
			t.Fatal(err)
		}
		if pairs[0].Box != model.Denormalize(back, w, h) {
			t.Fatalf("ParseGrounded(%q) box %+v, want %+v", desc, pairs[0].Box, model.Denormalize(back, w, h))
		}
	})
}

func finite(vs ...float64) bool {
	for _, v := range vs {
		if v != v || v > 1e308 || v < -1e308 {
			return false
		}
	}
	return true
}

func checkPair(t *testing.T, text string, p Grounded, w, h int) {
	t.Helper()
	b := p.Box
	if !(b.X1 >= 0 && b.X1 <= b.X2 && b.X2 <= float64(w) && b.Y1 >= 0 && b.Y1 <= b.Y2 && b.Y2 <= float64(h)) {
		t.Fatalf("ParseGrounded(%q): box %+v not ordered inside %dx%d", text, b, w, h)
	}
	if strings.ContainsAny(p.Phrase, ".;\n") || strings.TrimSpace(p.Phrase) != p.Phrase {
		t.Fatalf("ParseGrounded(%q): phrase %q", text, p.Phrase)
	}
}

// FuzzChoice: a pick answer names a candidate only as a number ("<n>#",
// leading zeros dropped) or as a one-letter word other than "a" and "i";
// the number, when the answer holds one in ASCII digits, is its first one;
// an answer always matches itself unless it has no words at all, and
// matching does not depend on case.
func FuzzChoice(f *testing.F) {
	for _, s := range []string{
		"2", "image 2", "(2)", "B", "(b)", "it is a dog", "I think 007", "0", "Ⅻ", "٣", "A or B", "",
		"the answer is image 999999999999999999", "picture #3, not 4", "ß", "x",
	} {
		f.Add(s, "Image 3")
	}
	f.Fuzz(func(t *testing.T, pred, ref string) {
		c, ok := Choice(pred)
		ws := Words(pred)
		switch {
		case !ok:
			if c != "" {
				t.Fatalf("Choice(%q) = %q with ok false", pred, c)
			}
		case strings.HasSuffix(c, "#"):
			digits := strings.TrimSuffix(c, "#")
			if strings.HasPrefix(digits, "0") || strings.TrimFunc(digits, func(r rune) bool { return r >= '0' && r <= '9' }) != "" {
				t.Fatalf("Choice(%q) = %q: not a number without leading zeros", pred, c)
			}
		default:
			r := []rune(c)
			if len(r) != 1 || !unicode.IsLetter(r[0]) || c == "a" || c == "i" {
				t.Fatalf("Choice(%q) = %q: not a one-letter candidate", pred, c)
			}
		}
		for _, w := range ws {
			if isASCIIDigits(w) {
				if want := strings.TrimLeft(w, "0") + "#"; c != want {
					t.Fatalf("Choice(%q) = %q, %v; its first number is %q", pred, c, ok, w)
				}
				break
			}
		}
		if self := ChoiceMatches(pred, pred); self != (ok || len(ws) > 0) {
			t.Fatalf("ChoiceMatches(%q, itself) = %v (choice %q %v, %d words)", pred, self, c, ok, len(ws))
		}
		// Words lower-cases, so simple case folding of ASCII letters
		// changes nothing.
		if up := strings.Map(asciiUpper, pred); ChoiceMatches(up, ref) != ChoiceMatches(pred, ref) {
			t.Fatalf("ChoiceMatches(%q, %q) differs from ChoiceMatches(%q, %q)", pred, ref, up, ref)
		}
	})
}

func isASCIIDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func asciiUpper(r rune) rune {
	if r >= 'a' && r <= 'z' {
		return r - 'a' + 'A'
	}
	return r
}

// FuzzNormalizeYesNo: a POPE answer is always "yes" or "no"; what follows
// the first full stop never changes it; a leading "No," or "not" makes it
// "no"; an answer without "no"/"No"/"not" among its space-separated words
// is "yes" (LLaVA's rule).
func FuzzNormalizeYesNo(f *testing.F) {
	for _, s := range []string{"Yes.", "No.", "No, there is not.", "there is no dog", "nothing", "Not sure", "no", "", ".no", "yes, no", "No\tthanks"} {
		f.Add(s, " No. not no")
	}
	f.Fuzz(func(t *testing.T, answer, tail string) {
		got := NormalizeYesNo(answer)
		if got != "yes" && got != "no" {
			t.Fatalf("NormalizeYesNo(%q) = %q", answer, got)
		}
		head := answer
		if i := strings.IndexByte(head, '.'); i >= 0 {
			head = head[:i]
		}
		if g := NormalizeYesNo(head + "." + tail); g != got {
			t.Fatalf("NormalizeYesNo(%q) = %q but with %q after the first full stop %q", answer, got, tail, g)
		}
		if g := NormalizeYesNo("No, " + answer); g != "no" {
			t.Fatalf("NormalizeYesNo(%q) = %q", "No, "+answer, g)
		}
		if g := NormalizeYesNo("not " + answer); g != "no" {
			t.Fatalf("NormalizeYesNo(%q) = %q", "not "+answer, g)
		}
		hasNo := false
		for _, w := range strings.Split(strings.ReplaceAll(head, ",", ""), " ") {
			hasNo = hasNo || w == "no" || w == "No" || w == "not"
		}
		if !hasNo && got != "yes" {
			t.Fatalf("NormalizeYesNo(%q) = %q without a negative word", answer, got)
		}
		var c POPECounts
		if pred := c.Add(answer, "no"); pred != got || c.TN+c.FP != 1 {
			t.Fatalf("POPECounts.Add(%q) = %q, counts %+v", answer, pred, c)
		}
	})
}
