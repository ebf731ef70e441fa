package model

import (
	"errors"
	"fmt"
)

// The chat template (LLaVA v1 style, with single-token role markers):
//
//	<bos>USER: {human 1} ASSISTANT: {answer 1}<eos>USER: {human 2} ASSISTANT: {answer 2}<eos>...
//
// "USER: " and " ASSISTANT: " are one token each and carry their spaces, so
// human turns and answers are encoded on their own, without a leading space.
// Every "<image>" in a human turn becomes Patches() <patch> tokens, which the
// backend replaces by the projected features of the next image. Answers
// never contain images.

// ErrTooLong is returned (wrapped) when a sequence does not fit MaxSeq. The
// shard builder drops such records and counts them rather than cut answers.
var ErrTooLong = errors.New("sequence longer than max_seq")

// ErrTooManyImages is returned (wrapped) when a sequence reads more images
// than MaxImages; the shard builder drops and counts such records too.
var ErrTooManyImages = errors.New("more images than max_images")

// Sample is one tokenized training sequence, unpadded.
type Sample struct {
	// Tokens is the whole conversation in the chat template.
	Tokens []int32
	// Targets[p] is Tokens[p+1] where that token belongs to an answer (the
	// answer's tokens and its <eos>), and -1 everywhere else.
	Targets []int32
	// Images is the number of images the sequence reads.
	Images int
}

// appendHuman appends "USER: {text} ASSISTANT: " with images expanded and
// returns the number of images it read. With cfg.ImagesAfterText the
// turn's images (in their order) follow its text instead of standing where
// their placeholders are.
func appendHuman(dst []int32, tok *Tokenizer, cfg Config, text string) ([]int32, int) {
	dst = append(dst, tokUser)
	patches := cfg.Patches()
	n := 0
	for _, id := range tok.Encode(text) {
		if id == tokImage {
			if !cfg.ImagesAfterText {
				for range patches {
					dst = append(dst, tokPatch)
				}
			}
			n++
			continue
		}
		dst = append(dst, id)
	}
	if cfg.ImagesAfterText {
		for range n * patches {
			dst = append(dst, tokPatch)
		}
	}
	return append(dst, tokAssistant), n
}

// encodeTurns lays out human/gpt pairs in the chat template after <bos>,
// marking which positions hold answer tokens (and their <eos>).
func encodeTurns(tok *Tokenizer, cfg Config, turns []Turn) (tokens []int32, loss []bool, images int, err error) {
	if len(turns)%2 != 0 {
		return nil, nil, 0, fmt.Errorf("%d turns: want human/gpt pairs", len(turns))
	}
	tokens = []int32{tokBOS}
	for i := 0; i < len(turns); i += 2 {
		h, g := turns[i], turns[i+1]
		if h.From != "human" || g.From != "gpt" {
			return nil, nil, 0, fmt.Errorf("turns %d, %d are %q, %q: want human, gpt", i, i+1, h.From, g.From)
		}
		var n int
		tokens, n = appendHuman(tokens, tok, cfg, h.Value)
		images += n
		answer := tok.Encode(g.Value)
		for _, id := range answer {
			if id == tokImage {
				return nil, nil, 0, fmt.Errorf("answer %d contains %s", i/2+1, imagePlaceholder)
			}
		}
		loss = append(loss, make([]bool, len(tokens)-len(loss))...)
		tokens = append(append(tokens, answer...), tokEOS)
		for range len(answer) + 1 {
			loss = append(loss, true)
		}
	}
	loss = append(loss, make([]bool, len(tokens)-len(loss))...)
	return tokens, loss, images, nil
}

// EncodeConversation tokenizes a conversation (alternating human and gpt
// turns, starting with human and ending with gpt) in the chat template.
// It fails, wrapping ErrTooLong, when the sequence is longer than
// cfg.MaxSeq, and wrapping ErrTooManyImages when it reads more than
// cfg.MaxImages images.
func EncodeConversation(tok *Tokenizer, cfg Config, turns []Turn) (Sample, error) {
	if len(turns) == 0 {
		return Sample{}, fmt.Errorf("encode conversation: no turns")
	}
	tokens, loss, images, err := encodeTurns(tok, cfg, turns)
	if err != nil {
		return Sample{}, fmt.Errorf("encode conversation: %w", err)
	}
	if images > cfg.MaxImages {
		return Sample{}, fmt.Errorf("encode conversation: %d images: %w (%d)", images, ErrTooManyImages, cfg.MaxImages)
	}
	if len(tokens) > cfg.MaxSeq {
		return Sample{}, fmt.Errorf("encode conversation: %d tokens: %w (%d)", len(tokens), ErrTooLong, cfg.MaxSeq)
	}
	targets := make([]int32, len(tokens))
	for p := range tokens {
		targets[p] = -1
		if p+1 < len(tokens) && loss[p+1] {
			targets[p] = tokens[p+1]
		}
	}
	return Sample{Tokens: tokens, Targets: targets, Images: images}, nil
}

// EncodeRecord tokenizes a record's conversation and checks that its
// "<image>" placeholders match its images.
func EncodeRecord(tok *Tokenizer, cfg Config, r Record) (Sample, error) {
	s, err := EncodeConversation(tok, cfg, r.Conversations)
	if err != nil {
		return Sample{}, fmt.Errorf("record %s: %w", r.ID, err)
	}
	if s.Images != len(r.Images) {
		return Sample{}, fmt.Errorf("record %s: %d %s placeholders for %d images", r.ID, s.Images, imagePlaceholder, len(r.Images))
	}
	return s, nil
}

// EncodePrompt tokenizes a generation prompt: the completed turns of
// history (human/gpt pairs, possibly none), then "USER: {human}
// ASSISTANT: ", ready for the model to continue with the answer. It returns
// the tokens and the number of images they read.
func EncodePrompt(tok *Tokenizer, cfg Config, history []Turn, human string) ([]int32, int, error) {
	tokens, _, images, err := encodeTurns(tok, cfg, history)
	if err != nil {
		return nil, 0, fmt.Errorf("encode prompt history: %w", err)
	}
	tokens, n := appendHuman(tokens, tok, cfg, human)
	images += n
	if images > cfg.MaxImages {
		return nil, 0, fmt.Errorf("encode prompt: %d images: %w (%d)", images, ErrTooManyImages, cfg.MaxImages)
	}
	if len(tokens) > cfg.MaxSeq {
		return nil, 0, fmt.Errorf("encode prompt: %d tokens: %w (%d)", len(tokens), ErrTooLong, cfg.MaxSeq)
	}
	return tokens, images, nil
}
