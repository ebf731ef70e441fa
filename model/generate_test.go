package model

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"image"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/groundmesh/groundmesh/plugins/compute"
)

// fakeBackend is an in-memory compute.Backend whose "model" is a function
// of the prompt and the tokens fed since. It checks what a real backend
// would reject (unknown session or cache, batch size, positions past
// MaxSeq, patch tokens without images) and records its KV cache
// bookkeeping.
type fakeBackend struct {
	cfg       Config
	logits    func(prompt, fed []int32) []float32
	attention func(prompt, fed []int32) []float32  // nil: no attention support
	failAt    int                                  // fail the Decode call with this 1-based number
	head      func(prompt []int32) compute.HeadBox // nil: no grounding head

	mu                          sync.Mutex
	caches                      map[string]*fakeCache
	nextID                      int
	prefills, decodes, releases int
	fedLog                      [][]int32
}

type fakeCache struct {
	prompts [][]int32
	fed     [][]int32
}

var _ compute.Backend = (*fakeBackend)(nil)

func newFake(cfg Config, logits func(prompt, fed []int32) []float32) *fakeBackend {
	return &fakeBackend{cfg: cfg, logits: logits, caches: map[string]*fakeCache{}}
}

func (f *fakeBackend) Describe(context.Context) (compute.Description, error) {
	return compute.Description{Backend: "fake", CanAttention: f.attention != nil}, nil
}

func (f *fakeBackend) Generate(context.Context, compute.GenerateRequest) (compute.GenerateResult, error) {
	return compute.GenerateResult{}, compute.ErrUnimplemented
}

func (f *fakeBackend) Train(context.Context, compute.TrainRequest, func(compute.TrainProgress) error) (compute.TrainResult, error) {
	return compute.TrainResult{}, errors.New("fake: no training")
}

func (f *fakeBackend) Load(context.Context, compute.LoadRequest) (compute.LoadResult, error) {
	return compute.LoadResult{Session: "s1"}, nil
}

func (f *fakeBackend) Unload(context.Context, string) error { return nil }

func (f *fakeBackend) forward(c *fakeCache, want bool) compute.ForwardResult {
	var res compute.ForwardResult
	for i := range c.prompts {
		res.Logits = append(res.Logits, f.logits(c.prompts[i], c.fed[i]))
		if want && f.attention != nil {
			res.Attention = append(res.Attention, f.attention(c.prompts[i], c.fed[i]))
		}
	}
	return res
}

func (f *fakeBackend) Prefill(_ context.Context, req compute.PrefillRequest) (compute.ForwardResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.Session != "s1" {
		return compute.ForwardResult{}, fmt.Errorf("fake: unknown session %q", req.Session)
	}
	c := &fakeCache{}
	var heads []compute.HeadBox
	for i, s := range req.Batch {
		if f.head != nil {
			heads = append(heads, f.head(s.Tokens))
		}
		patches := 0
		for _, id := range s.Tokens {
			if id == f.cfg.PatchToken {
				patches++
			}
		}
		if patches != len(s.Images)*f.cfg.Patches() || len(s.Tokens) > f.cfg.MaxSeq {
			return compute.ForwardResult{}, fmt.Errorf("fake: sequence %d: %d patch tokens for %d images, %d tokens", i, patches, len(s.Images), len(s.Tokens))
		}
		for _, img := range s.Images {
			if img.Size != f.cfg.ImageSize || len(img.Pixels) != 3*img.Size*img.Size {
				return compute.ForwardResult{}, fmt.Errorf("fake: image of size %d with %d values", img.Size, len(img.Pixels))
			}
		}
		c.prompts = append(c.prompts, slices.Clone(s.Tokens))
		c.fed = append(c.fed, nil)
	}
	f.nextID++
	f.prefills++
	id := fmt.Sprintf("cache-%d", f.nextID)
	f.caches[id] = c
	res := f.forward(c, req.WantAttention)
	res.CacheID = id
	res.HeadBoxes = heads
	return res, nil
}

func (f *fakeBackend) Decode(_ context.Context, req compute.DecodeRequest) (compute.ForwardResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.decodes++
	if f.failAt == f.decodes {
		return compute.ForwardResult{}, errors.New("fake: plugin crashed")
	}
	c, ok := f.caches[req.CacheID]
	if !ok || req.Session != "s1" {
		return compute.ForwardResult{}, fmt.Errorf("fake: unknown cache %q", req.CacheID)
	}
	if len(req.Tokens) != len(c.prompts) {
		return compute.ForwardResult{}, fmt.Errorf("fake: %d tokens for a batch of %d", len(req.Tokens), len(c.prompts))
	}
	f.fedLog = append(f.fedLog, slices.Clone(req.Tokens))
	for i, id := range req.Tokens {
		c.fed[i] = append(c.fed[i], id)
		if pos := len(c.prompts[i]) + len(c.fed[i]) - 1; pos >= f.cfg.MaxSeq {
			return compute.ForwardResult{}, fmt.Errorf("fake: sequence %d: position %d past max_seq %d", i, pos, f.cfg.MaxSeq)
		}
	}
	res := f.forward(c, req.WantAttention)
	res.CacheID = req.CacheID
	return res, nil
}

func (f *fakeBackend) ReleaseCache(_ context.Context, session, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.caches[id]; !ok {
		return fmt.Errorf("fake: release of unknown cache %q", id)
	}
	delete(f.caches, id)
	f.releases++
	return nil
}

// scripted returns logits that spell out, for a prompt whose human text
// contains key, the tokens of answer then <eos> (one-hot at +5, the rest
// small noise); other prompts get noise.
func scripted(tok *Tokenizer, answers map[string]string) func(prompt, fed []int32) []float32 {
	return func(prompt, fed []int32) []float32 {
		logits := noise(tok.VocabSize(), prompt, fed)
		text := tok.Decode(prompt)
		for key, ans := range answers {
			if strings.Contains(text, key) {
				want := append(tok.Encode(ans), tok.EOSID())
				if len(fed) < len(want) {
					logits[want[len(fed)]] = 5
				}
			}
		}
		return logits
	}
}

// noise is deterministic pseudo-random logits in [-1, 1).
func noise(vocab int, prompt, fed []int32) []float32 {
	h := fnv.New64a()
	for _, id := range append(slices.Clone(prompt), fed...) {
		fmt.Fprint(h, id, ",")
	}
	r := rand.New(rand.NewPCG(h.Sum64(), 1))
	out := make([]float32, vocab)
	for i := range out {
		out[i] = r.Float32()*2 - 1
	}
	return out
}

func testImage(w, h int) image.Image { return image.NewRGBA(image.Rect(0, 0, w, h)) }

func newTestGenerator(t *testing.T, f *fakeBackend, tok *Tokenizer) *Generator {
	t.Helper()
	g, err := NewGenerator(f, "s1", tok, f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestGenerateScripted(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	answers := map[string]string{
		"red circle":  "[0.051, 0.102, 0.350, 0.400]",
		"green":       "Yes",
		"every":       "a red circle [0.100, 0.200, 0.300, 0.400] and a blue square.",
		"second":      "2",
		"description": "Red and blue.",
	}
	f := newFake(cfg, scripted(tok, answers))
	g := newTestGenerator(t, f, tok)
	prompts := []Prompt{
		{Text: "<image>\nWhere is the red circle?", Images: []image.Image{testImage(30, 20)}},
		{Text: "<image>\nIs there a green triangle?", Images: []image.Image{testImage(20, 30)}},
		{Text: "<image>\nList every object with its box.", Images: []image.Image{testImage(8, 8)}},
		{Text: "<image>\n<image>\nWhich is the second?", Images: []image.Image{testImage(8, 8), testImage(4, 9)}},
		{Text: "Give a description.", History: []Turn{{From: "human", Value: "<image>\nhi"}, {From: "gpt", Value: "hello"}}, Images: []image.Image{testImage(8, 8)}},
	}
	gens, err := g.Generate(context.Background(), prompts, GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantText := []string{answers["red circle"], answers["green"], answers["every"], answers["second"], answers["description"]}
	longest := 0
	for i, gen := range gens {
		if gen.Text != wantText[i] || gen.Finish != FinishEOS || tok.Decode(gen.Tokens) != gen.Text {
			t.Errorf("prompt %d: %q (%s), want %q", i, gen.Text, gen.Finish, wantText[i])
		}
		longest = max(longest, len(gen.Tokens)+1)
	}
	if gens[0].Box == nil || *gens[0].Box != (NormBox{0.051, 0.102, 0.35, 0.4}) || gens[1].Box != nil || gens[2].Box == nil {
		t.Errorf("boxes %v %v %v", gens[0].Box, gens[1].Box, gens[2].Box)
	}
	// One prefill; one decode per pick after the first, until the longest
	// answer's <eos>; every cache released; finished sequences fed <pad>.
	if f.prefills != 1 || f.decodes != longest-1 || f.releases != 1 || len(f.caches) != 0 {
		t.Fatalf("prefills %d decodes %d (want %d) releases %d open %d", f.prefills, f.decodes, longest-1, f.releases, len(f.caches))
	}
	for step, fed := range f.fedLog {
		for i, id := range fed {
			want := tok.PadID()
			if step < len(gens[i].Tokens) {
				want = gens[i].Tokens[step]
			}
			if id != want {
				t.Fatalf("decode %d sequence %d fed %d, want %d", step, i, id, want)
			}
		}
	}
}

// TestGenerateBoxAlwaysParses is the property test: whatever the logits
// (random, NaN, infinite, biased towards invalid boxes), box-constrained
// decoding yields text that parses and is exactly FormatBox of its box.
func TestGenerateBoxAlwaysParses(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	styles := []func(r *rand.Rand, out []float32){
		func(r *rand.Rand, out []float32) {}, // uniform noise
		func(r *rand.Rand, out []float32) { // strong random preferences, NaN and Inf
			for i := range out {
				switch r.IntN(10) {
				case 0:
					out[i] = float32(math.NaN())
				case 1:
					out[i] = float32(math.Inf(1 - 2*r.IntN(2)))
				default:
					out[i] = float32(r.NormFloat64() * 30)
				}
			}
		},
		func(r *rand.Rand, out []float32) { // wants x2 < x1: small coarse numbers, <eos>, text
			for c := range numCoarse {
				out[tokCoarse0+int32(c)] = float32(-c)
			}
			out[tokEOS], out[tok.ids["the"]] = 100, 100
		},
		func(r *rand.Rand, out []float32) { // wants 1.009: "1.00" then "9"
			out[tok.CoarseID(100)], out[tok.FineID(9)] = 50, 50
		},
		func(r *rand.Rand, out []float32) { // all equal
			for i := range out {
				out[i] = 0
			}
		},
		func(r *rand.Rand, out []float32) { // all NaN
			for i := range out {
				out[i] = float32(math.NaN())
			}
		},
	}
	for seed := range 300 {
		style := styles[seed%len(styles)]
		f := newFake(cfg, func(prompt, fed []int32) []float32 {
			out := noise(cfg.VocabSize, prompt, fed)
			h := fnv.New64a()
			fmt.Fprint(h, seed, prompt, fed)
			style(rand.New(rand.NewPCG(h.Sum64(), 9)), out)
			return out
		})
		g := newTestGenerator(t, f, tok)
		prompts := make([]Prompt, 3)
		for i := range prompts {
			prompts[i] = Prompt{Text: fmt.Sprintf("<image>\nWhere is object %d?", seed*3+i), Images: []image.Image{testImage(9+i, 7)}}
		}
		gens, err := g.Generate(context.Background(), prompts, GenerateOptions{Constraint: ConstraintBox, MaxNew: 2})
		if err != nil {
			t.Fatal(err)
		}
		for i, gen := range gens {
			b, err := ParseBox(gen.Text)
			if err != nil || gen.Box == nil || *gen.Box != b || FormatBox(b) != gen.Text || len(gen.Tokens) != boxTokens || gen.Finish != FinishEOS {
				t.Fatalf("seed %d prompt %d: %q (%v, %d tokens, %s)", seed, i, gen.Text, err, len(gen.Tokens), gen.Finish)
			}
			if !slices.Equal(tok.Encode(gen.Text), gen.Tokens) {
				t.Fatalf("seed %d: tokens are not the canonical encoding of %q", seed, gen.Text)
			}
			if b[0] >= b[2] || b[1] >= b[3] {
				t.Fatalf("seed %d prompt %d: %q has no area", seed, i, gen.Text)
			}
		}
		if len(f.caches) != 0 || f.decodes != boxTokens-1 {
			t.Fatalf("seed %d: %d caches open, %d decodes", seed, len(f.caches), f.decodes)
		}
	}
}

func TestGenerateYesNoAndChoice(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	seen := map[string]bool{}
	for seed := range 60 {
		f := newFake(cfg, func(prompt, fed []int32) []float32 {
			out := noise(cfg.VocabSize, append(slices.Clone(prompt), int32(seed)), fed)
			out[tokEOS] = 10 // an eager model: the grammar must still answer
			return out
		})
		g := newTestGenerator(t, f, tok)
		p := []Prompt{{Text: "<image>\nIs there a cat?", Images: []image.Image{testImage(5, 5)}}}
		gens, err := g.Generate(context.Background(), p, GenerateOptions{Constraint: ConstraintYesNo})
		if err != nil {
			t.Fatal(err)
		}
		txt := gens[0].Text
		if !slices.Contains([]string{"yes", "no", "Yes", "No"}, txt) || gens[0].Finish != FinishEOS {
			t.Fatalf("yes/no answer %q", txt)
		}
		seen[txt] = true
		gens, err = g.Generate(context.Background(), p, GenerateOptions{Constraint: ConstraintChoice(3)})
		if err != nil {
			t.Fatal(err)
		}
		if txt := gens[0].Text; len(txt) != 1 || txt[0] < '0' || txt[0] > '2' {
			t.Fatalf("choice answer %q", txt)
		}
		seen["choice "+gens[0].Text] = true
		gens, err = g.Generate(context.Background(), p, GenerateOptions{Constraint: ConstraintDigits(4, 4)})
		if err != nil || gens[0].Text != "4" {
			t.Fatalf("digits 4..4: %q %v", gens[0].Text, err)
		}
	}
	for _, want := range []string{"yes", "no", "Yes", "No", "choice 0", "choice 1", "choice 2"} {
		if !seen[want] {
			t.Errorf("never produced %q over 60 random models: masking too strict?", want)
		}
	}
	g := newTestGenerator(t, newFake(cfg, scripted(tok, nil)), tok)
	for _, c := range []Constraint{ConstraintChoice(0), ConstraintChoice(11), ConstraintDigits(5, 3)} {
		if _, err := g.Generate(context.Background(), nil, GenerateOptions{Constraint: c}); err == nil {
			t.Errorf("constraint %s accepted", c)
		}
	}
}

func TestGenerateFreeTextLimits(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	// A model that never stops and loves the tokens free text must not pick.
	f := newFake(cfg, func(prompt, fed []int32) []float32 {
		out := noise(cfg.VocabSize, prompt, fed)
		out[tokEOS] = -50
		for _, id := range banned {
			out[id] = 100
		}
		return out
	})
	g := newTestGenerator(t, f, tok)
	short := Prompt{Text: "<image>hi", Images: []image.Image{testImage(3, 3)}}
	gens, err := g.Generate(context.Background(), []Prompt{short}, GenerateOptions{MaxNew: 7})
	if err != nil {
		t.Fatal(err)
	}
	if len(gens[0].Tokens) != 7 || gens[0].Finish != FinishLength {
		t.Fatalf("MaxNew 7: %d tokens, %s", len(gens[0].Tokens), gens[0].Finish)
	}
	for _, id := range gens[0].Tokens {
		if slices.Contains(banned[:], id) || id == tokEOS {
			t.Fatalf("free text picked %s", tok.TokenString(id))
		}
	}
	// With a long prompt in the batch, nobody runs past MaxSeq (the fake fails if so).
	prompt, _, _ := EncodePrompt(tok, cfg, nil, "<image>"+strings.Repeat(" the", 20))
	long := Prompt{Text: "<image>" + strings.Repeat(" the", 20), Images: []image.Image{testImage(3, 3)}}
	gens, err = g.Generate(context.Background(), []Prompt{short, long}, GenerateOptions{MaxNew: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if want := cfg.MaxSeq - len(prompt) + 1; len(gens[0].Tokens) != want || len(gens[1].Tokens) != want {
		t.Fatalf("budget: %d and %d tokens, want %d", len(gens[0].Tokens), len(gens[1].Tokens), want)
	}
	// A prompt that leaves no room for a box is refused before any backend call.
	tooLong := Prompt{Text: "<image>" + strings.Repeat(" the", cfg.MaxSeq-cfg.Patches()-12), Images: []image.Image{testImage(3, 3)}}
	before := f.prefills
	if _, err := g.Generate(context.Background(), []Prompt{tooLong}, GenerateOptions{Constraint: ConstraintBox}); err == nil || f.prefills != before {
		t.Fatalf("box after a full prompt: %v", err)
	}
	if len(f.caches) != 0 {
		t.Fatalf("%d caches left open", len(f.caches))
	}
}

func TestGenerateAttentionBatchingAndErrors(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	f := newFake(cfg, scripted(tok, map[string]string{"a": "Red and blue.", "b": "no"}))
	f.attention = func(prompt, fed []int32) []float32 {
		row := make([]float32, cfg.Patches())
		row[len(fed)%len(row)] = float32(len(prompt))
		return row
	}
	g := newTestGenerator(t, f, tok)
	var prompts []Prompt
	for i := range 5 {
		prompts = append(prompts, Prompt{Text: fmt.Sprintf("<image> %c", "ababa"[i]), Images: []image.Image{testImage(4, 4)}})
	}
	gens, err := g.Generate(context.Background(), prompts, GenerateOptions{WantAttention: true, BatchSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if f.prefills != 3 || f.releases != 3 {
		t.Fatalf("%d prefills, %d releases for 5 prompts in batches of 2", f.prefills, f.releases)
	}
	for i, gen := range gens {
		want := map[byte]string{'a': "Red and blue.", 'b': "no"}["ababa"[i]]
		if gen.Text != want || len(gen.Attention) != len(gen.Tokens) {
			t.Fatalf("prompt %d: %q, %d attention rows for %d tokens", i, gen.Text, len(gen.Attention), len(gen.Tokens))
		}
		for k, row := range gen.Attention {
			if row[k%len(row)] == 0 {
				t.Fatalf("prompt %d token %d: attention row %v is not the one of its step", i, k, row)
			}
		}
	}
	// A crash mid-decode returns the error and still releases the cache.
	f.failAt = f.decodes + 2
	if _, err := g.Generate(context.Background(), prompts[:1], GenerateOptions{}); err == nil || !strings.Contains(err.Error(), "crashed") {
		t.Fatalf("crash: %v", err)
	}
	if len(f.caches) != 0 {
		t.Fatalf("cache left open after a failed decode")
	}
	// Placeholder and image counts must agree.
	if _, err := g.Generate(context.Background(), []Prompt{{Text: "<image><image>", Images: []image.Image{testImage(2, 2)}}}, GenerateOptions{}); err == nil {
		t.Fatal("2 placeholders, 1 image accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := g.Generate(ctx, prompts[:1], GenerateOptions{}); err == nil || len(f.caches) != 0 {
		t.Fatalf("cancelled: %v, %d caches open", err, len(f.caches))
	}
	for name, fn := range map[string]func() (*Generator, error){
		"nil backend": func() (*Generator, error) { return NewGenerator(nil, "s1", tok, cfg) },
		"no session":  func() (*Generator, error) { return NewGenerator(f, "", tok, cfg) },
		"vocab":       func() (*Generator, error) { c := cfg; c.VocabSize++; return NewGenerator(f, "s1", tok, c) },
		"invalid":     func() (*Generator, error) { c := cfg; c.Heads = 5; return NewGenerator(f, "s1", tok, c) },
	} {
		if _, err := fn(); err == nil {
			t.Errorf("NewGenerator %s: accepted", name)
		}
	}
}

// TestScoreTeacherForced: Score sums -log softmax of the logits the backend
// gives after the prompt and after each answer token, the answer's <eos>
// included; answers of different lengths share a batch; the scripted
// answer scores far better than another one.
func TestScoreTeacherForced(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	f := newFake(cfg, scripted(tok, map[string]string{"red circle": "[0.051, 0.102, 0.350, 0.400]"}))
	g := newTestGenerator(t, f, tok)
	p := Prompt{Text: "<image>\nWhere is the red circle?", Images: []image.Image{testImage(30, 20)}}
	items := []ScoreItem{
		{Prompt: p, Answer: "[0.051, 0.102, 0.350, 0.400]"},
		{Prompt: p, Answer: "[0.500, 0.500, 0.900, 0.900]"},
		{Prompt: Prompt{Text: "<image>\nIs it red?", Images: []image.Image{testImage(8, 8)}}, Answer: "Yes"},
	}
	scores, err := g.Score(context.Background(), items, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range items {
		prompt, _, err := EncodePrompt(tok, cfg, nil, it.Prompt.Text)
		if err != nil {
			t.Fatal(err)
		}
		ans := append(tok.Encode(it.Answer), tok.EOSID())
		var want float64
		for j := range ans {
			want -= logSoftmaxAt(f.logits(prompt, ans[:j]), ans[j])
		}
		if scores[i].Tokens != len(ans) || math.Abs(scores[i].NLL-want) > 1e-9 {
			t.Errorf("item %d: %+v, want NLL %.6f over %d tokens", i, scores[i], want, len(ans))
		}
	}
	if scores[0].NLL/float64(scores[0].Tokens) > math.Log(float64(tok.VocabSize()))-1 || scores[1].NLL < 2*scores[0].NLL {
		t.Errorf("scripted answer NLL %.3f, other answer %.3f: the score does not follow the logits", scores[0].NLL, scores[1].NLL)
	}
	if f.prefills != 1 || f.releases != 1 || len(f.caches) != 0 {
		t.Errorf("prefills %d releases %d open %d", f.prefills, f.releases, len(f.caches))
	}
	// Batches of one give the same scores.
	one, err := g.Score(context.Background(), items, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range one {
		if math.Abs(one[i].NLL-scores[i].NLL) > 1e-9 {
			t.Errorf("item %d: %.6f alone, %.6f in a batch", i, one[i].NLL, scores[i].NLL)
		}
	}
}

// TestGenerateBoxFromHead: with BoxFromHead, a box answer's numbers are the
// head's box, rounded to thousandths and kept a valid box, whatever the
// language model's logits prefer; without it, or where the head has no box,
// the logits decide as before.
func TestGenerateBoxFromHead(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	heads := [][4]float32{{0.1234, 0.5, 0.75, 0.9}, {0.3, 0.3, 0.3, 0.3}, {1, 1, 1, 1}, {-0.2, 0.0004, 1.7, 0.0001}}
	want := []string{"[0.123, 0.500, 0.750, 0.900]", "[0.300, 0.300, 0.301, 0.301]", "[0.999, 0.999, 1.000, 1.000]", "[0.000, 0.000, 1.000, 0.001]"}
	f := newFake(cfg, func(prompt, fed []int32) []float32 {
		out := noise(cfg.VocabSize, prompt, fed)
		out[tok.CoarseID(42)], out[tok.FineID(7)] = 100, 100 // the language model wants 0.427 everywhere
		return out
	})
	n := 0
	f.head = func(prompt []int32) compute.HeadBox {
		n++
		if n > len(heads) {
			return compute.HeadBox{}
		}
		return compute.HeadBox{Box: heads[n-1], Score: 0.9, OK: true}
	}
	g := newTestGenerator(t, f, tok)
	prompts := make([]Prompt, len(heads)+1)
	for i := range prompts {
		prompts[i] = Prompt{Text: fmt.Sprintf("<image>\nWhere is object %d?", i), Images: []image.Image{testImage(8, 8)}}
	}
	gens, err := g.Generate(context.Background(), prompts, GenerateOptions{Constraint: ConstraintBox, BoxFromHead: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		if gens[i].Text != w || gens[i].Box == nil {
			t.Errorf("prompt %d: %q, want the head's box %q", i, gens[i].Text, w)
		}
	}
	if got := gens[len(heads)].Text; !strings.HasPrefix(got, "[0.427, 0.427, 0.42") {
		t.Errorf("prompt without a head box: %q, want the language model's numbers", got)
	}
	n = 0
	gens, err = g.Generate(context.Background(), prompts[:1], GenerateOptions{Constraint: ConstraintBox})
	if err != nil {
		t.Fatal(err)
	}
	if got := gens[0].Text; !strings.HasPrefix(got, "[0.427, 0.427, 0.42") {
		t.Errorf("without BoxFromHead: %q, want the language model's numbers", got)
	}
}

// TestGenerateYesNoFromHead: with YesNoFromHead, a yes/no answer follows
// the head's existence probability (yes from one half up) whatever the
// language model's logits prefer; where the head has no box, or without
// the option, the logits decide.
func TestGenerateYesNoFromHead(t *testing.T) {
	tok := testTokenizer(t)
	cfg := tinyConfig(tok)
	exists := []float32{0.9, 0.1, 0.5, 0.4999}
	want := []string{"yes", "no", "yes", "no"}
	f := newFake(cfg, func(prompt, fed []int32) []float32 {
		out := noise(cfg.VocabSize, prompt, fed)
		out[tokNo] = 100 // the language model says no everywhere
		return out
	})
	n := 0
	f.head = func(prompt []int32) compute.HeadBox {
		n++
		if n > len(exists) {
			return compute.HeadBox{}
		}
		return compute.HeadBox{Box: [4]float32{0.1, 0.1, 0.2, 0.2}, Exists: exists[n-1], OK: true}
	}
	g := newTestGenerator(t, f, tok)
	prompts := make([]Prompt, len(exists)+1)
	for i := range prompts {
		prompts[i] = Prompt{Text: fmt.Sprintf("Is there object %d in the image?\n<image>", i), Images: []image.Image{testImage(8, 8)}}
	}
	gens, err := g.Generate(context.Background(), prompts, GenerateOptions{Constraint: ConstraintYesNo, YesNoFromHead: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		if gens[i].Text != w {
			t.Errorf("prompt %d (exists %v): %q, want %q", i, exists[i], gens[i].Text, w)
		}
	}
	if got := gens[len(exists)].Text; got != "no" {
		t.Errorf("prompt without a head box: %q, want the language model's no", got)
	}
	n = 0
	gens, err = g.Generate(context.Background(), prompts[:1], GenerateOptions{Constraint: ConstraintYesNo})
	if err != nil {
		t.Fatal(err)
	}
	if got := gens[0].Text; got != "no" {
		t.Errorf("without YesNoFromHead: %q, want the language model's no", got)
	}
}
