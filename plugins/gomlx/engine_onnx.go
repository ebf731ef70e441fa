//go:build onnx

package gomlx

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/onnx"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/onnx/ort"
)

// The ONNX engine: the model's one definition exported as ONNX graphs
// (model/onnx) and run by ONNX Runtime (plugins/onnx/ort), for inference
// only. An ONNX export's own graphs are run as the file holds them; a
// checkpoint (or a GGUF export) is exported to graphs in memory when it
// loads. Each prefill or decode step is one ORT run; the KV cache goes
// from one run to the next as the step graph's past and present tensors.
func init() {
	registerEngine(EngineONNX, func(cfg Config) (engine, error) {
		e := &onnxEngine{device: "cpu", opts: ort.SessionOptions{
			IntraOpThreads:    cfg.Threads,
			GraphOptimization: ort.GraphOptimization(cfg.GraphOptimization),
		}}
		switch cfg.Device {
		case "", "cpu":
		case "cuda":
			e.device, e.opts.Provider = "cuda", ort.ProviderCUDA
		default:
			return nil, fmt.Errorf("%w: the onnx engine computes on cpu or cuda, not %q", compute.ErrInvalidArgument, cfg.Device)
		}
		if e.opts.IntraOpThreads == 0 && e.device == "cpu" {
			// One thread, as for libtorch and ggml: this model's
			// operators are too small to split.
			e.opts.IntraOpThreads = 1
		}
		if err := ort.Init(ort.Options{}); err != nil {
			return nil, err
		}
		return e, nil
	})
}

type onnxEngine struct {
	device string
	opts   ort.SessionOptions
}

var onnxDtypes = []string{model.DtypeF32, model.DtypeF16}

func (e *onnxEngine) name() string      { return EngineONNX }
func (e *onnxEngine) devices() []string { return []string{e.device} }
func (e *onnxEngine) dtypes() []string  { return onnxDtypes }
func (e *onnxEngine) canTrain() bool    { return false }
func (e *onnxEngine) version() string {
	opt := e.opts.GraphOptimization
	if opt == "" {
		opt = ort.OptimizeAll
	}
	return fmt.Sprintf("%s, %s, %d intra-op threads, graph optimization %s, ONNX IR %d opset %d, %s %s/%s",
		ort.Version(), e.device, e.opts.IntraOpThreads, opt, onnx.IRVersion, onnx.Opset, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func (e *onnxEngine) newStepper(*Backend, model.Config, string, []paramSpec, []bool, *modelState) (stepper, error) {
	return nil, fmt.Errorf("%w: the onnx engine does not train", compute.ErrUnimplemented)
}

// onnxGraph is one graph's session and its input and output names.
type onnxGraph struct {
	s       *ort.Session
	inputs  []string
	outputs []string
}

// run feeds the named values the graph takes (a graph reads only what
// its outputs need, so some of in may go unused) and returns its outputs
// by name.
func (g *onnxGraph) run(in map[string]ort.Value) (map[string]ort.Value, error) {
	vals := make([]ort.Value, len(g.inputs))
	for i, n := range g.inputs {
		v, ok := in[n]
		if !ok {
			return nil, fmt.Errorf("onnx graph input %q not given", n)
		}
		vals[i] = v
	}
	outs, err := g.s.Run(vals)
	if err != nil {
		return nil, err
	}
	m := make(map[string]ort.Value, len(outs))
	for i, n := range g.outputs {
		m[n] = outs[i]
	}
	return m, nil
}

// newONNXGraphs opens sessions on the named graphs of cfg: a bundle's own
// (graphs), or exported from weights in dtype.
func (e *onnxEngine) newONNXGraphs(cfg model.Config, weights map[string][]float32, dtype string, graphs map[string][]byte, names ...string) (map[string]*onnxGraph, error) {
	defs := map[string]onnx.Graph{}
	for _, g := range onnx.Graphs(cfg) {
		defs[g.Name] = g
	}
	out := map[string]*onnxGraph{}
	for _, name := range names {
		data, ok := graphs[name]
		if !ok {
			def, ok := defs[name]
			if !ok {
				return nil, fmt.Errorf("onnx engine: the config has no %s graph", name)
			}
			ex, err := onnx.Export(def, weights, dtype, nil)
			if err != nil {
				return nil, err
			}
			data = ex.Model
		}
		// The names from the protobuf: ort.Describe would build a session
		// only to throw it away.
		g := &onnxGraph{}
		var err error
		if g.inputs, g.outputs, err = onnx.IONames(data); err != nil {
			return nil, fmt.Errorf("onnx engine: graph %s: %w", name, err)
		}
		if g.s, err = ort.NewSession(data, g.inputs, g.outputs, e.opts); err != nil {
			return nil, fmt.Errorf("onnx engine: graph %s: %w", name, err)
		}
		// A session has no Close: the ORT sessions go when it does.
		runtime.AddCleanup(g, func(s *ort.Session) { s.Close() }, g.s)
		out[name] = g
	}
	return out, nil
}

func int64s(x []int32) []int64 {
	out := make([]int64, len(x))
	for i, v := range x {
		out[i] = int64(v)
	}
	return out
}

type onnxGrounder struct {
	cfg model.Config
	g   *onnxGraph
}

func (e *onnxEngine) newGrounder(b *Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32, dtype string, graphs map[string][]byte) (grounderCompute, error) {
	gs, err := e.newONNXGraphs(cfg, weights, dtype, graphs, onnx.GraphGrounder)
	if err != nil {
		return nil, err
	}
	return &onnxGrounder{cfg: cfg, g: gs[onnx.GraphGrounder]}, nil
}

func (gr *onnxGrounder) compute(in *grounderInputs) (grounderOut, error) {
	s := int64(gr.cfg.ImageSize)
	out, err := gr.g.run(map[string]ort.Value{
		"tokens":    ort.Int64Tensor(int64s(in.tokens), int64(in.b), int64(in.l)),
		"text_mask": ort.Float32Tensor(in.mask, int64(in.b), int64(in.l)),
		"img_row":   ort.Int64Tensor(int64s(in.imgRow), int64(in.k)),
		"images":    ort.Float32Tensor(in.images, int64(in.k), s, s, 3),
	})
	if err != nil {
		return grounderOut{}, err
	}
	res := grounderOut{feats: out["feats"].F32, logits: out["logits"].F32, boxes: out["boxes"].F32}
	if nm, ok := out["names"]; ok {
		res.names = nm.F32
	}
	return res, nil
}

// onnxLM is a session's language-model graphs.
type onnxLM struct {
	cfg    model.Config
	graphs map[string]*onnxGraph
}

func (e *onnxEngine) newLM(b *Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32, dtype string, graphs map[string][]byte) (func() lmSeq, error) {
	names := []string{onnx.GraphPrefillText, onnx.GraphPrefillImage, onnx.GraphStepText, onnx.GraphStepImage}
	if !cfg.Grounder {
		names = append(names, onnx.GraphImageFeatures)
	}
	gs, err := e.newONNXGraphs(cfg, weights, dtype, graphs, names...)
	if err != nil {
		return nil, err
	}
	m := &onnxLM{cfg: cfg, graphs: gs}
	return func() lmSeq { return &onnxSeq{m: m} }, nil
}

// onnxSeq is lmSeq on ORT: the image feature rows and the last step's
// present tensors (the cache) live on the host between steps.
type onnxSeq struct {
	m     *onnxLM
	feats *ort.Value
	past  []ort.Value
	n     int
}

func (s *onnxSeq) setFeats(feats []float32, rows int) error {
	if rows == 0 || len(feats)%rows != 0 {
		return fmt.Errorf("onnx engine: %d feature values for %d rows", len(feats), rows)
	}
	v := ort.Float32Tensor(feats, int64(rows), int64(len(feats)/rows))
	s.feats = &v
	return nil
}

func (s *onnxSeq) setImages(px []float32, n int) error {
	c := s.m.cfg
	g, ok := s.m.graphs[onnx.GraphImageFeatures]
	if !ok {
		return errors.New("onnx engine: this config's image features come from its grounder")
	}
	out, err := g.run(map[string]ort.Value{"images": ort.Float32Tensor(px, int64(n), int64(c.ImageSize), int64(c.ImageSize), 3)})
	if err != nil {
		return err
	}
	f := out["feats"]
	s.feats = &f
	return nil
}

func (s *onnxSeq) step(tokens, idx []int32, isPatch []float32, wantAttn bool) (logits []float32, attn [][]float32, err error) {
	n := int64(len(tokens))
	name := onnx.GraphPrefillText
	switch {
	case s.n == 0 && s.feats != nil:
		name = onnx.GraphPrefillImage
	case s.n > 0 && s.feats == nil:
		name = onnx.GraphStepText
	case s.n > 0:
		name = onnx.GraphStepImage
	}
	in := map[string]ort.Value{
		"tokens":    ort.Int64Tensor(int64s(tokens), 1, n),
		"patch_idx": ort.Int64Tensor(int64s(idx), 1, n),
		"is_patch":  ort.Float32Tensor(isPatch, 1, n),
	}
	if s.feats != nil {
		in["feats"] = *s.feats
	}
	for i, v := range s.past {
		in[fmt.Sprintf("past.%d", i)] = v
	}
	out, err := s.m.graphs[name].run(in)
	if err != nil {
		return nil, nil, err
	}
	var present []ort.Value
	for i := 0; ; i++ {
		v, ok := out[fmt.Sprintf("present.%d", i)]
		if !ok {
			break
		}
		present = append(present, v)
	}
	if wantAttn {
		for i := 0; ; i++ {
			v, ok := out[fmt.Sprintf("attn.%d", i)]
			if !ok {
				break
			}
			attn = append(attn, v.F32)
		}
	}
	s.past = present
	s.n += int(n)
	return out["logits"].F32, attn, nil
}

func (s *onnxSeq) length() int { return s.n }

func (s *onnxSeq) release() {
	s.feats, s.past, s.n = nil, nil, 0
}
