package model

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

// tinyConfig is a small valid config over tok: 16 px images in 8 px
// patches (4 patches), 2 image slots.
func tinyConfig(tok *Tokenizer) Config {
	c := DefaultConfig(tok.VocabSize())
	c.ImageSize, c.PatchSize, c.MaxSeq, c.MaxImages = 16, 8, 96, 2
	return c
}

func TestEncodeConversationTargets(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	turns := []Turn{
		{From: "human", Value: "<image>\nWhere is the red circle?"},
		{From: "gpt", Value: "[0.051, 0.102, 0.350, 0.400]"},
		{From: "human", Value: "Is there a green triangle?"},
		{From: "gpt", Value: "Yes"},
	}
	s, err := EncodeConversation(tok, cfg, turns)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Tokens) != len(s.Targets) || s.Images != 1 {
		t.Fatalf("lengths %d/%d, images %d", len(s.Tokens), len(s.Targets), s.Images)
	}
	// Rebuild the expected layout by hand.
	var want []int32
	var answer []bool // per position: part of an answer span (tokens + <eos>)
	push := func(ids []int32, inAnswer bool) {
		want = append(want, ids...)
		for range ids {
			answer = append(answer, inAnswer)
		}
	}
	push([]int32{tok.BOSID(), tok.UserID()}, false)
	push(slices.Repeat([]int32{tok.PatchID()}, cfg.Patches()), false)
	push(tok.Encode("\nWhere is the red circle?"), false)
	push([]int32{tok.AssistantID()}, false)
	push(tok.Encode(turns[1].Value), true)
	push([]int32{tok.EOSID()}, true)
	push([]int32{tok.UserID()}, false)
	push(tok.Encode(turns[2].Value), false)
	push([]int32{tok.AssistantID()}, false)
	push(tok.Encode(turns[3].Value), true)
	push([]int32{tok.EOSID()}, true)
	if !slices.Equal(s.Tokens, want) {
		t.Fatalf("tokens\n%v\nwant\n%v", s.Tokens, want)
	}
	learned := 0
	for p := range s.Tokens {
		wantT := int32(-1)
		if p+1 < len(want) && answer[p+1] {
			wantT = want[p+1]
			learned++
		}
		if s.Targets[p] != wantT {
			t.Fatalf("target[%d] = %d, want %d (token %s)", p, s.Targets[p], wantT, tok.TokenString(s.Tokens[p]))
		}
	}
	if wantN := len(tok.Encode(turns[1].Value)) + len(tok.Encode(turns[3].Value)) + 2; learned != wantN {
		t.Fatalf("%d learned positions, want %d", learned, wantN)
	}
	// The learned targets decode to the answers.
	var got []int32
	for _, x := range s.Targets {
		if x >= 0 && x != tok.EOSID() {
			got = append(got, x)
		}
	}
	if d := tok.Decode(got); d != turns[1].Value+turns[3].Value {
		t.Fatalf("targets decode to %q", d)
	}
	want2 := "USER: \nWhere is the red circle? ASSISTANT: [0.051, 0.102, 0.350, 0.400]USER: Is there a green triangle? ASSISTANT: Yes"
	if d := tok.Decode(s.Tokens); d != want2 {
		t.Fatalf("decoded sequence %q, want %q", d, want2)
	}
}

func TestEncodePromptIsTrainingPrefix(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	turns := []Turn{
		{From: "human", Value: "<image>\nWhat is at [0.100, 0.200, 0.300, 0.400]?"},
		{From: "gpt", Value: "A small blue square."},
		{From: "human", Value: "<image>\nWhere is the second image in the first one?"},
		{From: "gpt", Value: "[0.500, 0.500, 0.700, 0.750]"},
	}
	full, err := EncodeConversation(tok, cfg, turns)
	if err != nil {
		t.Fatal(err)
	}
	for _, history := range [][]Turn{nil, turns[:2]} {
		prompt, n, err := EncodePrompt(tok, cfg, history, turns[len(history)].Value)
		if err != nil {
			t.Fatal(err)
		}
		if n != len(history)/2+1 || prompt[len(prompt)-1] != tok.AssistantID() || !slices.Equal(full.Tokens[:len(prompt)], prompt) {
			t.Fatalf("prompt after %d turns (%d images) is not the training prefix", len(history), n)
		}
		// The training target at the prompt's end is the answer's first token.
		if got, want := full.Targets[len(prompt)-1], tok.Encode(turns[len(history)+1].Value)[0]; got != want {
			t.Fatalf("target after the prompt = %d, want %d", got, want)
		}
	}
}

func TestEncodeConversationErrors(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	h := func(v string) Turn { return Turn{From: "human", Value: v} }
	g := func(v string) Turn { return Turn{From: "gpt", Value: v} }
	cases := map[string]struct {
		turns []Turn
		is    error
	}{
		"no turns":        {nil, nil},
		"odd":             {[]Turn{h("hi")}, nil},
		"roles swapped":   {[]Turn{g("hi"), h("there")}, nil},
		"image in answer": {[]Turn{h("hi"), g("<image>")}, nil},
		"too many images": {[]Turn{h("<image><image><image>"), g("no")}, ErrTooManyImages},
		"too long":        {[]Turn{h(strings.Repeat("zebra ", 20)), g("no")}, ErrTooLong},
	}
	for name, c := range cases {
		_, err := EncodeConversation(tok, cfg, c.turns)
		if err == nil || (c.is != nil && !errors.Is(err, c.is)) {
			t.Errorf("%s: err %v, want %v", name, err, c.is)
		}
	}
	rec := Record{ID: "r1", Images: []ImageRef{{Kind: "image", Path: "a.png"}}, Conversations: []Turn{h("no image here"), g("yes")}}
	if _, err := EncodeRecord(tok, cfg, rec); err == nil || !strings.Contains(err.Error(), "placeholders") {
		t.Errorf("EncodeRecord with a missing placeholder: %v", err)
	}
	rec.Conversations[0].Value = "<image> here"
	if _, err := EncodeRecord(tok, cfg, rec); err != nil {
		t.Errorf("EncodeRecord: %v", err)
	}
	if _, _, err := EncodePrompt(tok, cfg, nil, strings.Repeat("zebra ", 20)); !errors.Is(err, ErrTooLong) {
		t.Errorf("EncodePrompt too long: %v", err)
	}
	if _, _, err := EncodePrompt(tok, cfg, []Turn{h("x")}, "y"); err == nil {
		t.Errorf("EncodePrompt with an odd history succeeded")
	}
}

func TestParseBoxNegativeZero(t *testing.T) {
	b, err := ParseBox("[-0, -0.000, 0.5, 0.5]")
	if err != nil {
		t.Fatal(err)
	}
	if math.Signbit(b[0]) || math.Signbit(b[1]) {
		t.Fatalf("ParseBox kept -0: %v", b)
	}
	if got := FormatBox(NormBox{math.Copysign(0, -1), -0.0001, 0.5, 0.5}); got != "[0.000, 0.000, 0.500, 0.500]" {
		t.Fatalf("FormatBox = %q", got)
	}
}

// TestImagesAfterText: the flag moves a turn's patches, in placeholder
// order, after its text, for training sequences and generation prompts
// alike; targets stay on the answer.
func TestImagesAfterText(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	cfg.ImagesAfterText = true
	turns := []Turn{
		{From: "human", Value: "<image>\n<image>\nWhere is the crop?"},
		{From: "gpt", Value: "[0.051, 0.102, 0.350, 0.400]"},
	}
	s, err := EncodeConversation(tok, cfg, turns)
	if err != nil {
		t.Fatal(err)
	}
	var want []int32
	want = append(want, tok.BOSID(), tok.UserID())
	want = append(want, tok.Encode("\n\nWhere is the crop?")...)
	want = append(want, slices.Repeat([]int32{tok.PatchID()}, 2*cfg.Patches())...)
	want = append(want, tok.AssistantID())
	prompt := len(want)
	want = append(want, tok.Encode(turns[1].Value)...)
	want = append(want, tok.EOSID())
	if !slices.Equal(s.Tokens, want) || s.Images != 2 {
		t.Fatalf("tokens\n%v\nwant\n%v (images %d)", s.Tokens, want, s.Images)
	}
	for p, tg := range s.Targets {
		if (p >= prompt-1 && p < len(want)-1) != (tg >= 0) {
			t.Fatalf("target[%d] = %d", p, tg)
		}
	}
	got, n, err := EncodePrompt(tok, cfg, nil, turns[0].Value)
	if err != nil || n != 2 || !slices.Equal(got, want[:prompt]) {
		t.Fatalf("prompt %v (%d images, %v), want %v", got, n, err, want[:prompt])
	}
	cfg.ImagesAfterText = false
	first, _, _ := EncodePrompt(tok, cfg, nil, turns[0].Value)
	if first[2] != tok.PatchID() || slices.Equal(first, got) {
		t.Fatalf("image-first layout changed: %v", first)
	}
}
