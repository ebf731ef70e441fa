package gomlx

import (
	"fmt"
	"sort"
	"sync"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// An engine is what computes the model inside this backend. Everything
// else (the compute contract, data, checkpoints, the training loop, the
// answer grammars and the eager language model's KV-cache decoding) is
// shared, so a second engine adds only its tensor operations. The default
// engine is GoMLX ("gomlx"); the libtorch build (build tag libtorch, see
// engine_torch.go) adds "libtorch".
type engine interface {
	// name is the backend name Describe reports and checkpoints record.
	name() string
	// version describes the engine and its configuration.
	version() string
	// devices are the devices it can compute on; the first is the default.
	devices() []string
	// newStepper builds one stage's training step over the parameters
	// (specs, trainable where sel) from st.
	newStepper(b *Backend, cfg model.Config, objective string, specs []paramSpec, sel []bool, st *modelState) (stepper, error)
	// newGrounder builds Config.Grounder's inference (encoder and head)
	// over weights, held in dtype (one of dtypes()).
	newGrounder(b *Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32, dtype string, graphs map[string][]byte) (grounderCompute, error)
	// graphs are an ONNX export's own graphs by name (model/onnx), for
	// the engine that runs them; nil for other files.
	// newLM returns a constructor of the language model's per-sequence
	// caches (lmSeq) over weights held in dtype, for inference.
	newLM(b *Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32, dtype string, graphs map[string][]byte) (func() lmSeq, error)
	// dtypes are the LoadRequest dtypes it holds weights in.
	dtypes() []string
	// canTrain reports whether newStepper works.
	canTrain() bool
}

// stepper is one stage's training step and its parameters: forward,
// backward and the AdamW update (gradClipMax, adamBeta1/2, adamEps, and
// weight decay where paramSpec.decays) per call.
type stepper interface {
	step(lr, bc1, bc2, wd float32, bt trainBatch) (stepOut, error)
	// state copies the parameters and moments to host memory.
	state(step int) (*modelState, error)
	close()
}

// hostState assembles a stepper's modelState: the trainable parameters
// (specs[trainIdx[j]]) with their moments tp[j], tm[j], tv[j], and the
// frozen ones (specs[frozenIdx[j]]) fp[j], each copied to host memory by
// read.
func hostState[T any](step int, specs []paramSpec, trainIdx, frozenIdx []int, tp, tm, tv, fp []T, read func(T) ([]float32, error)) (*modelState, error) {
	st := &modelState{weights: map[string][]float32{}, m: map[string][]float32{}, v: map[string][]float32{}, step: step}
	copyTo := func(dst map[string][]float32, what, name string, x T) error {
		v, err := read(x)
		if err != nil {
			return fmt.Errorf("copy %s %s: %w", what, name, err)
		}
		dst[name] = v
		return nil
	}
	for j, i := range trainIdx {
		name := specs[i].Name
		if err := copyTo(st.weights, "parameter", name, tp[j]); err != nil {
			return nil, err
		}
		if err := copyTo(st.m, "moment", name, tm[j]); err != nil {
			return nil, err
		}
		if err := copyTo(st.v, "moment", name, tv[j]); err != nil {
			return nil, err
		}
	}
	for j, i := range frozenIdx {
		if err := copyTo(st.weights, "parameter", specs[i].Name, fp[j]); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// grounderCompute runs the grounder's encoder and head on one batch of
// host arrays (grounderInputs).
type grounderCompute interface {
	compute(in *grounderInputs) (grounderOut, error)
}

// grounderOut is one grounderCompute call's outputs, flat: the projected
// patch features [K*P, Width], the pointer logits [K, P], the boxes [K,
// P, 4] and, with Config.GrounderNameSlots, the name logits [K, Slots,
// VocabSize] (nil without).
type grounderOut struct {
	feats, logits, boxes, names []float32
}

var (
	enginesMu sync.Mutex
	engines   = map[string]func(Config) (engine, error){}
)

// registerEngine makes an engine selectable by name (Config.Engine).
func registerEngine(name string, mk func(Config) (engine, error)) {
	enginesMu.Lock()
	defer enginesMu.Unlock()
	engines[name] = mk
}

// Engines lists the engines this binary was built with.
func Engines() []string {
	enginesMu.Lock()
	defer enginesMu.Unlock()
	var out []string
	for n := range engines {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func newEngine(cfg Config) (engine, error) {
	name := cfg.Engine
	if name == "" {
		name = EngineGoMLX
	}
	enginesMu.Lock()
	mk, ok := engines[name]
	enginesMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: engine %q is not built into this binary (built: %v; libtorch needs the libtorch build tag)", compute.ErrInvalidArgument, name, Engines())
	}
	return mk(cfg)
}
