package computetest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// Toy is a tiny pure-Go backend for testing plumbing: the gRPC contract, the
// host supervisor, the stage runner, the conformance suite itself. It is not
// tinygrounder: its "model" is a position-aware bigram (logits at position t
// are (embed.tokens[tok_t] + embed.pos[t]) · lm_head.w) trained with Adam,
// so it ignores images. It honours the rest of the contract exactly: every
// canonical parameter in its checkpoints (the unused ones stay at their
// initial values), prefix-selected trainable parameters, deterministic data
// order (resume is bitwise exact), cancellation, sessions and KV caches
// (the "cache" is each sequence's length), and the error sentinels.
type Toy struct {
	opts ToyOptions

	mu       sync.Mutex
	next     int
	sessions map[string]*toySession
}

// ToyOptions tune the toy backend for tests.
type ToyOptions struct {
	// StepDelay sleeps this long after every training step, so that tests
	// can interrupt a stage midway.
	StepDelay time.Duration
	// OnStep, when set, is called after every training step (before
	// progress is reported).
	OnStep func(stage string, step int)
	// Features are the architecture options Describe declares; nil
	// declares every one (model.AllFeatures): the toy stands in for a
	// backend in service tests and computes none of them for real.
	Features []string
}

// NewToy returns a toy backend.
func NewToy(opts ToyOptions) *Toy {
	return &Toy{opts: opts, sessions: map[string]*toySession{}}
}

var _ compute.Backend = (*Toy)(nil)

type toySession struct {
	cfg    model.Config
	params map[string][]float32
	caches map[string][]int // cache id -> length of each sequence
}

// Describe implements compute.Backend.
func (b *Toy) Describe(context.Context) (compute.Description, error) {
	features := b.opts.Features
	if features == nil {
		features = append(model.AllFeatures(), compute.FeatureGenerate)
	}
	return compute.Description{Backend: "toy", Version: "1", Devices: []string{"cpu"}, CanTrain: true, Dtypes: []string{"float32"}, Features: features}, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("toy: "+format+": %w", append(args, compute.ErrInvalidArgument)...)
}

func parseConfig(b []byte) (model.Config, error) {
	cfg, err := model.ParseConfig(b)
	if err != nil {
		return model.Config{}, fmt.Errorf("toy: %v: %w", err, compute.ErrInvalidArgument)
	}
	return cfg, nil
}

// initParams draws every canonical parameter from seed: layer-norm scales
// 1, biases 0, the rest N(0, 0.02).
func initParams(cfg model.Config, seed int64) map[string][]float32 {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x70e))
	ps := map[string][]float32{}
	for _, p := range cfg.Params() {
		v := make([]float32, p.Size())
		switch {
		case strings.HasSuffix(p.Name, ".b"):
		case strings.Contains(p.Name, "ln") && strings.HasSuffix(p.Name, ".w"):
			for i := range v {
				v[i] = 1
			}
		default:
			for i := range v {
				v[i] = float32(rng.NormFloat64() * 0.02)
			}
		}
		ps[p.Name] = v
	}
	return ps
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return b
}

func bytesF32(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// toyState is what a checkpoint holds.
type toyState struct {
	params map[string][]float32
	m, v   map[string][]float32 // Adam moments of trainable parameters
	step   int
	loss   float64
}

func readCheckpoint(cfg model.Config, path string) (*toyState, error) {
	tensors, meta, err := model.ReadSafetensorsFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("toy: checkpoint %s: %w", path, compute.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("toy: checkpoint %s: %v: %w", path, err, compute.ErrInvalidArgument)
	}
	st := &toyState{params: map[string][]float32{}, m: map[string][]float32{}, v: map[string][]float32{}}
	for _, t := range tensors {
		if t.DType != "F32" {
			return nil, invalid("checkpoint %s: tensor %s is %s", path, t.Name, t.DType)
		}
		switch {
		case strings.HasPrefix(t.Name, "optim.m."):
			st.m[strings.TrimPrefix(t.Name, "optim.m.")] = bytesF32(t.Data)
		case strings.HasPrefix(t.Name, "optim.v."):
			st.v[strings.TrimPrefix(t.Name, "optim.v.")] = bytesF32(t.Data)
		default:
			st.params[t.Name] = bytesF32(t.Data)
		}
	}
	for _, p := range cfg.Params() {
		if int64(len(st.params[p.Name])) != p.Size() {
			return nil, invalid("checkpoint %s: parameter %s missing or of the wrong size for this config", path, p.Name)
		}
	}
	st.step, _ = strconv.Atoi(meta["step"])
	st.loss, _ = strconv.ParseFloat(meta["loss"], 64)
	return st, nil
}

func writeCheckpoint(cfg model.Config, path string, st *toyState) (compute.Checkpoint, error) {
	var ts []model.Tensor
	for _, p := range cfg.Params() {
		ts = append(ts, model.Tensor{Name: p.Name, DType: "F32", Shape: p.Shape, Data: f32Bytes(st.params[p.Name])})
	}
	for _, p := range cfg.Params() {
		if m, ok := st.m[p.Name]; ok {
			ts = append(ts,
				model.Tensor{Name: "optim.m." + p.Name, DType: "F32", Shape: p.Shape, Data: f32Bytes(m)},
				model.Tensor{Name: "optim.v." + p.Name, DType: "F32", Shape: p.Shape, Data: f32Bytes(st.v[p.Name])})
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ckpt-*")
	if err != nil {
		return compute.Checkpoint{}, fmt.Errorf("toy: write checkpoint: %w", err)
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := model.WriteSafetensors(multiWriter{tmp, h}, ts, map[string]string{
		"step": strconv.Itoa(st.step), "loss": strconv.FormatFloat(st.loss, 'g', -1, 64),
		"config_sha256": cfg.SHA256(), "backend": "toy",
	})
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return compute.Checkpoint{}, fmt.Errorf("toy: write checkpoint: %w", err)
	}
	return compute.Checkpoint{Path: path, Step: st.step, Loss: st.loss, SHA256: hex.EncodeToString(h.Sum(nil)), Bytes: n}, nil
}

type multiWriter struct {
	f *os.File
	h interface{ Write([]byte) (int, error) }
}

func (w multiWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	return w.f.Write(p)
}

type toyData struct {
	tokens, targets [][]int32
}

func loadShards(cfg model.Config, paths []string) (*toyData, error) {
	d := &toyData{}
	for _, p := range paths {
		tensors, _, err := model.ReadSafetensorsFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("toy: shard %s: %w", p, compute.ErrNotFound)
		}
		if err != nil {
			return nil, invalid("shard %s: %v", p, err)
		}
		byName := map[string]model.Tensor{}
		for _, t := range tensors {
			byName[t.Name] = t
		}
		tok, tgt := byName["tokens"], byName["targets"]
		if len(tok.Shape) != 2 || tok.Shape[1] != cfg.MaxSeq || len(tgt.Shape) != 2 || tgt.Shape[0] != tok.Shape[0] {
			return nil, invalid("shard %s: tokens %v / targets %v do not fit max_seq %d", p, tok.Shape, tgt.Shape, cfg.MaxSeq)
		}
		all, allT := model.BytesInt32(tok.Data), model.BytesInt32(tgt.Data)
		for i := range tok.Shape[0] {
			d.tokens = append(d.tokens, all[i*cfg.MaxSeq:(i+1)*cfg.MaxSeq])
			d.targets = append(d.targets, allT[i*cfg.MaxSeq:(i+1)*cfg.MaxSeq])
		}
	}
	if len(d.tokens) == 0 {
		return nil, invalid("no samples in %d shards", len(paths))
	}
	for _, row := range d.tokens {
		for _, id := range row {
			if id < 0 || int(id) >= cfg.VocabSize {
				return nil, invalid("token id %d outside the vocabulary", id)
			}
		}
	}
	return d, nil
}

func selected(name string, trainable, frozen []string) bool {
	ok := len(trainable) == 0
	for _, p := range trainable {
		if strings.HasPrefix(name, p) {
			ok = true
		}
	}
	for _, p := range frozen {
		if strings.HasPrefix(name, p) {
			ok = false
		}
	}
	return ok
}

// lr is linear warmup then cosine decay to a tenth of the peak.
func lr(req compute.TrainRequest, step int) float64 {
	if req.WarmupSteps > 0 && step <= req.WarmupSteps {
		return req.LearningRate * float64(step) / float64(req.WarmupSteps)
	}
	span := max(1, req.Steps-req.WarmupSteps)
	frac := float64(step-req.WarmupSteps) / float64(span)
	return req.LearningRate * (0.1 + 0.9*0.5*(1+math.Cos(math.Pi*min(1, frac))))
}

// Train implements compute.Backend.
func (b *Toy) Train(ctx context.Context, req compute.TrainRequest, progress func(compute.TrainProgress) error) (compute.TrainResult, error) {
	cfg, err := parseConfig(req.ModelConfig)
	if err != nil {
		return compute.TrainResult{}, err
	}
	switch {
	case req.Steps <= 0:
		return compute.TrainResult{}, invalid("steps %d", req.Steps)
	case req.BatchSize <= 0:
		return compute.TrainResult{}, invalid("batch size %d", req.BatchSize)
	case req.LearningRate <= 0:
		return compute.TrainResult{}, invalid("learning rate %v", req.LearningRate)
	case len(req.Shards) == 0:
		return compute.TrainResult{}, invalid("no shards")
	case req.CheckpointDir == "":
		return compute.TrainResult{}, invalid("no checkpoint dir")
	case req.Objective != compute.ObjectiveAll:
		return compute.TrainResult{}, invalid("objective %q: the toy trains every loss only", req.Objective)
	}
	logEvery, ckptEvery := max(1, req.LogEvery), req.CheckpointEvery
	if ckptEvery <= 0 {
		ckptEvery = req.Steps
	}
	data, err := loadShards(cfg, req.Shards)
	if err != nil {
		return compute.TrainResult{}, err
	}
	if err := os.MkdirAll(req.CheckpointDir, 0o755); err != nil {
		return compute.TrainResult{}, fmt.Errorf("toy: checkpoint dir: %w", err)
	}
	var st *toyState
	switch {
	case req.ResumeCheckpoint != "":
		if st, err = readCheckpoint(cfg, req.ResumeCheckpoint); err != nil {
			return compute.TrainResult{}, err
		}
		if st.step > req.Steps {
			return compute.TrainResult{}, invalid("resume checkpoint at step %d is past the stage's %d steps", st.step, req.Steps)
		}
	case req.InitCheckpoint != "":
		if st, err = readCheckpoint(cfg, req.InitCheckpoint); err != nil {
			return compute.TrainResult{}, err
		}
		st.m, st.v, st.step = map[string][]float32{}, map[string][]float32{}, 0
	default:
		st = &toyState{params: initParams(cfg, req.Seed), m: map[string][]float32{}, v: map[string][]float32{}}
	}
	var names []string
	for _, p := range cfg.Params() {
		if selected(p.Name, req.Trainable, req.Frozen) && (p.Name == "embed.tokens" || p.Name == "embed.pos" || p.Name == "lm_head.w") {
			names = append(names, p.Name)
		}
		if selected(p.Name, req.Trainable, req.Frozen) {
			if _, ok := st.m[p.Name]; !ok {
				st.m[p.Name] = make([]float32, p.Size())
				st.v[p.Name] = make([]float32, p.Size())
			}
		}
	}
	// A fixed permutation of the samples; step s reads positions
	// [(s-1)*B, s*B) of it, cyclically: the data order is a function of the
	// step alone, so a resumed stage sees what the uninterrupted one saw.
	perm := rand.New(rand.NewPCG(uint64(req.Seed), 0xda7a)).Perm(len(data.tokens))
	res := compute.TrainResult{FLOPsStep: cfg.FLOPsPerStep(req.BatchSize)}
	first := true
	var final compute.Checkpoint
	for step := st.step + 1; step <= req.Steps; step++ {
		if err := ctx.Err(); err != nil {
			return compute.TrainResult{}, fmt.Errorf("toy: train %s at step %d: %w", req.Stage, step, err)
		}
		start := time.Now()
		batch := make([]int, req.BatchSize)
		for j := range batch {
			batch[j] = perm[((step-1)*req.BatchSize+j)%len(perm)]
		}
		loss, grads, tokens := toyGrad(cfg, st.params, data, batch)
		rate := lr(req, step)
		for _, n := range names {
			adam(st.params[n], grads[n], st.m[n], st.v[n], step, rate, req.WeightDecay)
		}
		st.step, st.loss = step, loss
		if first {
			res.FirstLoss, first = loss, false
		}
		res.LastLoss = loss
		if b.opts.StepDelay > 0 {
			select {
			case <-time.After(b.opts.StepDelay):
			case <-ctx.Done():
			}
		}
		if b.opts.OnStep != nil {
			b.opts.OnStep(req.Stage, step)
		}
		p := compute.TrainProgress{Step: step, Loss: loss, LearningRate: rate,
			TokensPerSec: float64(tokens) / max(time.Since(start).Seconds(), 1e-9)}
		if step%ckptEvery == 0 || step == req.Steps {
			path := filepath.Join(req.CheckpointDir, fmt.Sprintf("%s-step-%06d.safetensors", req.Stage, step))
			c, err := writeCheckpoint(cfg, path, st)
			if err != nil {
				return compute.TrainResult{}, err
			}
			p.Checkpoint, final = &c, c
		}
		if progress != nil && (step%logEvery == 0 || p.Checkpoint != nil) {
			if err := progress(p); err != nil {
				return compute.TrainResult{}, fmt.Errorf("toy: progress: %w", err)
			}
		}
	}
	if final.Path == "" {
		// Resumed at the stage's last step: the resume checkpoint is final.
		c, err := writeCheckpoint(cfg, filepath.Join(req.CheckpointDir, fmt.Sprintf("%s-step-%06d.safetensors", req.Stage, st.step)), st)
		if err != nil {
			return compute.TrainResult{}, err
		}
		final, res.FirstLoss, res.LastLoss = c, st.loss, st.loss
	}
	res.Final, res.Steps = final, st.step
	return res, nil
}

// adam applies one AdamW update in float32.
func adam(w, g, m, v []float32, step int, rate, decay float64) {
	const b1, b2, eps = 0.9, 0.999, 1e-8
	c1 := float32(1 - math.Pow(b1, float64(step)))
	c2 := float32(1 - math.Pow(b2, float64(step)))
	r, d := float32(rate), float32(decay)
	for i := range w {
		m[i] = b1*m[i] + (1-b1)*g[i]
		v[i] = b2*v[i] + (1-b2)*g[i]*g[i]
		w[i] -= r * ((m[i]/c1)/(float32(math.Sqrt(float64(v[i]/c2)))+eps) + d*w[i])
	}
}

// hidden returns embed.tokens[tok] + embed.pos[pos].
func hidden(cfg model.Config, ps map[string][]float32, tok int32, pos int) []float32 {
	w := cfg.Width
	h := make([]float32, w)
	e, p := ps["embed.tokens"][int(tok)*w:], ps["embed.pos"][pos*w:]
	for i := range h {
		h[i] = e[i] + p[i]
	}
	return h
}

// logitsOf returns h · lm_head.w.
func logitsOf(cfg model.Config, ps map[string][]float32, h []float32) []float32 {
	v := cfg.VocabSize
	out := make([]float32, v)
	head := ps["lm_head.w"]
	for i, hi := range h {
		row := head[i*v : (i+1)*v]
		for j := range out {
			out[j] += hi * row[j]
		}
	}
	return out
}

// toyGrad returns the mean cross-entropy over the batch's target positions
// and the gradients of the three parameters the toy uses.
func toyGrad(cfg model.Config, ps map[string][]float32, d *toyData, batch []int) (float64, map[string][]float32, int) {
	w, v := cfg.Width, cfg.VocabSize
	g := map[string][]float32{
		"embed.tokens": make([]float32, cfg.VocabSize*w),
		"embed.pos":    make([]float32, cfg.MaxSeq*w),
		"lm_head.w":    make([]float32, w*v),
	}
	var total float64
	count, tokens := 0, 0
	for _, row := range batch {
		for t, target := range d.targets[row] {
			if d.tokens[row][t] != cfg.PadToken {
				tokens++
			}
			if target >= 0 {
				count++
			}
		}
	}
	if count == 0 {
		return 0, g, tokens
	}
	scale := 1 / float32(count)
	head := ps["lm_head.w"]
	for _, row := range batch {
		for t, target := range d.targets[row] {
			if target < 0 {
				continue
			}
			tok := d.tokens[row][t]
			h := hidden(cfg, ps, tok, t)
			z := logitsOf(cfg, ps, h)
			mx := z[0]
			for _, x := range z {
				mx = max(mx, x)
			}
			var sum float64
			for _, x := range z {
				sum += math.Exp(float64(x - mx))
			}
			total += math.Log(sum) - float64(z[target]-mx)
			// dz = softmax - onehot, scaled by 1/count.
			dz := make([]float32, v)
			for j, x := range z {
				dz[j] = float32(math.Exp(float64(x-mx))/sum) * scale
			}
			dz[target] -= scale
			dh := make([]float32, w)
			for i := range w {
				hr := head[i*v : (i+1)*v]
				gr := g["lm_head.w"][i*v : (i+1)*v]
				var acc float32
				for j := range v {
					gr[j] += h[i] * dz[j]
					acc += hr[j] * dz[j]
				}
				dh[i] = acc
			}
			ge, gp := g["embed.tokens"][int(tok)*w:], g["embed.pos"][t*w:]
			for i := range w {
				ge[i] += dh[i]
				gp[i] += dh[i]
			}
		}
	}
	return total / float64(count), g, tokens
}

// Load implements compute.Backend.
func (b *Toy) Load(_ context.Context, req compute.LoadRequest) (compute.LoadResult, error) {
	if err := compute.CheckDtype("toy", req.Dtype, []string{compute.DtypeFloat32}); err != nil {
		return compute.LoadResult{}, fmt.Errorf("load: %w", err)
	}
	cfg, err := parseConfig(req.ModelConfig)
	if err != nil {
		return compute.LoadResult{}, err
	}
	st, err := readCheckpoint(cfg, req.Checkpoint)
	if err != nil {
		return compute.LoadResult{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.next++
	id := fmt.Sprintf("s%d", b.next)
	b.sessions[id] = &toySession{cfg: cfg, params: st.params, caches: map[string][]int{}}
	return compute.LoadResult{Session: id}, nil
}

func (b *Toy) session(op, id string) (*toySession, error) {
	s, ok := b.sessions[id]
	if !ok {
		return nil, fmt.Errorf("toy: %s: session %q: %w", op, id, compute.ErrNotFound)
	}
	return s, nil
}

// Prefill implements compute.Backend.
func (b *Toy) Prefill(ctx context.Context, req compute.PrefillRequest) (compute.ForwardResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, err := b.session("prefill", req.Session)
	if err != nil {
		return compute.ForwardResult{}, err
	}
	if len(req.Batch) == 0 {
		return compute.ForwardResult{}, invalid("prefill: empty batch")
	}
	out := compute.ForwardResult{}
	lens := make([]int, len(req.Batch))
	for i, seq := range req.Batch {
		n := len(seq.Tokens)
		if n == 0 || n > s.cfg.MaxSeq {
			return compute.ForwardResult{}, invalid("prefill: sequence %d has %d tokens (max_seq %d)", i, n, s.cfg.MaxSeq)
		}
		patches := 0
		for _, t := range seq.Tokens {
			if t < 0 || int(t) >= s.cfg.VocabSize {
				return compute.ForwardResult{}, invalid("prefill: sequence %d: token %d outside the vocabulary", i, t)
			}
			if t == s.cfg.PatchToken {
				patches++
			}
		}
		if patches != len(seq.Images)*s.cfg.Patches() {
			return compute.ForwardResult{}, invalid("prefill: sequence %d has %d patch tokens for %d images", i, patches, len(seq.Images))
		}
		for j, im := range seq.Images {
			if im.Size != s.cfg.ImageSize || len(im.Pixels) != im.Size*im.Size*3 {
				return compute.ForwardResult{}, invalid("prefill: sequence %d image %d: size %d with %d values", i, j, im.Size, len(im.Pixels))
			}
		}
		lens[i] = n
		out.Logits = append(out.Logits, logitsOf(s.cfg, s.params, hidden(s.cfg, s.params, seq.Tokens[n-1], n-1)))
	}
	b.next++
	out.CacheID = fmt.Sprintf("c%d", b.next)
	s.caches[out.CacheID] = lens
	return out, ctx.Err()
}

// Decode implements compute.Backend.
func (b *Toy) Decode(ctx context.Context, req compute.DecodeRequest) (compute.ForwardResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, err := b.session("decode", req.Session)
	if err != nil {
		return compute.ForwardResult{}, err
	}
	lens, ok := s.caches[req.CacheID]
	if !ok {
		return compute.ForwardResult{}, fmt.Errorf("toy: decode: cache %q: %w", req.CacheID, compute.ErrNotFound)
	}
	if len(req.Tokens) != len(lens) {
		return compute.ForwardResult{}, invalid("decode: %d tokens for a batch of %d", len(req.Tokens), len(lens))
	}
	out := compute.ForwardResult{CacheID: req.CacheID}
	for i, t := range req.Tokens {
		if lens[i] >= s.cfg.MaxSeq {
			return compute.ForwardResult{}, fmt.Errorf("toy: decode: sequence %d is full (%d): %w", i, lens[i], compute.ErrFailedPrecondition)
		}
		if t < 0 || int(t) >= s.cfg.VocabSize {
			return compute.ForwardResult{}, invalid("decode: token %d outside the vocabulary", t)
		}
	}
	for i, t := range req.Tokens {
		out.Logits = append(out.Logits, logitsOf(s.cfg, s.params, hidden(s.cfg, s.params, t, lens[i])))
		lens[i]++
	}
	return out, ctx.Err()
}

// ReleaseCache implements compute.Backend.
func (b *Toy) ReleaseCache(_ context.Context, session, cacheID string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, err := b.session("release cache", session)
	if err != nil {
		return err
	}
	if _, ok := s.caches[cacheID]; !ok {
		return fmt.Errorf("toy: release cache %q: %w", cacheID, compute.ErrNotFound)
	}
	delete(s.caches, cacheID)
	return nil
}

// Unload implements compute.Backend.
func (b *Toy) Unload(_ context.Context, session string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, err := b.session("unload", session); err != nil {
		return err
	}
	delete(b.sessions, session)
	return nil
}

// Generate implements compute.Backend with the host's loop
// (model.DecodeLoop) over the toy's own Prefill and Decode.
func (b *Toy) Generate(ctx context.Context, req compute.GenerateRequest) (compute.GenerateResult, error) {
	b.mu.Lock()
	s, err := b.session("generate", req.Session)
	b.mu.Unlock()
	if err != nil {
		return compute.GenerateResult{}, err
	}
	return model.DecodeLoop(ctx, b, s.cfg, req)
}
