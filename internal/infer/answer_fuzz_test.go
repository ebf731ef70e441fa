package infer

import (
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
)

// FuzzRECPrompt: an expression from a request is either refused with
// ErrBadExpression or cleaned into text that is safe to put in a prompt
// (valid UTF-8, no control characters, no image placeholder, single
// spaces, no trailing full stop), and cleaning is idempotent; the prompt
// built from it has exactly one image placeholder, at its start.
func FuzzRECPrompt(f *testing.F) {
	for _, s := range []string{
		"the red square", "  the   red\tsquare. ", "is it the circle?", "", " ", ".", "?!.",
		"<image>", "a <image> b", "<ima\nge>", "a\x00b", "a\x7fb", "\xff", "tab\tnew\nline\r",
		"über das Fenster", "a\u00a0b", "a\u0085b", "a\u200bb", "end...", "{expr}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		e, err := CleanExpression(expr)
		p, perr := RECPrompt(expr)
		if (err == nil) != (perr == nil) {
			t.Fatalf("CleanExpression(%q) err %v but RECPrompt err %v", expr, err, perr)
		}
		if err != nil {
			if !errors.Is(err, ErrBadExpression) {
				t.Fatalf("CleanExpression(%q): %v does not wrap ErrBadExpression", expr, err)
			}
			if e != "" || p != "" {
				t.Fatalf("CleanExpression(%q) refused (%v) but returned %q / %q", expr, err, e, p)
			}
			return
		}
		switch {
		case e == "":
			t.Fatalf("CleanExpression(%q) = empty, no error", expr)
		case !utf8.ValidString(e):
			t.Fatalf("CleanExpression(%q) = %q: invalid UTF-8", expr, e)
		case strings.Contains(e, "<image>"):
			t.Fatalf("CleanExpression(%q) = %q: holds the image placeholder", expr, e)
		case strings.Contains(e, "  ") || strings.TrimSpace(e) != e:
			t.Fatalf("CleanExpression(%q) = %q: spaces not collapsed", expr, e)
		case strings.ContainsAny(e[len(e)-1:], ".?! "):
			t.Fatalf("CleanExpression(%q) = %q: trailing punctuation kept", expr, e)
		}
		for _, r := range e {
			if unicode.IsControl(r) || (unicode.IsSpace(r) && r != ' ') {
				t.Fatalf("CleanExpression(%q) = %q: holds %U", expr, e, r)
			}
		}
		if again, err := CleanExpression(e); err != nil || again != e {
			t.Fatalf("CleanExpression is not idempotent: %q -> %q -> %q, %v", expr, e, again, err)
		}
		want := ImageTag + strings.Replace(RECInstruction, "{expr}", e, 1)
		if p != want {
			t.Fatalf("RECPrompt(%q) = %q, want %q", expr, p, want)
		}
		if strings.Count(p, "<image>") != 1 || !strings.HasPrefix(p, ImageTag) {
			t.Fatalf("RECPrompt(%q) = %q: want one image placeholder, first", expr, p)
		}
	})
}

// FuzzPixelBox: a model's answer text yields a pixel box exactly when it
// holds a valid box (model.ParseBox), and that box is ordered and inside
// the image; a box the decoder produced wins over the text; ReadBox agrees
// with both.
func FuzzPixelBox(f *testing.F) {
	for _, s := range []string{
		"It is at [0.250, 0.375, 0.750, 0.625].", "[0.000, 0.000, 1.000, 1.000]", "I cannot see it",
		"[0.1, 0.2, 0.3]", "[0.1, 0.2, 1.3, 0.4]", "[0.5, 0.2, 0.1, 0.4]", "[ 1e-3 ,0,1,1 ] and [0, 0, 0, 0]",
		"[NaN, 0, 1, 1]", "]] [[", "[-0, -0, -0, -0]",
	} {
		f.Add(s, 200, 100, false)
		f.Add(s, 1, 4096, true)
	}
	f.Add("[0.1, 0.1, 0.2, 0.2]", 0, 10, false)
	f.Add("[0.1, 0.1, 0.2, 0.2]", 10, -3, true)
	f.Fuzz(func(t *testing.T, text string, w, h int, decodedToo bool) {
		if w > 1<<20 || h > 1<<20 {
			return
		}
		var decoded *model.NormBox
		if decodedToo {
			decoded = &model.NormBox{0.125, 0.25, 0.5, 0.75}
		}
		px, err := PixelBox(text, decoded, w, h)
		if w <= 0 || h <= 0 {
			if err == nil {
				t.Fatalf("PixelBox(%q) of a %dx%d image = %+v, want an error", text, w, h, px)
			}
			return
		}
		n, perr := model.ParseBox(text)
		switch {
		case decoded != nil:
			if err != nil || px != model.Denormalize(*decoded, w, h) {
				t.Fatalf("PixelBox(%q, decoded %v, %d, %d) = %+v, %v: the decoded box must win", text, *decoded, w, h, px, err)
			}
		case (err == nil) != (perr == nil):
			t.Fatalf("PixelBox(%q) err %v, ParseBox err %v", text, err, perr)
		case err != nil:
			if px != (dataset.Box{}) {
				t.Fatalf("PixelBox(%q) failed (%v) but returned %+v", text, err, px)
			}
		default:
			if px != model.Denormalize(n, w, h) {
				t.Fatalf("PixelBox(%q) = %+v, want %+v", text, px, model.Denormalize(n, w, h))
			}
		}
		if err == nil && !(px.X1 >= 0 && px.X1 <= px.X2 && px.X2 <= float64(w) && px.Y1 >= 0 && px.Y1 <= px.Y2 && px.Y2 <= float64(h)) {
			t.Fatalf("PixelBox(%q, %d, %d) = %+v: not an ordered box inside the image", text, w, h, px)
		}

		a, rerr := ReadBox(model.Generation{Text: text, Box: decoded}, w, h)
		if (rerr == nil) != (err == nil) {
			t.Fatalf("ReadBox(%q) err %v, PixelBox err %v", text, rerr, err)
		}
		if rerr == nil && (a.Pixel != px || a.Text != text || (decoded == nil && a.Norm != n) || (decoded != nil && a.Norm != *decoded)) {
			t.Fatalf("ReadBox(%q) = %+v, PixelBox %+v", text, a, px)
		}
	})
}
