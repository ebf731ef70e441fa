//go:build ggml

package gomlx

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/ggml/ggml"
)

// The ggml engine: the model's one definition (model.Net) over ggml graph
// nodes (plugins/ggml/ggml), for inference only, with the weights held in
// float32, float16, q8_0 or q4_0 (LoadRequest.Dtype; a GGUF export's own
// dtype by default). Each prefill or decode step is one ggml graph; the
// KV cache goes from one step's graph to the next through host memory
// (model.Cache.MapLive). Checkpoints, the answer grammars and the decode
// loop are the runtime's, as for the other engines.
func init() {
	registerEngine(EngineGGML, func(cfg Config) (engine, error) {
		if cfg.Device != "" && cfg.Device != "cpu" {
			return nil, fmt.Errorf("%w: the ggml engine computes on the cpu, not %q", compute.ErrInvalidArgument, cfg.Device)
		}
		// One thread by default, as for libtorch: the demo model's
		// matrices are small, and a second thread on 2 cores spins more
		// than it computes.
		threads := cfg.Threads
		if threads == 0 {
			threads = 1
		}
		ggml.SetThreads(threads)
		return &ggmlEngine{}, nil
	})
}

type ggmlEngine struct{}

func (e *ggmlEngine) name() string      { return EngineGGML }
func (e *ggmlEngine) devices() []string { return []string{"cpu"} }
func (e *ggmlEngine) dtypes() []string  { return model.Dtypes }
func (e *ggmlEngine) canTrain() bool    { return false }
func (e *ggmlEngine) version() string {
	v := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/ollama/ollama" {
				v = d.Version
			}
		}
	}
	return fmt.Sprintf("ggml (vendored in github.com/ollama/ollama %s), cpu, %d threads, %s %s/%s",
		v, ggml.Threads(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// newStepper is never reached: Backend.Train refuses first (canTrain).
func (e *ggmlEngine) newStepper(*Backend, model.Config, string, []paramSpec, []bool, *modelState) (stepper, error) {
	return nil, fmt.Errorf("%w: the ggml engine does not train", compute.ErrUnimplemented)
}

func ggmlParams(specs []paramSpec, weights map[string][]float32, keep func(string) bool) ([]ggml.Param, error) {
	var out []ggml.Param
	for _, p := range specs {
		if !keep(p.Name) {
			continue
		}
		w, ok := weights[p.Name]
		if !ok {
			return nil, fmt.Errorf("no weights for parameter %q", p.Name)
		}
		out = append(out, ggml.Param{Name: p.Name, Shape: p.Shape, Data: w})
	}
	return out, nil
}

// graphPool lends graphs (each with its ggml context, allocator and CPU
// backend) to the steps that run at the same time.
type graphPool struct {
	mu   sync.Mutex
	free []*ggml.Graph
}

func (p *graphPool) get() (*ggml.Graph, error) {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		g := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return g, nil
	}
	p.mu.Unlock()
	return ggml.NewGraph()
}

func (p *graphPool) put(g *ggml.Graph) {
	p.mu.Lock()
	p.free = append(p.free, g)
	p.mu.Unlock()
}

func (p *graphPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, g := range p.free {
		g.Close()
	}
	p.free = nil
}

// ggmlModel is a session's weights and graphs.
type ggmlModel struct {
	cfg   model.Config
	w     *ggml.Weights
	pool  graphPool
	close sync.Once
}

func newGGMLModel(cfg model.Config, specs []paramSpec, weights map[string][]float32, dtype string, keep func(string) bool) (*ggmlModel, error) {
	params, err := ggmlParams(specs, weights, keep)
	if err != nil {
		return nil, err
	}
	w, err := ggml.NewWeights(params, dtype)
	if err != nil {
		return nil, err
	}
	m := &ggmlModel{cfg: cfg, w: w}
	// A session has no Close: the weights and graphs go when it does.
	runtime.AddCleanup(m, func(w *ggml.Weights) { w.Close() }, w)
	return m, nil
}

// run builds a computation on a pooled graph with build and computes the
// tensors it returns.
func (m *ggmlModel) run(build func(o *ggml.Ops, g *ggml.Graph) []*ggml.Tensor) (_ [][]float32, err error) {
	g, err := m.pool.get()
	if err != nil {
		return nil, err
	}
	defer m.pool.put(g)
	o := &ggml.Ops{G: g, W: m.w}
	o.Reset()
	defer ggml.Recover(&err)
	return g.Compute(build(o, g)...)
}

type ggmlGrounder struct{ m *ggmlModel }

func (e *ggmlEngine) newGrounder(b *Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32, dtype string, _ map[string][]byte) (grounderCompute, error) {
	m, err := newGGMLModel(cfg, specs, weights, dtype, grounderReads)
	if err != nil {
		return nil, err
	}
	return &ggmlGrounder{m: m}, nil
}

func (gr *ggmlGrounder) compute(in *grounderInputs) (grounderOut, error) {
	c := gr.m.cfg
	out, err := gr.m.run(func(o *ggml.Ops, g *ggml.Graph) []*ggml.Tensor {
		net := model.NewNet[*ggml.Tensor](o, c)
		f, lg, bx, nm := net.Grounder(model.Inputs[*ggml.Tensor]{
			Tokens:   g.InputInts(in.tokens, in.b, in.l),
			TextMask: g.Input(in.mask, in.b, in.l),
			ImgRow:   g.InputInts(in.imgRow, in.k),
			Images:   g.Input(in.images, in.k, c.ImageSize, c.ImageSize, 3),
		})
		if nm != nil {
			return []*ggml.Tensor{f, lg, bx, nm}
		}
		return []*ggml.Tensor{f, lg, bx}
	})
	if err != nil {
		return grounderOut{}, err
	}
	res := grounderOut{feats: out[0], logits: out[1], boxes: out[2]}
	if len(out) > 3 {
		res.names = out[3]
	}
	return res, nil
}

func (e *ggmlEngine) newLM(b *Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32, dtype string, _ map[string][]byte) (func() lmSeq, error) {
	m, err := newGGMLModel(cfg, specs, weights, dtype, func(string) bool { return true })
	if err != nil {
		return nil, err
	}
	return func() lmSeq { return &ggmlSeq{m: m, host: map[*ggml.Tensor][]float32{}} }, nil
}

// ggmlSeq is lmSeq on ggml: between steps the cache's tensors live on the
// host (host, by the tensor that stood for them in the last graph), and
// each step feeds them into its graph again.
type ggmlSeq struct {
	m     *ggmlModel
	cache model.Cache[*ggml.Tensor]
	host  map[*ggml.Tensor][]float32
}

// into carries the cache into graph g.
func (s *ggmlSeq) into(g *ggml.Graph) {
	s.cache.MapLive(func(t *ggml.Tensor) *ggml.Tensor {
		if t == nil {
			return nil
		}
		v, ok := s.host[t]
		if !ok {
			panic(&ggml.Error{Op: "cache", Msg: "a cached tensor has no host copy"})
		}
		return g.Input(v, t.Dims()...)
	})
}

// keep records the values of the cache's live tensors, computed as
// vals (in Live's order, nils skipped).
func (s *ggmlSeq) keep(live []*ggml.Tensor, vals [][]float32) {
	clear(s.host)
	i := 0
	for _, t := range live {
		if t == nil {
			continue
		}
		s.host[t] = vals[i]
		i++
	}
}

func nonNil(ts []*ggml.Tensor) []*ggml.Tensor {
	var out []*ggml.Tensor
	for _, t := range ts {
		if t != nil {
			out = append(out, t)
		}
	}
	return out
}

func (s *ggmlSeq) setFeats(feats []float32, rows int) error {
	// t only names the rows until the next step feeds them in.
	_, err := s.m.run(func(o *ggml.Ops, g *ggml.Graph) []*ggml.Tensor {
		t := g.Input(feats, rows, s.m.cfg.Width)
		s.cache.Feats, s.cache.HaveFeats = t, true
		s.host[t] = feats
		return nil
	})
	return err
}

func (s *ggmlSeq) setImages(px []float32, n int) error {
	c := s.m.cfg
	var live []*ggml.Tensor
	out, err := s.m.run(func(o *ggml.Ops, g *ggml.Graph) []*ggml.Tensor {
		s.into(g)
		net := model.NewNet[*ggml.Tensor](o, c)
		s.cache.Feats, s.cache.HaveFeats = net.ImageFeatures(g.Input(px, n, c.ImageSize, c.ImageSize, 3)), true
		live = s.cache.Live()
		return nonNil(live)
	})
	if err != nil {
		return err
	}
	s.keep(live, out)
	return nil
}

func (s *ggmlSeq) step(tokens, idx []int32, isPatch []float32, wantAttn bool) (logits []float32, attn [][]float32, err error) {
	n, c := len(tokens), s.m.cfg
	var live []*ggml.Tensor
	var nAttn int
	out, err := s.m.run(func(o *ggml.Ops, g *ggml.Graph) []*ggml.Tensor {
		s.into(g)
		net := model.NewNet[*ggml.Tensor](o, c)
		s.cache.WantAttn = wantAttn
		lg := net.Step(&s.cache, g.InputInts(tokens, 1, n), g.InputInts(idx, 1, n), g.Input(isPatch, 1, n))
		outs := []*ggml.Tensor{lg}
		if wantAttn {
			outs = append(outs, s.cache.Attn...)
			nAttn = len(s.cache.Attn)
		}
		live = s.cache.Live()
		return append(outs, nonNil(live)...)
	})
	if err != nil {
		return nil, nil, err
	}
	s.keep(live, out[1+nAttn:])
	return out[0], out[1 : 1+nAttn], nil
}

func (s *ggmlSeq) length() int { return s.cache.Len }

func (s *ggmlSeq) release() {
	s.cache = model.Cache[*ggml.Tensor]{}
	clear(s.host)
}
