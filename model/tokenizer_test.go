package model

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// testCorpus reads like synth output: prompts, boxes, descriptions.
var testCorpus = []string{
	"<image>\nWhere is the red striped circle? Answer with a box.",
	"[0.123, 0.456, 0.789, 0.900]",
	"<image>\nWhat is at [0.100, 0.200, 0.300, 0.400]?",
	"A small blue square.",
	"The image shows a red circle [0.051, 0.102, 0.350, 0.400] left of a blue square [0.500, 0.500, 0.700, 0.750].",
	"<image>\n<image>\nWhere is the second image in the first one?",
	"Is there a green triangle in the image?",
	"Yes",
	"no",
	"Which crop shows the large yellow star? Answer with its index.",
	"2",
	"List every object with its box.",
	"a red circle, a blue square and a green triangle",
	"the circle is above the square",
	"Red and blue.",
}

func testTokenizer(t testing.TB) *Tokenizer {
	t.Helper()
	b := NewVocabBuilder()
	for _, s := range testCorpus {
		b.Add(s)
	}
	tok, err := b.Build(1000)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func roundTripStrings() []string {
	return []string{
		"", " ", "  ", "\n", "\t\t x", "a  b", " leading", "trailing ", "red", "Red", "RED", "rEd",
		"Where is the red circle?", "The Circle And The Square", "zebra Zebra ZEBRA",
		"café naïve Ærø 日本語 🙂 emoji👍🏽 mixed", "İstanbul ß ǆ K Ω", "\u0301combining", "a\u0301",
		"\xff\xfe invalid \xc3 utf8 \xe2\x82", "\x00\x01 control \x7f", "<image>", "<image><image>", " <image>", "<imag", "<<image>>",
		"[0.123, 0.456, 0.789, 0.900]", "at [0.123, 0.456, 0.789, 0.900].", "x[0.000, 0.000, 1.000, 1.000]y",
		"[1.000, 1.000, 1.000, 1.000] [0.000, 0.000, 0.000, 0.000]",
		"[0.1, 0.2, 0.3, 0.4]", "[1.001, 0.2, 0.3, 0.4]", "[0.123,0.456, 0.789, 0.900]", "[0.123, 0.456, 0.789, 0.900",
		"[2.000, 0.000, 0.000, 0.000]", "[-0.000, 0.000, 0.000, 0.000]", "  [0.123, 0.456, 0.789, 0.900]", "[[0.123, 0.456, 0.789, 0.900]]",
		"0.123 3 33 0.12", "yes Yes YES no No", "USER: hi ASSISTANT: there", ", ,, , ", "\uFFFD", "\r\n\v\f",
	}
}

func TestTokenizerRoundTrip(t *testing.T) {
	tok := testTokenizer(t)
	for _, s := range append(roundTripStrings(), testCorpus...) {
		ids := tok.Encode(s)
		if got := tok.Decode(ids); got != s {
			t.Errorf("Decode(Encode(%q)) = %q (ids %v)", s, got, ids)
		}
		for _, id := range ids {
			if id < 0 || int(id) >= tok.VocabSize() || slices.Contains(templateOnly, id) {
				t.Errorf("Encode(%q) emitted %d (%s)", s, id, tok.TokenString(id))
			}
		}
	}
}

// templateOnly are the ids Encode must never emit.
var templateOnly = []int32{tokPad, tokBOS, tokEOS, tokUnk, tokPatch, tokUser, tokAssistant}

func TestTokenizerBoxGrammar(t *testing.T) {
	tok := testTokenizer(t)
	check := func(n NormBox) {
		t.Helper()
		s := FormatBox(n)
		for _, prefix := range []string{"", "at ", "x"} {
			ids := tok.Encode(prefix + s)
			if got := tok.Decode(ids); got != prefix+s {
				t.Fatalf("Decode(Encode(%q)) = %q", prefix+s, got)
			}
			box := ids[len(ids)-boxTokens:]
			wantOpen := tok.BoxOpenID()
			if prefix == "at " {
				wantOpen = tok.BoxOpenSpaceID()
			}
			if box[0] != wantOpen || box[boxTokens-1] != tok.BoxCloseID() {
				t.Fatalf("%q: box tokens %v", prefix+s, box)
			}
			for k := range 4 {
				v := int(math.Round(n[k] * 1000))
				c, f := box[1+3*k], box[2+3*k]
				if c != tok.CoarseID(v/10) || f != tok.FineID(v%10) {
					t.Fatalf("%q number %d: tokens %s %s, want coarse %d fine %d", s, k, tok.TokenString(c), tok.TokenString(f), v/10, v%10)
				}
				if k < 3 && box[3+3*k] != tok.BoxSepID() {
					t.Fatalf("%q: separator %d is %s", s, k, tok.TokenString(box[3+3*k]))
				}
			}
		}
		back, err := ParseBox(tok.Decode(tok.Encode(s)))
		if err != nil && n[0] <= n[2] && n[1] <= n[3] {
			t.Fatalf("ParseBox(%q): %v", s, err)
		}
		for k := range 4 {
			if err == nil && math.Abs(back[k]-n[k]) > 0.0005+1e-12 {
				t.Fatalf("%q parsed to %v", s, back)
			}
		}
	}
	// Every value in every slot, then a random grid including unrounded values.
	for v := 0; v <= 1000; v++ {
		x := float64(v) / 1000
		check(NormBox{x, 0, 1, 1})
		check(NormBox{0, x, 1, 1})
		check(NormBox{0, 0, x, 1})
		check(NormBox{0, 0, 1, x})
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		check(NormBox{r.Float64(), r.Float64(), r.Float64(), r.Float64()})
	}
	// The brief's example: "0.123" is "0.12" then "3".
	ids := tok.Encode("[0.123, 0.456, 0.789, 0.900]")
	var parts []string
	for _, id := range ids {
		parts = append(parts, tok.TokenString(id))
	}
	if got, want := strings.Join(parts, "|"), "[|0.12|3|, |0.45|6|, |0.78|9|, |0.90|0|]"; got != want {
		t.Fatalf("tokens %s, want %s", got, want)
	}
}

func TestTokenizerCapitalsAndByteFallback(t *testing.T) {
	tok := testTokenizer(t)
	red := tok.ids["red"]
	if red < tokWord0 {
		t.Fatalf("\"red\" not a word token")
	}
	if got := tok.Encode("Red"); !slices.Equal(got, []int32{tokCap, red}) {
		t.Errorf("Encode(Red) = %v", got)
	}
	spRed := tok.ids[" red"]
	if got := tok.Encode("a Red"); len(got) != 3 || got[1] != tokCap || got[2] != spRed {
		t.Errorf("Encode(a Red) = %v", got)
	}
	if got, want := tok.Encode("Yes"), []int32{tokCap, tokYes}; !slices.Equal(got, want) {
		t.Errorf("Encode(Yes) = %v, want %v", got, want)
	}
	// Unknown words and non-capitalized mixed case fall back to bytes.
	for _, s := range []string{"zebra", "RED", "rEd", "日本"} {
		got := tok.Encode(s)
		var want []int32
		for i := range len(s) {
			want = append(want, tok.ByteID(s[i]))
		}
		if !slices.Equal(got, want) {
			t.Errorf("Encode(%q) = %v, want bytes %v", s, got, want)
		}
	}
	if got := tok.Encode("<image>\n"); got[0] != tok.ImageID() {
		t.Errorf("Encode(<image>) = %v", got)
	}
	// Lone digits are the fine digit tokens.
	if got := tok.Encode("7"); !slices.Equal(got, []int32{tok.FineID(7)}) {
		t.Errorf("Encode(7) = %v", got)
	}
}

func TestVocabBuilderOrderAndDeterminism(t *testing.T) {
	b := NewVocabBuilder()
	for _, s := range []string{"b", "a", "b", "c", "a", "yes", "Yes", "[", "B"} {
		b.Add(s)
	}
	tok, err := b.Build(10)
	if err != nil {
		t.Fatal(err)
	}
	// b:3 (b, b, B lowercased), a:2, c:1; "yes" and "[" are reserved.
	if got := tok.Words(); !slices.Equal(got, []string{"b", "a", "c"}) {
		t.Fatalf("words %q", got)
	}
	capped, _ := b.Build(2)
	if got := capped.Words(); !slices.Equal(got, []string{"b", "a"}) {
		t.Fatalf("capped words %q", got)
	}
	// Ties break lexically; corpus order does not matter.
	r := rand.New(rand.NewPCG(3, 4))
	var ids []string
	for range 5 {
		corpus := slices.Clone(testCorpus)
		r.Shuffle(len(corpus), func(i, j int) { corpus[i], corpus[j] = corpus[j], corpus[i] })
		vb := NewVocabBuilder()
		for _, s := range corpus {
			vb.Add(s)
		}
		tk, err := vb.Build(1000)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tk.ID())
	}
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("vocabulary depends on corpus order: %v", ids)
		}
	}
	words := testTokenizer(t).Words()
	counts := map[string]int{}
	for _, s := range testCorpus {
		scan(s, func(p piece) {
			if p.kind == pieceText {
				counts[strings.ToLower(p.text)]++
			}
		})
	}
	for i := 1; i < len(words); i++ {
		a, b := words[i-1], words[i]
		if counts[a] < counts[b] || (counts[a] == counts[b] && a >= b) {
			t.Fatalf("words %q (%d) before %q (%d)", a, counts[a], b, counts[b])
		}
	}
}

func TestTokenizerSaveLoad(t *testing.T) {
	tok := testTokenizer(t)
	var buf bytes.Buffer
	if err := tok.Save(&buf); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	if hex.EncodeToString(sum[:]) != tok.ID() {
		t.Fatalf("ID %s is not the sha256 of the saved file", tok.ID())
	}
	back, err := LoadTokenizer(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if back.ID() != tok.ID() || back.VocabSize() != tok.VocabSize() || !slices.Equal(back.Words(), tok.Words()) {
		t.Fatalf("loaded tokenizer differs")
	}
	path := t.TempDir() + "/tok.json"
	if err := tok.SaveFile(path); err != nil {
		t.Fatal(err)
	}
	if f, err := LoadTokenizerFile(path); err != nil || f.ID() != tok.ID() {
		t.Fatalf("LoadTokenizerFile: %v", err)
	}
	for _, bad := range []string{
		`{"version":"other","words":[]}`,
		`{"version":"tinygrounder-tokenizer/v1","words":["a","a"]}`,
		`{"version":"tinygrounder-tokenizer/v1","words":["yes"]}`,
		`{"version":"tinygrounder-tokenizer/v1","words":[""]}`,
		`{"version":"tinygrounder-tokenizer/v1","words":[],"extra":1}`,
		`not json`,
	} {
		if _, err := LoadTokenizer(strings.NewReader(bad)); err == nil {
			t.Errorf("LoadTokenizer(%s) succeeded", bad)
		}
	}
	// Reformatted JSON keeps the ID.
	pretty := `{ "version": "tinygrounder-tokenizer/v1",
	  "words": [` + quoteAll(tok.Words()) + `] }`
	if p, err := LoadTokenizer(strings.NewReader(pretty)); err != nil || p.ID() != tok.ID() {
		t.Fatalf("reformatted file: %v", err)
	}
}

func quoteAll(ws []string) string {
	q := make([]string, len(ws))
	for i, w := range ws {
		q[i] = fmt.Sprintf("%q", w)
	}
	return strings.Join(q, ", ")
}

func TestTokenString(t *testing.T) {
	tok := testTokenizer(t)
	for id, want := range map[int32]string{
		tokPad: "<pad>", tokPatch: "<patch>", tokUser: "USER: ", tok.CoarseID(100): "1.00",
		tok.CoarseID(5): "0.05", tok.FineID(9): "9", tok.ByteID(0x41): "<0x41>", -1: "<invalid -1>",
	} {
		if got := tok.TokenString(id); got != want {
			t.Errorf("TokenString(%d) = %q, want %q", id, got, want)
		}
	}
}

func FuzzTokenizer(f *testing.F) {
	tok := testTokenizer(f)
	for _, s := range append(roundTripStrings(), testCorpus...) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids := tok.Encode(s)
		if got := tok.Decode(ids); got != s {
			t.Fatalf("Decode(Encode(%q)) = %q", s, got)
		}
		for _, id := range ids {
			if id < 0 || int(id) >= tok.VocabSize() || slices.Contains(templateOnly, id) {
				t.Fatalf("Encode(%q) emitted %d", s, id)
			}
		}
		if utf8.ValidString(s) && len(ids) > 2*len(s) {
			t.Fatalf("Encode(%q): %d tokens for %d bytes", s, len(ids), len(s))
		}
	})
}

func FuzzParseBox(f *testing.F) {
	for _, s := range []string{
		"[0.123, 0.456, 0.789, 0.900]", "[0,0,1,1]", "[1, 0, 0, 1]", "x [ 0.5 ,0.5,0.5 , 0.5 ] y", "[NaN, 0, 1, 1]",
		"[1e-3, 2e-1, 0.3, 0.4]", "[0.1, 0.2, 0.3]", "]", "[", "[0.1, 0.2, 0.3, 0.4, 0.5]", "[-0, -0, 0, 0]", "[+1, 1, 1, 1]",
		"[0x1p-2, 0, 1, 1]", "[Inf, 0, 1, 1]",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBox(s)
		if err != nil {
			return
		}
		for k, v := range b {
			if math.IsNaN(v) || v < 0 || v > 1 {
				t.Fatalf("ParseBox(%q) number %d = %v", s, k, v)
			}
		}
		if b[0] > b[2] || b[1] > b[3] {
			t.Fatalf("ParseBox(%q) = %v out of order", s, b)
		}
		// What parses formats canonically and parses back to within rounding.
		text := FormatBox(b)
		back, err := ParseBox(text)
		if err != nil {
			t.Fatalf("ParseBox(FormatBox(%v) = %q): %v", b, text, err)
		}
		for k := range b {
			if math.Abs(back[k]-b[k]) > 0.0005+1e-12 {
				t.Fatalf("%q -> %v -> %q -> %v", s, b, text, back)
			}
		}
		if _, ok := matchBox(text); !ok {
			t.Fatalf("FormatBox(%v) = %q is not in the box grammar", b, text)
		}
	})
}
