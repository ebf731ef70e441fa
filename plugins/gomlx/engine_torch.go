//go:build libtorch

package gomlx

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/libtorch/torch"
)

// The libtorch engine: the model's one definition (model.Net) over
// libtorch tensors (plugins/libtorch/torch, through the gmtorch C shim),
// differentiated by libtorch's autograd, on the CPU or a CUDA device.
// Checkpoints, data, the training loop and the optimizer's arithmetic are
// the runtime's (gmt_adamw computes the same update as trainStepLayout's
// adamW), so a stage trained here resumes on GoMLX and the reverse.
func init() {
	registerEngine(EngineLibtorch, func(cfg Config) (engine, error) {
		dev, err := torch.ParseDevice(cfg.Device)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", compute.ErrInvalidArgument, err)
		}
		// One thread by default on the CPU, for libtorch's own pool and
		// for OpenBLAS's: the demo model's tensors are small, and two
		// pools spinning on two cores ran stage 1 at 16.8 steps/s
		// against 25.1 with one thread each (make bench-engines with
		// OPENBLAS_NUM_THREADS and OMP_NUM_THREADS, docs/experiments.md),
		// and leave the other core to the pipeline. Config.Threads
		// sets both.
		threads := cfg.Threads
		if threads == 0 && dev == torch.CPU {
			threads = 1
		}
		if threads > 0 {
			torch.SetThreads(threads)
			torch.SetBLASThreads(threads)
		}
		return &torchEngine{dev: dev}, nil
	})
}

type torchEngine struct{ dev torch.Device }

func (e *torchEngine) name() string { return EngineLibtorch }
func (e *torchEngine) devices() []string {
	if e.dev == torch.CUDA {
		return []string{"cuda", "cpu"}
	}
	if torch.CUDAAvailable() {
		return []string{"cpu", "cuda"}
	}
	return []string{"cpu"}
}
func (e *torchEngine) version() string {
	return fmt.Sprintf("libtorch %s (gmtorch shim), device %s, %d intra-op threads, %s %s/%s",
		torch.Version(), e.dev, torch.Threads(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// torchParams uploads weights (specs order) into a, trainable where grad.
func torchParams(a *torch.Arena, dev torch.Device, specs []paramSpec, weights map[string][]float32, grad func(i int) bool) (map[string]*torch.Tensor, error) {
	out := make(map[string]*torch.Tensor, len(specs))
	for i, p := range specs {
		w, ok := weights[p.Name]
		if !ok {
			continue
		}
		if len(w) != p.Size() {
			return nil, fmt.Errorf("parameter %s has %d values, want %d", p.Name, len(w), p.Size())
		}
		out[p.Name] = a.FromFloats(w, p.Shape, dev, grad(i))
	}
	return out, nil
}

// torchStepper is the libtorch engine's training step.
type torchStepper struct {
	cfg          model.Config
	dev          torch.Device
	grounderOnly bool
	specs        []paramSpec
	// keep owns the parameters and moments; step owns one step's tensors.
	keep, arena         *torch.Arena
	params              map[string]*torch.Tensor
	trainIdx, frozenIdx []int
	tp, tm, tv, fp      []*torch.Tensor
	decays              []bool
}

func (e *torchEngine) newStepper(b *Backend, cfg model.Config, objective string, specs []paramSpec, sel []bool, st *modelState) (_ stepper, err error) {
	defer torch.Recover(&err)
	s := &torchStepper{cfg: cfg, dev: e.dev, grounderOnly: objective == compute.ObjectiveGrounder, specs: specs,
		keep: torch.NewArena(), arena: torch.NewArena()}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.params, err = torchParams(s.keep, e.dev, specs, st.weights, func(i int) bool { return sel[i] }); err != nil {
		return nil, err
	}
	for i, p := range specs {
		if !sel[i] {
			s.frozenIdx = append(s.frozenIdx, i)
			s.fp = append(s.fp, s.params[p.Name])
			continue
		}
		s.trainIdx = append(s.trainIdx, i)
		s.tp = append(s.tp, s.params[p.Name])
		m, v := st.m[p.Name], st.v[p.Name]
		if m == nil {
			m, v = make([]float32, p.Size()), make([]float32, p.Size())
		}
		s.tm = append(s.tm, s.keep.FromFloats(m, p.Shape, e.dev, false))
		s.tv = append(s.tv, s.keep.FromFloats(v, p.Shape, e.dev, false))
		s.decays = append(s.decays, p.decays())
	}
	if len(s.trainIdx) == 0 {
		return nil, invalidf("build trainer: no parameter is trainable (check Trainable and Frozen prefixes)")
	}
	return s, nil
}

func (s *torchStepper) close() {
	s.arena.Close()
	s.keep.Close()
}

func (s *torchStepper) step(lr, bc1, bc2, wd float32, bt trainBatch) (out stepOut, err error) {
	defer s.arena.Release()
	defer torch.Recover(&err)
	a, c, dev := s.arena, s.cfg, s.dev
	f := func(v []float32, dims ...int) *torch.Tensor { return a.FromFloats(v, dims, dev, false) }
	n := func(v []int32, dims ...int) *torch.Tensor { return a.FromInts(v, dims, dev) }
	in := model.Inputs[*torch.Tensor]{
		Tokens: n(bt.tokens, bt.B, bt.L), PatchIdx: n(bt.patchIdx, bt.B, bt.L), IsPatch: f(bt.isPatch, bt.B, bt.L),
		Images: f(bt.images, bt.K, c.ImageSize, c.ImageSize, 3), TextMask: f(bt.textMask, bt.B, bt.textLen), ImgRow: n(bt.imgRow, bt.K),
	}
	lb := model.Labels[*torch.Tensor]{
		LossIdx: n(bt.lossIdx, len(bt.lossIdx)), LossTgt: n(bt.lossTgt, len(bt.lossTgt)), LossW: f(bt.lossW, len(bt.lossW)),
		PatchTgt: f(bt.patchTgt, bt.B, bt.L), PatchW: f(bt.patchW, bt.B, bt.L),
		PatchBox: f(bt.patchBox, bt.B, bt.L, 4), PatchBoxW: f(bt.patchBoxW, bt.B, bt.L),
		ImgFirst: n(bt.imgFirst, bt.B), RefBox: f(bt.refBox, bt.B, 4), RefW: f(bt.refW, bt.B),
		Exists: f(bt.exists, bt.B), ExistsW: f(bt.existsW, bt.B),
		CellIDs: n(bt.cellIDs, bt.B, c.Patches(), model.CellWords), CellIDW: f(bt.cellIDW, bt.B, c.Patches(), model.CellWords),
		CellW:   f(bt.cellW, bt.B, c.Patches()),
		NameImg: n(bt.nameImg, bt.nameN), NameIDs: n(bt.nameIDs, bt.nameN, nameSlots(c)), NameW: f(bt.nameW, bt.nameN, nameSlots(c)),
	}
	net := model.NewNet[*torch.Tensor](&torch.Ops{Arena: a, Params: s.params, Device: dev}, c)
	ls := net.TrainLosses(in, lb, s.grounderOnly)
	if err := torch.Backward(ls.Objective); err != nil {
		return out, err
	}
	for _, x := range []struct {
		t   *torch.Tensor
		dst *float32
	}{{ls.Answer, &out.loss}, {ls.Ground, &out.ground}, {ls.Box, &out.box}, {ls.Grounder, &out.grounder}} {
		if *x.dst, err = torch.Item(x.t); err != nil {
			return out, err
		}
	}
	opt := torch.AdamW{LR: float64(lr), BC1: float64(bc1), BC2: float64(bc2), WeightDecay: float64(wd),
		Beta1: adamBeta1, Beta2: adamBeta2, Eps: adamEps, Clip: gradClipMax}
	out.gnorm, err = opt.Step(s.tp, s.tm, s.tv, s.decays)
	return out, err
}

func (s *torchStepper) state(step int) (*modelState, error) {
	return hostState(step, s.specs, s.trainIdx, s.frozenIdx, s.tp, s.tm, s.tv, s.fp, (*torch.Tensor).Floats)
}

// torchGrounder is the libtorch engine's grounderCompute.
type torchGrounder struct {
	cfg    model.Config
	dev    torch.Device
	mu     sync.Mutex // one call at a time on the arena
	keep   *torch.Arena
	arena  *torch.Arena
	params map[string]*torch.Tensor
}

func (e *torchEngine) dtypes() []string { return loadDtypes }
func (e *torchEngine) canTrain() bool   { return true }

func (e *torchEngine) newGrounder(b *Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32, _ string, _ map[string][]byte) (_ grounderCompute, err error) {
	defer torch.Recover(&err)
	g := &torchGrounder{cfg: cfg, dev: e.dev, keep: torch.NewArena(), arena: torch.NewArena()}
	var reads []paramSpec
	for _, p := range specs {
		if grounderReads(p.Name) {
			reads = append(reads, p)
		}
	}
	if g.params, err = torchParams(g.keep, e.dev, reads, weights, func(int) bool { return false }); err != nil {
		g.keep.Close()
		return nil, err
	}
	// A session has no Close: the parameters go when the session does.
	runtime.AddCleanup(g, func(k *torch.Arena) { k.Close() }, g.keep)
	runtime.AddCleanup(g, func(k *torch.Arena) { k.Close() }, g.arena)
	return g, nil
}

func (g *torchGrounder) compute(in *grounderInputs) (out grounderOut, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	defer g.arena.Release()
	defer torch.Recover(&err)
	a, c := g.arena, g.cfg
	net := model.NewNet[*torch.Tensor](&torch.Ops{Arena: a, Params: g.params, Device: g.dev}, c)
	f, lg, bx, nm := net.Grounder(model.Inputs[*torch.Tensor]{
		Tokens:   a.FromInts(in.tokens, []int{in.b, in.l}, g.dev),
		TextMask: a.FromFloats(in.mask, []int{in.b, in.l}, g.dev, false),
		ImgRow:   a.FromInts(in.imgRow, []int{in.k}, g.dev),
		Images:   a.FromFloats(in.images, []int{in.k, c.ImageSize, c.ImageSize, 3}, g.dev, false),
	})
	if out.feats, err = f.Floats(); err != nil {
		return grounderOut{}, err
	}
	if out.logits, err = lg.Floats(); err != nil {
		return grounderOut{}, err
	}
	if out.boxes, err = bx.Floats(); err != nil {
		return grounderOut{}, err
	}
	if nm != nil {
		if out.names, err = nm.Floats(); err != nil {
			return grounderOut{}, err
		}
	}
	return out, nil
}

// torchLM holds a session's parameters on the device for its sequences.
type torchLM struct {
	cfg    model.Config
	dev    torch.Device
	keep   *torch.Arena
	params map[string]*torch.Tensor
}

func (e *torchEngine) newLM(b *Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32, _ string, _ map[string][]byte) (_ func() lmSeq, err error) {
	defer torch.Recover(&err)
	lm := &torchLM{cfg: cfg, dev: e.dev, keep: torch.NewArena()}
	if lm.params, err = torchParams(lm.keep, e.dev, specs, weights, func(int) bool { return false }); err != nil {
		lm.keep.Close()
		return nil, err
	}
	runtime.AddCleanup(lm, func(k *torch.Arena) { k.Close() }, lm.keep)
	return func() lmSeq {
		a := torch.NewArena()
		s := &torchSeq{lm: lm, arena: a}
		s.net = model.NewNet[*torch.Tensor](&torch.Ops{Arena: a, Params: lm.params, Device: lm.dev}, cfg)
		return s
	}, nil
}

// torchSeq is lmSeq on libtorch: its arena holds the cache between steps
// (model.Cache.Live) and frees everything else a step made.
type torchSeq struct {
	lm    *torchLM // keeps the parameters alive while the sequence is
	arena *torch.Arena
	net   *model.Net[*torch.Tensor]
	cache model.Cache[*torch.Tensor]
}

func (s *torchSeq) setFeats(feats []float32, rows int) (err error) {
	defer torch.Recover(&err)
	s.cache.Feats = s.arena.FromFloats(feats, []int{rows, s.lm.cfg.Width}, s.lm.dev, false)
	s.cache.HaveFeats = true
	return nil
}

func (s *torchSeq) setImages(px []float32, n int) (err error) {
	defer torch.Recover(&err)
	c := s.lm.cfg
	s.cache.Feats = s.net.ImageFeatures(s.arena.FromFloats(px, []int{n, c.ImageSize, c.ImageSize, 3}, s.lm.dev, false))
	s.cache.HaveFeats = true
	s.arena.KeepOnly(s.cache.Live())
	return nil
}

func (s *torchSeq) step(tokens, idx []int32, isPatch []float32, wantAttn bool) (logits []float32, attn [][]float32, err error) {
	defer torch.Recover(&err)
	n, a, dev := len(tokens), s.arena, s.lm.dev
	s.cache.WantAttn = wantAttn
	out := s.net.Step(&s.cache, a.FromInts(tokens, []int{1, n}, dev), a.FromInts(idx, []int{1, n}, dev), a.FromFloats(isPatch, []int{1, n}, dev, false))
	if logits, err = out.Floats(); err != nil {
		return nil, nil, err
	}
	if wantAttn {
		for _, t := range s.cache.Attn {
			v, err := t.Floats()
			if err != nil {
				return nil, nil, err
			}
			attn = append(attn, v)
		}
	}
	s.arena.KeepOnly(s.cache.Live())
	return logits, attn, nil
}

func (s *torchSeq) length() int { return s.cache.Len }

func (s *torchSeq) release() {
	s.arena.Close()
	s.cache = model.Cache[*torch.Tensor]{}
}
