package gomlx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/eager"
	"github.com/groundmesh/groundmesh/model/onnx"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// session is a loaded model and its open KV caches. Its language model
// and vision encoder run the model's one definition (model.Net) on the
// engine (newSeq: eager float32 arrays, model/eager, for GoMLX; libtorch
// tensors for libtorch), one sequence at a time with a KV cache: decoding
// a token costs one position, and there is no graph to compile per shape.
type session struct {
	cfg    model.Config
	newSeq func() lmSeq
	// grounder runs Config.Grounder's encoder and head; nil without it.
	grounder *grounderRunner

	mu     sync.Mutex
	caches map[string]*kvCache
}

// kvCache is the cache of one Prefill batch; calls on it are serialized.
type kvCache struct {
	mu   sync.Mutex
	seqs []*seqState
}

// release frees the sequences' caches.
func (k *kvCache) release() {
	for _, st := range k.seqs {
		if st != nil && st.seq != nil {
			st.seq.release()
		}
	}
}

// close frees the caches once no call is using them (after a Decode on
// the cache ends).
func (k *kvCache) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.release()
}

// seqState is one sequence's cache, and the positions of its first
// image's patches (what attention maps are read at).
type seqState struct {
	seq      lmSeq
	patchPos []int
}

// lmSeq is one sequence's language model and KV cache on an engine.
type lmSeq interface {
	// setFeats gives the sequence its image feature rows, projected
	// ([rows, Width], Config.Grounder's); setImages computes them from
	// n images' pixels [n, S, S, 3].
	setFeats(feats []float32, rows int) error
	setImages(px []float32, n int) error
	// step runs tokens (with the feature row idx each patch token reads
	// and isPatch) after the cached positions and returns the last
	// position's logits and, with wantAttn, per block its attention over
	// every position so far.
	step(tokens, idx []int32, isPatch []float32, wantAttn bool) (logits []float32, attn [][]float32, err error)
	// length is the number of cached positions.
	length() int
	// release frees the cache.
	release()
}

// eagerSeq is lmSeq on model/eager's plain-Go arrays (the GoMLX engine's,
// and the fastest for this model's size on a CPU).
type eagerSeq struct {
	cfg   model.Config
	net   *model.Net[*eager.Tensor]
	cache model.Cache[*eager.Tensor]
}

func (e *eagerSeq) setFeats(feats []float32, rows int) error {
	e.cache.Feats, e.cache.HaveFeats = eager.New(feats, rows, e.cfg.Width), true
	return nil
}

func (e *eagerSeq) setImages(px []float32, n int) error {
	s := e.cfg.ImageSize
	e.cache.Feats, e.cache.HaveFeats = e.net.ImageFeatures(eager.New(px, n, s, s, 3)), true
	return nil
}

func (e *eagerSeq) step(tokens, idx []int32, isPatch []float32, wantAttn bool) ([]float32, [][]float32, error) {
	n := len(tokens)
	e.cache.WantAttn = wantAttn
	logits := e.net.Step(&e.cache, eager.Ints(tokens, 1, n), eager.Ints(idx, 1, n), eager.New(isPatch, 1, n))
	var attn [][]float32
	if wantAttn {
		for _, a := range e.cache.Attn {
			attn = append(attn, a.Data)
		}
	}
	return logits.Data, attn, nil
}

func (e *eagerSeq) length() int { return e.cache.Len }
func (e *eagerSeq) release()    {}

// step runs tokens through the language model after the positions st
// holds. Patch tokens read the cache's image feature rows in order while
// rows are left (Prefill); in Decode there are none, and a patch token
// reads its token embedding. It returns the last position's logits and,
// with wantAttn, its attention over the first image's patches averaged
// over heads and blocks.
func (s *session) step(st *seqState, tokens []int32, featRows int, wantAttn bool) ([]float32, []float32, error) {
	c := s.cfg
	n := len(tokens)
	idx := make([]int32, n)
	isPatch := make([]float32, n)
	next := 0
	past := st.seq.length()
	for t, tok := range tokens {
		if tok == c.PatchToken && next < featRows {
			idx[t], isPatch[t] = int32(next), 1
			if next < c.Patches() {
				st.patchPos = append(st.patchPos, past+t)
			}
			next++
		}
	}
	logits, blocks, err := st.seq.step(tokens, idx, isPatch, wantAttn)
	if err != nil || !wantAttn {
		return logits, nil, err
	}
	attn := make([]float32, c.Patches())
	for _, a := range blocks {
		for i, p := range st.patchPos {
			attn[i] += a[p] / float32(len(blocks))
		}
	}
	return logits, attn, nil
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Load reads a checkpoint's weights for inference.
func (b *Backend) Load(ctx context.Context, req compute.LoadRequest) (res compute.LoadResult, err error) {
	_, span := b.tracer.Start(ctx, b.eng.name()+".Load", trace.WithAttributes(attribute.String("checkpoint", req.Checkpoint)))
	defer func() { endSpan(span, err) }()
	if req.Device != "" && !slices.Contains(b.eng.devices(), req.Device) {
		return res, invalidf("load: device %q not available (the %s engine has %v)", req.Device, b.eng.name(), b.eng.devices())
	}
	if err := compute.CheckDtype(b.eng.name(), req.Dtype, b.eng.dtypes()); err != nil {
		return res, fmt.Errorf("load: %w", err)
	}
	cfg, err := model.ParseConfig(req.ModelConfig)
	if err != nil {
		return res, fmt.Errorf("load: %w: %w", compute.ErrInvalidArgument, err)
	}
	specs := paramSpecs(cfg)
	weights, dtype, graphs, err := b.readWeights(req.Checkpoint, cfg, specs)
	if err != nil {
		return res, fmt.Errorf("load: %w", fileError(err))
	}
	if req.Dtype != "" {
		dtype = req.Dtype
	}
	if !slices.Contains(b.eng.dtypes(), dtype) {
		dtype = compute.DtypeFloat32 // a quantized file, computed on its dequantized weights
	}
	span.SetAttributes(attribute.String("dtype", dtype))
	if b.faults.ignorePatchPositions && cfg.PatchPositions {
		weights["embed.patch_pos"] = make([]float32, len(weights["embed.patch_pos"]))
	}
	newSeq, err := b.eng.newLM(b, cfg, specs, weights, dtype, graphs)
	if err != nil {
		return res, fmt.Errorf("load: %w", err)
	}
	sess := &session{cfg: cfg, newSeq: newSeq, caches: map[string]*kvCache{}}
	if cfg.Grounder {
		comp, err := b.eng.newGrounder(b, cfg, specs, weights, dtype, graphs)
		if err != nil {
			return res, fmt.Errorf("load: %w", err)
		}
		sess.grounder = &grounderRunner{cfg: cfg, comp: comp}
	}
	id := b.newID("session")
	b.mu.Lock()
	b.sessions[id] = sess
	b.mu.Unlock()
	b.log.Info("model loaded", "session", id, "checkpoint", req.Checkpoint, "dtype", dtype)
	return compute.LoadResult{Session: id}, nil
}

// readWeights reads a checkpoint's float32 weights: a safetensors
// checkpoint, a GGUF export (model.ReadGGUFFile) or an ONNX export
// (onnx.ReadBundle, whose graphs come back too, for the engine that runs
// them). An export's config must be cfg; quantized weights come back
// dequantized, and an export's dtype is the default to hold them in.
func (b *Backend) readWeights(path string, cfg model.Config, specs []paramSpec) (map[string][]float32, string, map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", nil, err
	}
	head := make([]byte, len(onnx.ManifestName))
	n, _ := io.ReadFull(f, head)
	f.Close()
	head = head[:n]
	switch {
	case model.IsGGUF(head):
		m, err := model.ReadGGUFFile(path, &cfg)
		if err != nil {
			return nil, "", nil, err
		}
		return m.Weights, m.Dtype, nil, nil
	case onnx.IsBundle(head):
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, "", nil, err
		}
		m, err := onnx.ReadBundle(data, &cfg)
		if err != nil {
			return nil, "", nil, fmt.Errorf("%s: %w", path, err)
		}
		return m.Weights, m.Dtype, m.Graphs, nil
	}
	st, err := readCheckpoint(path, specs, nil, false)
	if err != nil {
		return nil, "", nil, err
	}
	return st.weights, compute.DtypeFloat32, nil, nil
}

func (b *Backend) session(id string) (*session, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.sessions[id]
	if !ok {
		return nil, fmt.Errorf("session %q: %w", id, compute.ErrNotFound)
	}
	return s, nil
}

// parallel runs fn(i) for i in [0, n) on up to GOMAXPROCS goroutines.
func parallel(n int, fn func(i int)) {
	workers := min(n, runtime.GOMAXPROCS(0))
	if workers <= 1 {
		for i := range n {
			fn(i)
		}
		return
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Go(func() {
			for i := range next {
				fn(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

func validateSequence(c model.Config, i int, s compute.Sequence) error {
	switch {
	case len(s.Tokens) == 0:
		return fmt.Errorf("sequence %d: no tokens", i)
	case len(s.Tokens) > c.MaxSeq:
		return fmt.Errorf("sequence %d: %d tokens exceed max_seq %d", i, len(s.Tokens), c.MaxSeq)
	case len(s.Images) > c.MaxImages:
		return fmt.Errorf("sequence %d: %d images exceed max_images %d", i, len(s.Images), c.MaxImages)
	}
	patches := 0
	for t, tok := range s.Tokens {
		if tok < 0 || int(tok) >= c.VocabSize {
			return fmt.Errorf("sequence %d: token %d at %d outside vocab %d", i, tok, t, c.VocabSize)
		}
		if tok == c.PatchToken {
			patches++
		}
	}
	for j, img := range s.Images {
		if img.Size != c.ImageSize || len(img.Pixels) != c.ImageSize*c.ImageSize*3 {
			return fmt.Errorf("sequence %d: image %d is %d px with %d values, want %d px (%d values)",
				i, j, img.Size, len(img.Pixels), c.ImageSize, c.ImageSize*c.ImageSize*3)
		}
	}
	if patches > len(s.Images)*c.Patches() {
		return fmt.Errorf("sequence %d: %d patch tokens but %d images of %d patches", i, patches, len(s.Images), c.Patches())
	}
	return nil
}

// Prefill runs prompts, opens a KV cache and returns the last position's
// logits of each sequence.
func (b *Backend) Prefill(ctx context.Context, req compute.PrefillRequest) (res compute.ForwardResult, err error) {
	_, span := b.tracer.Start(ctx, b.eng.name()+".Prefill", trace.WithAttributes(attribute.Int("batch", len(req.Batch)), attribute.Bool("head_only", req.HeadOnly)))
	defer func() { endSpan(span, err) }()
	s, err := b.session(req.Session)
	if err != nil {
		return res, fmt.Errorf("prefill: %w", err)
	}
	if len(req.Batch) == 0 {
		return res, invalidf("prefill: empty batch")
	}
	c := s.cfg
	for i, seq := range req.Batch {
		if err := validateSequence(c, i, seq); err != nil {
			return res, fmt.Errorf("prefill: %w: %w", compute.ErrInvalidArgument, err)
		}
	}
	cache := &kvCache{seqs: make([]*seqState, len(req.Batch))}
	res.Logits = make([][]float32, len(req.Batch))
	if req.WantAttention {
		res.Attention = make([][]float32, len(req.Batch))
	}
	var ground []grounded
	if s.grounder != nil {
		if ground, err = s.grounder.run(req.Batch); err != nil {
			return res, fmt.Errorf("prefill: %w", err)
		}
		res.HeadBoxes = make([]compute.HeadBox, len(req.Batch))
		for i, g := range ground {
			if g.box != nil {
				res.HeadBoxes[i] = compute.HeadBox{Box: [4]float32(g.box), Score: g.score, Exists: g.exists, Name: g.name, OK: true}
			}
		}
		if req.HeadOnly {
			// The head alone: no language model, no cache.
			return compute.ForwardResult{HeadBoxes: res.HeadBoxes}, nil
		}
	}
	errs := make([]error, len(req.Batch))
	parallel(len(req.Batch), func(i int) {
		seq := req.Batch[i]
		st := &seqState{seq: s.newSeq()}
		cache.seqs[i] = st
		rows := len(seq.Images) * c.Patches()
		switch {
		case rows == 0:
		case ground != nil:
			errs[i] = st.seq.setFeats(ground[i].feats, rows)
		default:
			px := make([]float32, 0, len(seq.Images)*c.ImageSize*c.ImageSize*3)
			for _, img := range seq.Images {
				px = append(px, img.Pixels...)
			}
			errs[i] = st.seq.setImages(px, len(seq.Images))
		}
		if errs[i] != nil {
			return
		}
		logits, attn, err := s.step(st, seq.Tokens, rows, req.WantAttention)
		errs[i] = err
		res.Logits[i] = logits
		if req.WantAttention {
			res.Attention[i] = attn
		}
	})
	if err := errors.Join(errs...); err != nil {
		cache.release()
		return res, fmt.Errorf("prefill: %w", err)
	}
	id := b.newID("cache")
	s.mu.Lock()
	s.caches[id] = cache
	s.mu.Unlock()
	res.CacheID = id
	return res, nil
}

// Decode appends one token per sequence to a cache and returns the
// next-token logits.
func (b *Backend) Decode(ctx context.Context, req compute.DecodeRequest) (res compute.ForwardResult, err error) {
	_, span := b.tracer.Start(ctx, b.eng.name()+".Decode", trace.WithAttributes(attribute.Int("batch", len(req.Tokens))))
	defer func() { endSpan(span, err) }()
	s, err := b.session(req.Session)
	if err != nil {
		return res, fmt.Errorf("decode: %w", err)
	}
	s.mu.Lock()
	cache, ok := s.caches[req.CacheID]
	s.mu.Unlock()
	if !ok {
		return res, fmt.Errorf("decode: cache %q of session %q: %w", req.CacheID, req.Session, compute.ErrNotFound)
	}
	cache.mu.Lock()
	defer cache.mu.Unlock()
	c := s.cfg
	if len(req.Tokens) != len(cache.seqs) {
		return res, fmt.Errorf("decode: %d tokens for a cache of %d sequences: %w", len(req.Tokens), len(cache.seqs), compute.ErrFailedPrecondition)
	}
	for i, tok := range req.Tokens {
		if tok < 0 || int(tok) >= c.VocabSize {
			return res, invalidf("decode: token %d of sequence %d outside vocab %d", tok, i, c.VocabSize)
		}
		if cache.seqs[i].seq.length() >= c.MaxSeq {
			return res, fmt.Errorf("decode: sequence %d is full (max_seq %d): %w", i, c.MaxSeq, compute.ErrFailedPrecondition)
		}
	}
	res.CacheID = req.CacheID
	res.Logits = make([][]float32, len(req.Tokens))
	if req.WantAttention {
		res.Attention = make([][]float32, len(req.Tokens))
	}
	errs := make([]error, len(req.Tokens))
	parallel(len(req.Tokens), func(i int) {
		// No image feature rows: a decoded patch token reads its token
		// embedding.
		logits, attn, err := s.step(cache.seqs[i], req.Tokens[i:i+1], 0, req.WantAttention)
		errs[i] = err
		res.Logits[i] = logits
		if req.WantAttention {
			res.Attention[i] = attn
		}
	})
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("decode: %w", err)
	}
	return res, nil
}

// ReleaseCache frees a KV cache.
func (b *Backend) ReleaseCache(ctx context.Context, sessionID, cacheID string) (err error) {
	_, span := b.tracer.Start(ctx, b.eng.name()+".ReleaseCache")
	defer func() { endSpan(span, err) }()
	s, err := b.session(sessionID)
	if err != nil {
		return fmt.Errorf("release cache: %w", err)
	}
	s.mu.Lock()
	k, ok := s.caches[cacheID]
	delete(s.caches, cacheID)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("release cache: cache %q of session %q: %w", cacheID, sessionID, compute.ErrNotFound)
	}
	k.close()
	return nil
}

// Unload frees a session and its caches.
func (b *Backend) Unload(ctx context.Context, sessionID string) (err error) {
	_, span := b.tracer.Start(ctx, b.eng.name()+".Unload")
	defer func() { endSpan(span, err) }()
	b.mu.Lock()
	s, ok := b.sessions[sessionID]
	delete(b.sessions, sessionID)
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("unload: session %q: %w", sessionID, compute.ErrNotFound)
	}
	s.mu.Lock()
	caches := s.caches
	s.caches = map[string]*kvCache{}
	s.mu.Unlock()
	for _, k := range caches {
		k.close()
	}
	return nil
}

// Generate decodes in process with the host's loop (model.DecodeLoop)
// over this backend's own Prefill and Decode: a box answer is one call
// from the host instead of a round trip per token with full logits.
func (b *Backend) Generate(ctx context.Context, req compute.GenerateRequest) (res compute.GenerateResult, err error) {
	ctx, span := b.tracer.Start(ctx, b.eng.name()+".Generate", trace.WithAttributes(attribute.Int("batch", len(req.Batch)), attribute.String("grammar", req.Grammar.Kind)))
	defer func() { endSpan(span, err) }()
	s, err := b.session(req.Session)
	if err != nil {
		return res, fmt.Errorf("generate: %w", err)
	}
	return model.DecodeLoop(ctx, b, s.cfg, req)
}
