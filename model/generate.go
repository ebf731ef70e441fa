package model

import (
	"context"
	"errors"
	"fmt"
	"image"
	"math"
	"slices"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/groundmesh/groundmesh/plugins/compute"
)

// Prompt is one generation request.
type Prompt struct {
	// Text is the human turn, with one "<image>" placeholder per image.
	Text string
	// Images are the images the placeholders read, in order (placeholders
	// in History come first).
	Images []image.Image
	// History holds earlier completed turns (human/gpt pairs) of a
	// multi-turn conversation; usually empty.
	History []Turn
}

// GenerateOptions control decoding.
type GenerateOptions struct {
	// MaxNew bounds the tokens generated per prompt, <eos> included; 0
	// means 128. Constrained decoding always runs its grammar to the end.
	MaxNew int
	// Constraint restricts the output; the zero value is free text.
	Constraint Constraint
	// WantAttention asks the backend for each generated token's attention
	// over the first image's patches.
	WantAttention bool
	// BatchSize splits prompts into backend batches of at most this many;
	// 0 sends them all at once.
	BatchSize int
	// BoxFromHead, under ConstraintBox, writes the box the backend's
	// grounding head returns with Prefill (compute.ForwardResult.HeadBoxes,
	// Config.Grounder) instead of the language model's own numbers; the
	// grammar still writes the box's text. Prompts without a head box
	// decode as usual. Use it where the text before the image names the
	// referent (REC), which is what the head is trained on.
	BoxFromHead bool
	// YesNoFromHead, under ConstraintYesNo, answers "yes" where the
	// grounding head's existence probability (HeadBox.Exists) is at least
	// one half and "no" otherwise, instead of the language model's choice
	// between the two; prompts without a head box decode as usual. Use it
	// where the question asks whether the thing the text before the image
	// names is in it (POPE), which is what the existence term is trained
	// on.
	YesNoFromHead bool
	// NameFromHead, under ConstraintNone, answers with the name head's
	// words (HeadBox.Name, Config.GrounderNameSlots) instead of the
	// language model's free text; prompts without a name decode as usual.
	// Use it where the question asks for the name of the object at the
	// centre of the image (crop naming), which is what the name head is
	// trained on.
	NameFromHead bool
	// HostLoop decodes on the host over Prefill and Decode (DecodeLoop)
	// even where the backend declares compute.FeatureGenerate and would
	// run the same loop in one call: the reference the backend's
	// Generate is checked against.
	HostLoop bool
}

// Finish reasons of a Generation.
const (
	FinishEOS    = "eos"    // the model (or the grammar) ended the answer
	FinishLength = "length" // MaxNew or MaxSeq ran out
)

// Generation is the answer to one Prompt.
type Generation struct {
	// Text is the decoded answer, without <eos>.
	Text string
	// Tokens are the generated ids, without <eos>.
	Tokens []int32
	// Box is the first box of Text when one parses (always, under
	// ConstraintBox).
	Box *NormBox
	// Attention[k], when requested and supported, is the attention over
	// the first image's patches of the position that predicted Tokens[k].
	Attention [][]float32
	// Finish is FinishEOS or FinishLength.
	Finish string
	// Head is the grounding head's answer (its box, score and existence
	// probability) where the model has one and the prompt an image.
	Head *compute.HeadBox
}

type constraintKind uint8

const (
	kindNone constraintKind = iota
	kindBox
	kindYesNo
	kindDigits
)

// Constraint restricts decoding to a small grammar, by masking the logits
// of every token the grammar does not allow next.
type Constraint struct {
	kind   constraintKind
	lo, hi int // digits
}

// The constraints.
var (
	// ConstraintNone is free text: any token but those only templates
	// write (<pad>, <bos>, <unk>, <image>, <patch>, role markers).
	ConstraintNone = Constraint{}
	// ConstraintBox forces exactly one box, "[" c f ", " c f ", " c f ", "
	// c f "]" then <eos>, with x1 < x2 and y1 < y2 and no number above
	// 1.000, so that the text always parses with ParseBox and equals
	// FormatBox of the parsed box.
	ConstraintBox = Constraint{kind: kindBox}
	// ConstraintYesNo forces "yes" or "no" (optionally capitalized) then <eos>.
	ConstraintYesNo = Constraint{kind: kindYesNo}
)

// ConstraintChoice forces one digit 0 .. n-1 then <eos>: the 0-based index
// of a candidate, as Answer.Index counts (n in 1..10). Use ConstraintDigits
// for another numbering.
func ConstraintChoice(n int) Constraint { return Constraint{kind: kindDigits, lo: 0, hi: n - 1} }

// ConstraintDigits forces one digit in lo .. hi then <eos>.
func ConstraintDigits(lo, hi int) Constraint { return Constraint{kind: kindDigits, lo: lo, hi: hi} }

func (c Constraint) String() string {
	switch c.kind {
	case kindBox:
		return "box"
	case kindYesNo:
		return "yes/no"
	case kindDigits:
		return fmt.Sprintf("digits %d..%d", c.lo, c.hi)
	}
	return "none"
}

func (c Constraint) validate() error {
	if c.kind == kindDigits && (c.lo < 0 || c.hi > 9 || c.lo > c.hi) {
		return fmt.Errorf("constraint %s: want 0 <= lo <= hi <= 9", c)
	}
	return nil
}

// boxTokens is how many tokens a box takes: [ (c f ,)x3 c f ].
const boxTokens = 13

// picks is the most tokens the grammar picks (its <eos> is implied).
func (c Constraint) picks() int {
	switch c.kind {
	case kindBox:
		return boxTokens
	case kindYesNo:
		return 2
	case kindDigits:
		return 1
	}
	return 0
}

// grammar is one sequence's decoding state under a constraint.
type grammar struct {
	c     Constraint
	k     int    // tokens picked so far
	vals  [4]int // box numbers so far, thousandths
	cur   int    // coarse part of the number being written
	capd  bool   // yes/no: <cap> picked
	ended bool   // nothing but <eos> may follow
	// force, when set, are the box's numbers in thousandths
	// (GenerateOptions.BoxFromHead).
	force *[4]int
	// yes, when set, is the forced yes/no answer
	// (GenerateOptions.YesNoFromHead).
	yes *bool
	// name, when set, is the forced free-text answer
	// (GenerateOptions.NameFromHead); <eos> follows its last token.
	name []int32
}

// forcedBox turns a head box into the thousandths the box grammar can
// write: x1, y1 at most 0.999 and x2, y2 at least one thousandth past them.
func forcedBox(b [4]float32) *[4]int {
	var v [4]int
	for k, x := range b {
		v[k] = int(math.Round(float64(min(max(x, 0), 1)) * 1000))
	}
	for a := range 2 {
		v[a] = min(v[a], 999)
		v[a+2] = max(v[a+2], v[a]+1)
	}
	return &v
}

// banned are the tokens free text never picks.
var banned = [...]int32{tokPad, tokBOS, tokUnk, tokImage, tokPatch, tokUser, tokAssistant}

// pick chooses the allowed token with the highest logit (NaN counts as
// -Inf; ties go to the lower id) and advances the grammar.
func (g *grammar) pick(logits []float32) int32 {
	switch g.c.kind {
	case kindNone:
		if g.name != nil {
			if g.k >= len(g.name) {
				return tokEOS
			}
			id := g.name[g.k]
			g.k++
			g.ended = g.k == len(g.name)
			return id
		}
		return argmaxRange(logits, 0, int32(len(logits)), banned[:]...)
	case kindYesNo:
		var id int32
		switch {
		case g.yes != nil && *g.yes:
			id = tokYes
		case g.yes != nil:
			id = tokNo
		case g.capd:
			id = argmaxOf(logits, tokYes, tokNo)
		default:
			id = argmaxOf(logits, tokYes, tokNo, tokCap)
		}
		g.k++
		if id == tokCap {
			g.capd = true
		} else {
			g.ended = true
		}
		return id
	case kindDigits:
		g.k++
		g.ended = true
		return argmaxRange(logits, tokFine0+int32(g.c.lo), tokFine0+int32(g.c.hi)+1)
	}
	// Box: position k in "[ c f , c f , c f , c f ]".
	k := g.k
	g.k++
	switch {
	case k == 0:
		return tokBoxOpen
	case k == boxTokens-1:
		g.ended = true
		return tokBoxClose
	case k%3 == 0:
		return tokBoxSep
	}
	v := (k - 1) / 3
	// Boxes have positive area: x2 > x1 and y2 > y1, so x1 and y1 stop at
	// 0.999 and x2, y2 start one thousandth past them. (A zero-area box
	// parses but can never be right; an under-trained model otherwise
	// collapses to one.)
	lower := -1
	if v >= 2 {
		lower = g.vals[v-2] + 1
	}
	if g.force != nil {
		if k%3 == 1 {
			g.cur = g.force[v] / 10
			return tokCoarse0 + int32(g.cur)
		}
		g.vals[v] = g.force[v]
		return tokFine0 + int32(g.force[v]%10)
	}
	if k%3 == 1 { // coarse
		lo, hi := int32(0), int32(numCoarse)
		if lower >= 0 {
			lo = int32(lower / 10)
		} else {
			hi = numCoarse - 1 // no 1.00 for x1, y1
		}
		id := argmaxRange(logits, tokCoarse0+lo, tokCoarse0+hi)
		g.cur = int(id - tokCoarse0)
		return id
	}
	lo, hi := 0, 9 // fine
	if g.cur == 100 {
		hi = 0
	}
	if lower >= 0 && g.cur == lower/10 {
		lo = lower % 10
	}
	id := argmaxRange(logits, tokFine0+int32(lo), tokFine0+int32(hi)+1)
	g.vals[v] = g.cur*10 + int(id-tokFine0)
	return id
}

func better(x, best float32) bool { return !math.IsNaN(float64(x)) && x > best }

// argmaxRange returns the id in [from, to) with the highest logit, skipping
// except; NaN and -Inf logits lose to everything, and then the first
// allowed id wins.
func argmaxRange(logits []float32, from, to int32, except ...int32) int32 {
	best, bestV := int32(-1), float32(math.Inf(-1))
outer:
	for id := from; id < to; id++ {
		for _, e := range except {
			if id == e {
				continue outer
			}
		}
		if best < 0 || better(logits[id], bestV) {
			best = id
			if !math.IsNaN(float64(logits[id])) {
				bestV = logits[id]
			}
		}
	}
	return best
}

func argmaxOf(logits []float32, ids ...int32) int32 {
	best, bestV := ids[0], logits[ids[0]]
	if math.IsNaN(float64(bestV)) {
		bestV = float32(math.Inf(-1))
	}
	for _, id := range ids[1:] {
		if better(logits[id], bestV) {
			best, bestV = id, logits[id]
		}
	}
	return best
}

// Generator decodes with a loaded model on a compute backend: it builds the
// prompts (template, images), runs Prefill once and Decode step by step on
// the KV cache, and picks tokens greedily under an optional constraint.
type Generator struct {
	backend compute.Backend
	session string
	tok     *Tokenizer
	cfg     Config

	mu        sync.Mutex
	described bool // inBackend is known
	inBackend bool // the backend declares compute.FeatureGenerate
}

// NewGenerator checks that tok and cfg agree and returns a Generator for a
// loaded session.
func NewGenerator(backend compute.Backend, session string, tok *Tokenizer, cfg Config) (*Generator, error) {
	switch {
	case backend == nil:
		return nil, errors.New("new generator: no backend")
	case session == "":
		return nil, errors.New("new generator: no session")
	case tok == nil:
		return nil, errors.New("new generator: no tokenizer")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new generator: %w", err)
	}
	if tok.VocabSize() != cfg.VocabSize || cfg.PatchToken != tokPatch || cfg.PadToken != tokPad {
		return nil, fmt.Errorf("new generator: tokenizer (vocab %d, patch %d, pad %d) does not match config (vocab %d, patch %d, pad %d)",
			tok.VocabSize(), tokPatch, tokPad, cfg.VocabSize, cfg.PatchToken, cfg.PadToken)
	}
	return &Generator{backend: backend, session: session, tok: tok, cfg: cfg}, nil
}

// Generate answers prompts greedily, in batches. Within a batch every
// sequence advances one position per step (finished ones are fed <pad>),
// so the free-text budget is bounded by the longest prompt of the batch:
// no position ever reaches MaxSeq.
func (g *Generator) Generate(ctx context.Context, prompts []Prompt, opts GenerateOptions) (gens []Generation, err error) {
	ctx, span := otel.Tracer("groundmesh/model").Start(ctx, "model.Generate")
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	span.SetAttributes(attribute.Int("prompts", len(prompts)), attribute.String("constraint", opts.Constraint.String()))
	if err := opts.Constraint.validate(); err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	if opts.MaxNew <= 0 {
		opts.MaxNew = 128
	}
	bs := opts.BatchSize
	if bs <= 0 {
		bs = len(prompts)
	}
	gens = make([]Generation, 0, len(prompts))
	for start := 0; start < len(prompts); start += bs {
		out, err := g.generateBatch(ctx, prompts[start:min(len(prompts), start+bs)], start, opts)
		if err != nil {
			return nil, err
		}
		gens = append(gens, out...)
	}
	return gens, nil
}

// sequence encodes a prompt in the chat template with its images
// preprocessed, checking that its placeholders match its images.
func (g *Generator) sequence(p Prompt) (compute.Sequence, error) {
	tokens, n, err := EncodePrompt(g.tok, g.cfg, p.History, p.Text)
	if err != nil {
		return compute.Sequence{}, err
	}
	if n != len(p.Images) {
		return compute.Sequence{}, fmt.Errorf("%d %s placeholders for %d images", n, imagePlaceholder, len(p.Images))
	}
	seq := compute.Sequence{Tokens: tokens, Images: make([]compute.Image, len(p.Images))}
	for k, img := range p.Images {
		if seq.Images[k], err = ComputeImage(img, g.cfg.ImageSize); err != nil {
			return compute.Sequence{}, fmt.Errorf("image %d: %w", k, err)
		}
	}
	return seq, nil
}

func (g *Generator) generateBatch(ctx context.Context, prompts []Prompt, offset int, opts GenerateOptions) ([]Generation, error) {
	req := compute.GenerateRequest{
		Session: g.session, Batch: make([]compute.Sequence, len(prompts)), Grammar: opts.Constraint.Grammar(), MaxNew: opts.MaxNew,
		BoxFromHead: opts.BoxFromHead, YesNoFromHead: opts.YesNoFromHead, NameFromHead: opts.NameFromHead, WantAttention: opts.WantAttention,
	}
	for i, p := range prompts {
		seq, err := g.sequence(p)
		if err != nil {
			return nil, fmt.Errorf("generate: prompt %d: %w", offset+i, err)
		}
		req.Batch[i] = seq
	}
	var res compute.GenerateResult
	inBackend, err := g.backendGenerates(ctx)
	if err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	if inBackend && !opts.HostLoop {
		if res, err = g.backend.Generate(ctx, req); err != nil {
			return nil, fmt.Errorf("generate: %w", err)
		}
		if len(res.Answers) != len(prompts) {
			return nil, fmt.Errorf("generate: backend returned %d answers for %d prompts", len(res.Answers), len(prompts))
		}
	} else if res, err = DecodeLoop(ctx, g.backend, g.cfg, req); err != nil {
		return nil, err
	}
	gens := make([]Generation, len(prompts))
	for i, a := range res.Answers {
		gens[i] = Generation{Tokens: a.Tokens, Attention: a.Attention, Finish: a.Finish, Text: g.tok.Decode(a.Tokens)}
		if a.Head.OK {
			h := a.Head
			gens[i].Head = &h
		}
		if b, err := ParseBox(gens[i].Text); err == nil {
			gens[i].Box = &b
		}
	}
	return gens, nil
}

// backendGenerates reports whether the backend declares
// compute.FeatureGenerate. The answer is kept once the backend has given
// it; a failed Describe (a cancelled call, a restarting plugin) is
// returned and asked again next time.
func (g *Generator) backendGenerates(ctx context.Context) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.described {
		d, err := g.backend.Describe(ctx)
		if err != nil {
			return false, err
		}
		g.described, g.inBackend = true, slices.Contains(d.Features, compute.FeatureGenerate)
	}
	return g.inBackend, nil
}

// Grammar is the constraint as compute.GenerateRequest carries it.
func (c Constraint) Grammar() compute.Grammar {
	switch c.kind {
	case kindBox:
		return compute.Grammar{Kind: compute.GrammarBox}
	case kindYesNo:
		return compute.Grammar{Kind: compute.GrammarYesNo}
	case kindDigits:
		return compute.Grammar{Kind: compute.GrammarDigits, Lo: c.lo, Hi: c.hi}
	}
	return compute.Grammar{Kind: compute.GrammarNone}
}

// ConstraintOf is the constraint a compute.Grammar names.
func ConstraintOf(g compute.Grammar) (Constraint, error) {
	var c Constraint
	switch g.Kind {
	case compute.GrammarNone:
		c = ConstraintNone
	case compute.GrammarBox:
		c = ConstraintBox
	case compute.GrammarYesNo:
		c = ConstraintYesNo
	case compute.GrammarDigits:
		c = ConstraintDigits(g.Lo, g.Hi)
	default:
		return Constraint{}, fmt.Errorf("grammar %q: want one of \"\", %q, %q, %q", g.Kind, compute.GrammarBox, compute.GrammarYesNo, compute.GrammarDigits)
	}
	return c, c.validate()
}

// DecodeLoop answers a generation request over b's Prefill and Decode:
// greedy decoding under the request's grammar, every sequence advancing one
// position per step (finished ones are fed <pad>), so the free-text budget
// is bounded by the longest prompt of the batch and no position ever
// reaches MaxSeq. It is the host's loop for backends without
// compute.FeatureGenerate, and what a backend's Generate runs in process
// (the same code, so the two give the same answers).
func DecodeLoop(ctx context.Context, b compute.Backend, cfg Config, req compute.GenerateRequest) (compute.GenerateResult, error) {
	constraint, err := ConstraintOf(req.Grammar)
	if err != nil {
		return compute.GenerateResult{}, fmt.Errorf("generate: %w: %w", compute.ErrInvalidArgument, err)
	}
	maxNew := req.MaxNew
	if maxNew <= 0 {
		maxNew = 128
	}
	n := len(req.Batch)
	if n == 0 {
		return compute.GenerateResult{}, fmt.Errorf("generate: %w: empty batch", compute.ErrInvalidArgument)
	}
	longest := 0
	for _, seq := range req.Batch {
		longest = max(longest, len(seq.Tokens))
	}
	// Pick j (0-based) needs j tokens fed after the prompt, the last at
	// position len+j-1 < MaxSeq.
	budget := min(maxNew, cfg.MaxSeq-longest+1)
	if need := constraint.picks(); need > budget {
		if need > cfg.MaxSeq-longest+1 {
			return compute.GenerateResult{}, fmt.Errorf("generate: a %d-token prompt leaves no room for a %s answer (max_seq %d)", longest, constraint, cfg.MaxSeq)
		}
		budget = need
	}
	// When the head decides every answer (its box or its yes/no, for
	// sequences that all have an image) and no attention is wanted, the
	// language model's logits would never be read: ask for the head alone.
	nameFromHead := req.NameFromHead && constraint.kind == kindNone
	headOnly := !req.WantAttention && ((req.BoxFromHead && constraint.kind == kindBox) || (req.YesNoFromHead && constraint.kind == kindYesNo) || nameFromHead)
	for _, seq := range req.Batch {
		headOnly = headOnly && len(seq.Images) > 0
	}
	prefill := compute.PrefillRequest{Session: req.Session, Batch: req.Batch, WantAttention: req.WantAttention, HeadOnly: headOnly}
	res, err := b.Prefill(ctx, prefill)
	if err != nil {
		return compute.GenerateResult{}, fmt.Errorf("generate: prefill: %w", err)
	}
	if headOnly && len(res.Logits) == 0 && !allHeads(res.HeadBoxes, n, nameFromHead) {
		// A head without an answer for some sequence: run the model.
		if res.CacheID != "" {
			_ = b.ReleaseCache(context.WithoutCancel(ctx), req.Session, res.CacheID)
		}
		prefill.HeadOnly = false
		if res, err = b.Prefill(ctx, prefill); err != nil {
			return compute.GenerateResult{}, fmt.Errorf("generate: prefill: %w", err)
		}
	}
	// The backend may have run the model anyway (it need not honour
	// HeadOnly); then decode as usual.
	headOnly = headOnly && len(res.Logits) == 0
	cacheID := res.CacheID
	if cacheID != "" {
		defer func() {
			// Free the cache even when ctx is cancelled; its error is moot then.
			_ = b.ReleaseCache(context.WithoutCancel(ctx), req.Session, cacheID)
		}()
	}
	out := make([]compute.GeneratedAnswer, n)
	gram := make([]grammar, n)
	done := make([]bool, n)
	for i := range gram {
		gram[i].c = constraint
		if i < len(res.HeadBoxes) {
			out[i].Head = res.HeadBoxes[i]
		}
		if req.BoxFromHead && constraint.kind == kindBox && i < len(res.HeadBoxes) && res.HeadBoxes[i].OK {
			gram[i].force = forcedBox(res.HeadBoxes[i].Box)
		}
		if req.YesNoFromHead && constraint.kind == kindYesNo && i < len(res.HeadBoxes) && res.HeadBoxes[i].OK {
			yes := res.HeadBoxes[i].Exists >= 0.5
			gram[i].yes = &yes
		}
		if nameFromHead && i < len(res.HeadBoxes) && res.HeadBoxes[i].OK && res.HeadBoxes[i].Name != nil {
			gram[i].name = slices.Clip(res.HeadBoxes[i].Name[:min(len(res.HeadBoxes[i].Name), budget)])
		}
	}
	feed := make([]int32, n)
	for step := 0; ; step++ {
		if !headOnly && len(res.Logits) != n {
			return compute.GenerateResult{}, fmt.Errorf("generate: backend returned %d logit rows for %d sequences", len(res.Logits), n)
		}
		active := 0
		for i := range n {
			feed[i] = tokPad
			if done[i] {
				continue
			}
			var logits []float32 // nil when headOnly: every pick is forced
			if !headOnly {
				if logits = res.Logits[i]; len(logits) != cfg.VocabSize {
					return compute.GenerateResult{}, fmt.Errorf("generate: backend returned %d logits, vocab is %d", len(logits), cfg.VocabSize)
				}
			}
			id := gram[i].pick(logits)
			if id == tokEOS {
				done[i], out[i].Finish = true, FinishEOS
				continue
			}
			out[i].Tokens = append(out[i].Tokens, id)
			if req.WantAttention && i < len(res.Attention) && res.Attention[i] != nil {
				out[i].Attention = append(out[i].Attention, append([]float32(nil), res.Attention[i]...))
			}
			switch {
			case gram[i].ended: // only <eos> may follow: no need to ask the model
				done[i], out[i].Finish = true, FinishEOS
			case len(out[i].Tokens) >= budget:
				done[i], out[i].Finish = true, FinishLength
			default:
				feed[i] = id
				active++
			}
		}
		if active == 0 {
			break
		}
		if err := ctx.Err(); err != nil {
			return compute.GenerateResult{}, fmt.Errorf("generate: %w", err)
		}
		if headOnly {
			continue // the forced answers need no model
		}
		res, err = b.Decode(ctx, compute.DecodeRequest{Session: req.Session, CacheID: cacheID, Tokens: feed, WantAttention: req.WantAttention})
		if err != nil {
			return compute.GenerateResult{}, fmt.Errorf("generate: decode step %d: %w", step+1, err)
		}
	}
	return compute.GenerateResult{Answers: out}, nil
}

// allHeads reports whether heads holds an answer for each of n sequences
// (with names, a name for each).
func allHeads(heads []compute.HeadBox, n int, names bool) bool {
	if len(heads) != n {
		return false
	}
	for _, h := range heads {
		if !h.OK || names && h.Name == nil {
			return false
		}
	}
	return true
}

// ScoreItem is a prompt and the answer to score under it (teacher forced).
type ScoreItem struct {
	Prompt Prompt
	Answer string
}

// Score is the model's negative log-likelihood of an answer: the sum over
// its tokens and the closing <eos> (Tokens of them), in nats, exactly the
// positions training puts a loss on.
type Score struct {
	NLL    float64
	Tokens int
}

// Score computes each item's answer likelihood, teacher forced: one prefill
// of the prompt, then the answer's tokens fed one per decode step, in
// batches of batchSize (0: all at once). Scoring an answer under the true
// image and under another one tells whether the model reads the image at
// all, which greedy answers alone do not show.
func (g *Generator) Score(ctx context.Context, items []ScoreItem, batchSize int) (scores []Score, err error) {
	ctx, span := otel.Tracer("groundmesh/model").Start(ctx, "model.Score")
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	span.SetAttributes(attribute.Int("items", len(items)))
	if batchSize <= 0 {
		batchSize = len(items)
	}
	scores = make([]Score, 0, len(items))
	for start := 0; start < len(items); start += batchSize {
		out, err := g.scoreBatch(ctx, items[start:min(len(items), start+batchSize)], start)
		if err != nil {
			return nil, err
		}
		scores = append(scores, out...)
	}
	return scores, nil
}

func (g *Generator) scoreBatch(ctx context.Context, items []ScoreItem, offset int) ([]Score, error) {
	batch := make([]compute.Sequence, len(items))
	answers := make([][]int32, len(items))
	longest := 0
	for i, it := range items {
		seq, err := g.sequence(it.Prompt)
		if err != nil {
			return nil, fmt.Errorf("score: item %d: %w", offset+i, err)
		}
		answers[i] = append(g.tok.Encode(it.Answer), tokEOS)
		batch[i] = seq
		longest = max(longest, len(answers[i]))
	}
	// Every sequence advances one position per step, finished ones fed
	// <pad>: the batch's longest answer (the item's own, alone) sets how
	// far each prompt runs.
	for i, s := range batch {
		if len(s.Tokens)+longest-1 > g.cfg.MaxSeq {
			return nil, fmt.Errorf("score: item %d: its %d-token prompt with the batch's longest answer (%d tokens, its own %d): %w (%d)",
				offset+i, len(s.Tokens), longest, len(answers[i]), ErrTooLong, g.cfg.MaxSeq)
		}
	}
	res, err := g.backend.Prefill(ctx, compute.PrefillRequest{Session: g.session, Batch: batch})
	if err != nil {
		return nil, fmt.Errorf("score: prefill: %w", err)
	}
	cacheID := res.CacheID
	defer func() { _ = g.backend.ReleaseCache(context.WithoutCancel(ctx), g.session, cacheID) }()
	scores := make([]Score, len(items))
	feed := make([]int32, len(items))
	for step := 0; step < longest; step++ {
		if len(res.Logits) != len(items) {
			return nil, fmt.Errorf("score: backend returned %d logit rows for %d sequences", len(res.Logits), len(items))
		}
		for i, ans := range answers {
			feed[i] = tokPad
			if step >= len(ans) {
				continue
			}
			if len(res.Logits[i]) != g.cfg.VocabSize {
				return nil, fmt.Errorf("score: backend returned %d logits, vocab is %d", len(res.Logits[i]), g.cfg.VocabSize)
			}
			scores[i].NLL -= logSoftmaxAt(res.Logits[i], ans[step])
			scores[i].Tokens++
			if step+1 < len(ans) {
				feed[i] = ans[step]
			}
		}
		if step+1 == longest {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("score: %w", err)
		}
		res, err = g.backend.Decode(ctx, compute.DecodeRequest{Session: g.session, CacheID: cacheID, Tokens: feed})
		if err != nil {
			return nil, fmt.Errorf("score: decode step %d: %w", step+1, err)
		}
	}
	return scores, nil
}

// logSoftmaxAt is log softmax(logits)[id], computed stably.
func logSoftmaxAt(logits []float32, id int32) float64 {
	m := math.Inf(-1)
	for _, v := range logits {
		m = math.Max(m, float64(v))
	}
	var z float64
	for _, v := range logits {
		z += math.Exp(float64(v) - m)
	}
	return float64(logits[id]) - m - math.Log(z)
}
