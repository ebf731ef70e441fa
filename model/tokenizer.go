package model

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// TokenizerVersion names the token layout below. A tokenizer file with
// another version is refused.
const TokenizerVersion = "tinygrounder-tokenizer/v1"

// Token layout of TokenizerVersion. Reserved ids are fixed, so that the box
// grammar, the chat template and the special tokens mean the same thing in
// every vocabulary; only the word tokens after them depend on the corpus.
//
//	0 <pad>  1 <bos>  2 <eos>  3 <unk>  4 <image>  5 <patch>
//	6 "USER: "  7 " ASSISTANT: "  8 <cap>
//	9 "["  10 " ["  11 ", "  12 "]"  13 "yes"  14 "no"
//	15..115  coarse box numbers "0.00" .. "1.00" (101)
//	116..125 fine digits "0" .. "9" (also every lone digit in text)
//	126..381 byte fallback <0x00> .. <0xFF>
//	382..    words, most frequent first
const (
	tokPad int32 = iota
	tokBOS
	tokEOS
	tokUnk
	tokImage
	tokPatch
	tokUser
	tokAssistant
	tokCap
	tokBoxOpen
	tokBoxOpenSpace
	tokBoxSep
	tokBoxClose
	tokYes
	tokNo
	tokCoarse0
)

const (
	numCoarse = 101
	tokFine0  = tokCoarse0 + numCoarse
	tokByte0  = tokFine0 + 10
	tokWord0  = tokByte0 + 256
)

// DefaultMaxWords caps the word tokens of a vocabulary built for the
// default config: the scene world needs a few hundred, and every word costs
// 2 x Width parameters (embedding and output head).
const DefaultMaxWords = 1024

// imagePlaceholder is the text that marks an image in a human turn.
const imagePlaceholder = "<image>"

// reservedSurface is the text each reserved token decodes to ("" for tokens
// that are not text: padding, sequence markers, patches, <cap>).
var reservedSurface = func() [tokWord0]string {
	var s [tokWord0]string
	s[tokImage] = imagePlaceholder
	s[tokUser] = "USER: "
	s[tokAssistant] = " ASSISTANT: "
	s[tokBoxOpen] = "["
	s[tokBoxOpenSpace] = " ["
	s[tokBoxSep] = ", "
	s[tokBoxClose] = "]"
	s[tokYes] = "yes"
	s[tokNo] = "no"
	for c := range numCoarse {
		s[tokCoarse0+int32(c)] = fmt.Sprintf("%d.%02d", c/100, c%100)
	}
	for d := range 10 {
		s[tokFine0+int32(d)] = string(rune('0' + d))
	}
	return s
}()

// reservedNames are how TokenString shows the non-text reserved tokens.
var reservedNames = map[int32]string{
	tokPad: "<pad>", tokBOS: "<bos>", tokEOS: "<eos>", tokUnk: "<unk>",
	tokPatch: "<patch>", tokCap: "<cap>",
}

// Tokenizer is the tinygrounder word-level tokenizer with the box grammar.
//
// Text is cut into pieces: a word (a run of letters, digits and marks) or a
// single other character, each taking at most one space before it with it
// (" red", " ("), as GPT-2's pieces do; other whitespace stands alone. A
// piece maps to its vocabulary token; a capitalized word whose lowercase form
// is in the vocabulary maps to <cap> and that token; anything else falls back
// to one token per byte. A box written exactly as FormatBox writes it maps to
// the box grammar, 13 tokens: "[" c f ", " c f ", " c f ", " c f "]" where c
// is the coarse token of the number's first two decimals ("0.12") and f the
// fine token of its third ("3"); a box right after a space opens with " ["
// instead. "<image>" maps to the image token. Decode concatenates the tokens'
// text, so Decode(Encode(s)) == s for every string s, valid UTF-8 or not.
//
// A Tokenizer is immutable and safe for concurrent use.
type Tokenizer struct {
	words []string
	ids   map[string]int32 // text of every piece-shaped token -> id
	id    string           // hex sha256 of the canonical JSON
}

// tokenizerFile is the JSON form of a tokenizer. Its canonical encoding
// (encoding/json, no indentation) is what Save writes and what ID hashes.
type tokenizerFile struct {
	Version string   `json:"version"`
	Words   []string `json:"words"`
}

func newTokenizer(words []string) (*Tokenizer, error) {
	t := &Tokenizer{words: words, ids: make(map[string]int32, len(words)+int(tokWord0))}
	for id, s := range reservedSurface {
		if s != "" && id != int(tokImage) && id != int(tokUser) && id != int(tokAssistant) {
			t.ids[s] = int32(id)
		}
	}
	for i, w := range words {
		if w == "" || !utf8.ValidString(w) {
			return nil, fmt.Errorf("tokenizer: word %d %q is empty or not UTF-8", i, w)
		}
		if _, dup := t.ids[w]; dup {
			return nil, fmt.Errorf("tokenizer: word %d %q duplicates another token", i, w)
		}
		t.ids[w] = tokWord0 + int32(i)
	}
	b, err := json.Marshal(tokenizerFile{Version: TokenizerVersion, Words: words})
	if err != nil {
		return nil, fmt.Errorf("encode tokenizer: %w", err)
	}
	sum := sha256.Sum256(b)
	t.id = hex.EncodeToString(sum[:])
	return t, nil
}

// NewTokenizer returns a tokenizer with the given word tokens (ids from
// 382 on, in order). Most callers build one with a VocabBuilder or load one.
func NewTokenizer(words []string) (*Tokenizer, error) {
	return newTokenizer(slices.Clone(words))
}

// ID is the hex sha256 of the tokenizer's canonical JSON, which is exactly
// the bytes Save writes. Shards and checkpoints record it.
func (t *Tokenizer) ID() string { return t.id }

// VocabSize is the number of token ids.
func (t *Tokenizer) VocabSize() int { return int(tokWord0) + len(t.words) }

// Words returns a copy of the word tokens in id order.
func (t *Tokenizer) Words() []string { return slices.Clone(t.words) }

// PadID is the padding token.
func (t *Tokenizer) PadID() int32 { return tokPad }

// BOSID starts every sequence.
func (t *Tokenizer) BOSID() int32 { return tokBOS }

// EOSID ends every assistant answer.
func (t *Tokenizer) EOSID() int32 { return tokEOS }

// UnkID is reserved; Encode never emits it (bytes fall back instead).
func (t *Tokenizer) UnkID() int32 { return tokUnk }

// ImageID is what Encode makes of "<image>"; templates expand it to patches.
func (t *Tokenizer) ImageID() int32 { return tokImage }

// PatchID marks a position that reads one image patch (Config.PatchToken).
func (t *Tokenizer) PatchID() int32 { return tokPatch }

// UserID is the "USER: " role marker.
func (t *Tokenizer) UserID() int32 { return tokUser }

// AssistantID is the " ASSISTANT: " role marker.
func (t *Tokenizer) AssistantID() int32 { return tokAssistant }

// CapID capitalizes the first letter of the next word token.
func (t *Tokenizer) CapID() int32 { return tokCap }

// BoxOpenID is "[".
func (t *Tokenizer) BoxOpenID() int32 { return tokBoxOpen }

// BoxOpenSpaceID is " [", a box right after a space.
func (t *Tokenizer) BoxOpenSpaceID() int32 { return tokBoxOpenSpace }

// BoxSepID is ", " between box numbers.
func (t *Tokenizer) BoxSepID() int32 { return tokBoxSep }

// BoxCloseID is "]".
func (t *Tokenizer) BoxCloseID() int32 { return tokBoxClose }

// YesID is "yes".
func (t *Tokenizer) YesID() int32 { return tokYes }

// NoID is "no".
func (t *Tokenizer) NoID() int32 { return tokNo }

// CoarseID is the token of a box number's integer part and first two
// decimals: c in [0, 100] is "0.00" .. "1.00".
func (t *Tokenizer) CoarseID(c int) int32 { return tokCoarse0 + int32(c) }

// FineID is the token of a box number's third decimal, d in [0, 9]; it is
// also the token of the lone digit d in text.
func (t *Tokenizer) FineID(d int) int32 { return tokFine0 + int32(d) }

// ByteID is the fallback token of byte b.
func (t *Tokenizer) ByteID(b byte) int32 { return tokByte0 + int32(b) }

// TokenString shows one token for debugging: its text, or a bracketed name
// for tokens that are not text (<pad>, <patch>, <0x41>).
func (t *Tokenizer) TokenString(id int32) string {
	switch {
	case id < 0 || int(id) >= t.VocabSize():
		return fmt.Sprintf("<invalid %d>", id)
	case reservedNames[id] != "":
		return reservedNames[id]
	case id >= tokByte0 && id < tokWord0:
		return fmt.Sprintf("<0x%02X>", id-tokByte0)
	case id >= tokWord0:
		return t.words[id-tokWord0]
	}
	return reservedSurface[id]
}

// pieceKind says what the pre-tokenizer found.
type pieceKind uint8

const (
	pieceText  pieceKind = iota // a word or one other character, maybe with a leading space
	pieceByte                   // one byte of invalid UTF-8
	pieceImage                  // "<image>"
	pieceBox                    // a canonical box
)

type piece struct {
	kind  pieceKind
	text  string // pieceText, pieceByte: the exact text
	space bool   // pieceBox: preceded by a space that belongs to it
	box   [4]int // pieceBox: the numbers in thousandths
}

func isWordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r) }

// boxLen is the length of a canonical box: "[0.123, 0.456, 0.789, 0.900]".
const boxLen = 28

// matchBox reports whether s starts with a box written exactly as FormatBox
// writes it for values in [0, 1], returning the values in thousandths.
func matchBox(s string) ([4]int, bool) {
	var v [4]int
	if len(s) < boxLen || s[0] != '[' || s[boxLen-1] != ']' {
		return v, false
	}
	for k := range 4 {
		n := s[1+k*7:]
		if k > 0 && (s[k*7-1] != ',' || s[k*7] != ' ') {
			return v, false
		}
		if n[1] != '.' || (n[0] != '0' && n[0] != '1') {
			return v, false
		}
		x := int(n[0]-'0') * 1000
		for _, c := range []byte{n[2], n[3], n[4]} {
			if c < '0' || c > '9' {
				return v, false
			}
		}
		x += int(n[2]-'0')*100 + int(n[3]-'0')*10 + int(n[4]-'0')
		if x > 1000 {
			return v, false
		}
		v[k] = x
	}
	return v, true
}

// scan cuts s into pieces, calling fn for each in order. The pieces' text
// concatenates back to s.
func scan(s string, fn func(piece)) {
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], imagePlaceholder) {
			fn(piece{kind: pieceImage})
			i += len(imagePlaceholder)
			continue
		}
		if v, ok := matchBox(s[i:]); ok {
			fn(piece{kind: pieceBox, box: v})
			i += boxLen
			continue
		}
		j := i // start of the piece's body, after an attached space
		if s[i] == ' ' && i+1 < len(s) {
			if v, ok := matchBox(s[i+1:]); ok {
				fn(piece{kind: pieceBox, space: true, box: v})
				i += 1 + boxLen
				continue
			}
			r, w := utf8.DecodeRuneInString(s[i+1:])
			if !(r == utf8.RuneError && w == 1) && !unicode.IsSpace(r) && !strings.HasPrefix(s[i+1:], imagePlaceholder) {
				j = i + 1
			}
		}
		r, w := utf8.DecodeRuneInString(s[j:])
		if r == utf8.RuneError && w == 1 {
			fn(piece{kind: pieceByte, text: s[i : i+1]})
			i++
			continue
		}
		k := j + w
		if isWordRune(r) {
			for k < len(s) {
				r2, w2 := utf8.DecodeRuneInString(s[k:])
				if (r2 == utf8.RuneError && w2 == 1) || !isWordRune(r2) {
					break
				}
				k += w2
			}
		}
		fn(piece{kind: pieceText, text: s[i:k]})
		i = k
	}
}

// capitalize upper-cases the first letter of s, after one leading space.
func capitalize(s string) string {
	lead := ""
	if strings.HasPrefix(s, " ") {
		lead, s = " ", s[1:]
	}
	r, w := utf8.DecodeRuneInString(s)
	if !unicode.IsLetter(r) {
		return lead + s
	}
	return lead + string(unicode.ToUpper(r)) + s[w:]
}

// Encode tokenizes text. It never emits <pad>, <bos>, <eos>, <unk>, <patch>
// or the role markers: those come from templates only.
func (t *Tokenizer) Encode(text string) []int32 {
	return t.appendEncode(make([]int32, 0, len(text)/3+4), text)
}

func (t *Tokenizer) appendEncode(dst []int32, text string) []int32 {
	scan(text, func(p piece) {
		switch p.kind {
		case pieceImage:
			dst = append(dst, tokImage)
		case pieceByte:
			dst = append(dst, tokByte0+int32(p.text[0]))
		case pieceBox:
			open := tokBoxOpen
			if p.space {
				open = tokBoxOpenSpace
			}
			dst = append(dst, open)
			for k, v := range p.box {
				if k > 0 {
					dst = append(dst, tokBoxSep)
				}
				dst = append(dst, tokCoarse0+int32(v/10), tokFine0+int32(v%10))
			}
			dst = append(dst, tokBoxClose)
		case pieceText:
			dst = t.appendPiece(dst, p.text)
		}
	})
	return dst
}

func (t *Tokenizer) appendPiece(dst []int32, p string) []int32 {
	if id, ok := t.ids[p]; ok {
		return append(dst, id)
	}
	if lower := strings.ToLower(p); lower != p {
		if id, ok := t.ids[lower]; ok && capitalize(lower) == p {
			return append(dst, tokCap, id)
		}
	}
	for i := range len(p) {
		dst = append(dst, tokByte0+int32(p[i]))
	}
	return dst
}

// Decode turns token ids back into text: the concatenation of the tokens'
// text, with <cap> capitalizing the next token and byte tokens contributing
// their bytes. Tokens that are not text (<pad>, <bos>, <eos>, <unk>,
// <patch>) and ids outside the vocabulary contribute nothing.
func (t *Tokenizer) Decode(ids []int32) string {
	var b []byte
	capNext := false
	for _, id := range ids {
		if id == tokCap {
			capNext = true
			continue
		}
		var s string
		switch {
		case id < 0 || int(id) >= t.VocabSize():
		case id >= tokByte0 && id < tokWord0:
			b = append(b, byte(id-tokByte0))
			capNext = false
			continue
		case id >= tokWord0:
			s = t.words[id-tokWord0]
		default:
			s = reservedSurface[id]
		}
		if capNext {
			s = capitalize(s)
			capNext = false
		}
		b = append(b, s...)
	}
	return string(b)
}

// Save writes the tokenizer's canonical JSON; its sha256 is ID().
func (t *Tokenizer) Save(w io.Writer) error {
	b, err := json.Marshal(tokenizerFile{Version: TokenizerVersion, Words: t.words})
	if err != nil {
		return fmt.Errorf("encode tokenizer: %w", err)
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write tokenizer: %w", err)
	}
	return nil
}

// SaveFile writes the tokenizer to path.
func (t *Tokenizer) SaveFile(path string) error {
	var buf bytes.Buffer
	if err := t.Save(&buf); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write tokenizer: %w", err)
	}
	return nil
}

// LoadTokenizer reads a tokenizer written by Save. Its ID is recomputed from
// the content, so reformatted JSON keeps the same ID.
func LoadTokenizer(r io.Reader) (*Tokenizer, error) {
	var f tokenizerFile
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("decode tokenizer: %w", err)
	}
	if f.Version != TokenizerVersion {
		return nil, fmt.Errorf("decode tokenizer: version %q: want %s", f.Version, TokenizerVersion)
	}
	return newTokenizer(f.Words)
}

// LoadTokenizerFile reads a tokenizer file.
func LoadTokenizerFile(path string) (*Tokenizer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open tokenizer: %w", err)
	}
	defer f.Close()
	return LoadTokenizer(f)
}

// VocabBuilder counts word pieces over a corpus and builds a Tokenizer.
// The result depends only on the multiset of texts added, not their order.
type VocabBuilder struct {
	counts map[string]int64
}

// NewVocabBuilder returns an empty builder.
func NewVocabBuilder() *VocabBuilder { return &VocabBuilder{counts: map[string]int64{}} }

// Add counts the pieces of one text, lowercased. Boxes, "<image>", invalid
// bytes and pieces that are reserved tokens are not counted.
func (b *VocabBuilder) Add(text string) {
	scan(text, func(p piece) {
		if p.kind != pieceText {
			return
		}
		w := strings.ToLower(p.text)
		if !utf8.ValidString(w) {
			return
		}
		b.counts[w]++
	})
}

// AddRecord counts every turn of a record's conversation.
func (b *VocabBuilder) AddRecord(r Record) {
	for _, turn := range r.Conversations {
		b.Add(turn.Value)
	}
}

// Build returns a tokenizer with the maxWords most frequent pieces as word
// tokens, ties broken by byte order of the piece.
func (b *VocabBuilder) Build(maxWords int) (*Tokenizer, error) {
	if maxWords < 0 {
		return nil, fmt.Errorf("build vocabulary: max words %d is negative", maxWords)
	}
	reserved := map[string]bool{}
	for _, s := range reservedSurface {
		reserved[s] = true
	}
	type wc struct {
		w string
		n int64
	}
	all := make([]wc, 0, len(b.counts))
	for w, n := range b.counts {
		if !reserved[w] {
			all = append(all, wc{w, n})
		}
	}
	slices.SortFunc(all, func(x, y wc) int {
		if x.n != y.n {
			if x.n > y.n {
				return -1
			}
			return 1
		}
		return strings.Compare(x.w, y.w)
	})
	if len(all) > maxWords {
		all = all[:maxWords]
	}
	words := make([]string, len(all))
	for i, x := range all {
		words[i] = x.w
	}
	return newTokenizer(words)
}
