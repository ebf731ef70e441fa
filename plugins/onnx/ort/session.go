//go:build onnx

package ort

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"

	onnxruntime "github.com/yalue/onnxruntime_go"
)

// GraphOptimization is how far ORT rewrites a graph when it makes a
// session (fusions, constant folding, layout changes).
type GraphOptimization string

// The graph optimization levels, ORT's GraphOptimizationLevel.
const (
	OptimizeDisable  GraphOptimization = "disable"
	OptimizeBasic    GraphOptimization = "basic"
	OptimizeExtended GraphOptimization = "extended"
	OptimizeAll      GraphOptimization = "all"
)

func (g GraphOptimization) level() (onnxruntime.GraphOptimizationLevel, error) {
	switch g {
	case OptimizeDisable:
		return onnxruntime.GraphOptimizationLevelDisableAll, nil
	case OptimizeBasic:
		return onnxruntime.GraphOptimizationLevelEnableBasic, nil
	case OptimizeExtended:
		return onnxruntime.GraphOptimizationLevelEnableExtended, nil
	case OptimizeAll, "":
		return onnxruntime.GraphOptimizationLevelEnableAll, nil
	}
	return 0, fmt.Errorf("ort: graph optimization %q: want disable, basic, extended or all", string(g))
}

// Provider is the execution provider a session runs on.
type Provider string

// The execution providers.
const (
	ProviderCPU  Provider = "cpu"
	ProviderCUDA Provider = "cuda"
)

// ErrProviderUnavailable is wrapped by NewSession's error when the loaded
// ORT library cannot run the asked execution provider (the library from
// `make onnxruntime` has no CUDA provider).
var ErrProviderUnavailable = errors.New("execution provider unavailable")

// ErrClosed is returned by Run on a closed session.
var ErrClosed = errors.New("ort: session closed")

// SessionOptions configures NewSession. The zero value is ORT's defaults
// on the CPU with every graph optimization.
type SessionOptions struct {
	// IntraOpThreads is the size of the thread pool one operator (a
	// MatMul) is split over. 0: ORT's default, one per physical core.
	IntraOpThreads int
	// InterOpThreads, when above 1, runs independent branches of the
	// graph at once on that many threads (ORT's parallel execution mode;
	// the default sequential mode has no use for them). 0 or 1: sequential.
	InterOpThreads int
	// GraphOptimization: disable, basic, extended or all; "" is all.
	GraphOptimization GraphOptimization
	// Provider: cpu or cuda; "" is cpu. With cuda, ORT places on the GPU
	// the nodes its CUDA provider implements and the rest on the CPU.
	Provider Provider
	// CUDADevice is the GPU's ordinal for the cuda provider.
	CUDADevice int
}

// Session is a model loaded into ORT. Run may be called from several
// goroutines at once: ORT guarantees that a session's Run is thread-safe
// (each call has its own inputs, outputs and intermediate buffers; the
// weights and the execution plan are read-only after creation), and this
// package keeps no state per call. Concurrent calls share the session's
// intra-op thread pool rather than getting one each. Close waits for
// running calls to return.
type Session struct {
	mu      sync.RWMutex // Run holds it for reading, Close for writing
	s       *onnxruntime.DynamicAdvancedSession
	inputs  []string
	outputs []string
}

// NewSession makes a session from a model's ONNX bytes (ORT copies what it
// needs; onnxBytes may be reused afterwards). inputNames and outputNames
// fix the order of Run's inputs and outputs; each must be a graph input or
// output of the model, which ORT checks at Run. It loads ORT first when no
// Init has (Init(Options{})).
func NewSession(onnxBytes []byte, inputNames, outputNames []string, o SessionOptions) (*Session, error) {
	if len(inputNames) == 0 || len(outputNames) == 0 {
		return nil, fmt.Errorf("ort: new session: want at least one input and one output name, got inputs %q and outputs %q", inputNames, outputNames)
	}
	if len(onnxBytes) == 0 {
		return nil, errors.New("ort: new session: no ONNX bytes")
	}
	level, err := o.GraphOptimization.level()
	if err != nil {
		return nil, err
	}
	if o.IntraOpThreads < 0 || o.InterOpThreads < 0 {
		return nil, fmt.Errorf("ort: new session: negative thread count (intra-op %d, inter-op %d)", o.IntraOpThreads, o.InterOpThreads)
	}
	if err := Init(Options{}); err != nil {
		return nil, err
	}
	so, err := onnxruntime.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("ort: new session options: %w", err)
	}
	defer so.Destroy()
	if err := so.SetGraphOptimizationLevel(level); err != nil {
		return nil, fmt.Errorf("ort: set graph optimization %s: %w", level, err)
	}
	if o.IntraOpThreads > 0 {
		if err := so.SetIntraOpNumThreads(o.IntraOpThreads); err != nil {
			return nil, fmt.Errorf("ort: set intra-op threads to %d: %w", o.IntraOpThreads, err)
		}
	}
	if o.InterOpThreads > 1 {
		if err := so.SetExecutionMode(onnxruntime.ExecutionModeParallel); err != nil {
			return nil, fmt.Errorf("ort: set parallel execution mode: %w", err)
		}
		if err := so.SetInterOpNumThreads(o.InterOpThreads); err != nil {
			return nil, fmt.Errorf("ort: set inter-op threads to %d: %w", o.InterOpThreads, err)
		}
	}
	switch o.Provider {
	case ProviderCPU, "":
	case ProviderCUDA:
		if err := appendCUDA(so, o.CUDADevice); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("ort: execution provider %q: want cpu or cuda", string(o.Provider))
	}
	s, err := onnxruntime.NewDynamicAdvancedSessionWithONNXData(onnxBytes, inputNames, outputNames, so)
	if err != nil {
		return nil, fmt.Errorf("ort: create session from %d bytes of ONNX: %w", len(onnxBytes), err)
	}
	return &Session{s: s, inputs: slices.Clone(inputNames), outputs: slices.Clone(outputNames)}, nil
}

// appendCUDA asks for ORT's CUDA provider on device. ORT loads the
// provider's own library (libonnxruntime_providers_cuda.so, beside
// libonnxruntime) and CUDA here; its message says which is missing.
func appendCUDA(so *onnxruntime.SessionOptions, device int) error {
	unavailable := func(err error) error {
		return fmt.Errorf("ort: cuda: %w in %s: %w", ErrProviderUnavailable, Version(), err)
	}
	co, err := onnxruntime.NewCUDAProviderOptions()
	if err != nil {
		return unavailable(err)
	}
	defer co.Destroy()
	if err := co.Update(map[string]string{"device_id": strconv.Itoa(device)}); err != nil {
		return unavailable(err)
	}
	if err := so.AppendExecutionProviderCUDA(co); err != nil {
		return unavailable(err)
	}
	return nil
}

// InputNames returns the session's input names, in Run's order.
func (s *Session) InputNames() []string { return slices.Clone(s.inputs) }

// OutputNames returns the session's output names, in Run's order.
func (s *Session) OutputNames() []string { return slices.Clone(s.outputs) }

// Run computes the session's outputs for inputs, given in InputNames'
// order, and returns them in OutputNames' order with the shapes ORT
// computed. ORT reads the inputs' data in place during the call (they are
// not copied and not kept); the outputs are new slices owned by the caller.
// ORT's own message is kept in the error: it names a missing or unknown
// input, a wrong element type or a dimension the model does not take.
func (s *Session) Run(inputs []Value) ([]Value, error) {
	if len(inputs) != len(s.inputs) {
		return nil, fmt.Errorf("ort: run: %d inputs for the session's %d (%s)", len(inputs), len(s.inputs), strings.Join(s.inputs, ", "))
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.s == nil {
		return nil, ErrClosed
	}
	in := make([]onnxruntime.Value, len(inputs))
	defer release(in)
	for i, v := range inputs {
		t, err := v.tensor()
		if err != nil {
			return nil, fmt.Errorf("ort: run: input %q: %w", s.inputs[i], err)
		}
		in[i] = t
	}
	out := make([]onnxruntime.Value, len(s.outputs)) // nil: ORT allocates each
	defer release(out)
	if err := s.s.Run(in, out); err != nil {
		if errors.Is(err, onnxruntime.ZeroShapeLengthError) {
			err = fmt.Errorf("%w (a scalar output, which onnxruntime_go cannot return: make it shape [1] in the model)", err)
		}
		return nil, fmt.Errorf("ort: run with %s: %w", describe(s.inputs, inputs), err)
	}
	res := make([]Value, len(out))
	for i, o := range out {
		v, err := fromORT(o)
		if err != nil {
			return nil, fmt.Errorf("ort: run: output %q: %w", s.outputs[i], err)
		}
		res[i] = v
	}
	return res, nil
}

// Close releases the session; it waits for running calls of Run. Run
// afterwards returns ErrClosed; closing again does nothing.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s == nil {
		return nil
	}
	err := s.s.Destroy()
	s.s = nil
	if err != nil {
		return fmt.Errorf("ort: close session: %w", err)
	}
	return nil
}

// release destroys ORT values. onnxruntime_go leaves a typed nil (a nil
// *Tensor in a non-nil Value) where it failed to convert an output.
func release(vs []onnxruntime.Value) {
	for _, v := range vs {
		if v != nil && !reflect.ValueOf(v).IsNil() {
			v.Destroy()
		}
	}
}

// describe lists inputs as "tokens int64[2 3], x float32[2 3 16]" for
// errors.
func describe(names []string, vs []Value) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = names[i] + " " + v.String()
	}
	return strings.Join(parts, ", ")
}

// IOInfo describes one of a model's graph inputs or outputs.
type IOInfo struct {
	Name string
	// Type is the element type as ORT names it ("float32", "int64"), or
	// the kind of value for a non-tensor ("sequence").
	Type string
	// Shape has -1 for a dynamic dimension.
	Shape []int64
}

// Describe lists a model's graph inputs and outputs as ORT reads them. It
// builds a throwaway session, so it costs about as much as NewSession.
func Describe(onnxBytes []byte) (inputs, outputs []IOInfo, err error) {
	if err := Init(Options{}); err != nil {
		return nil, nil, err
	}
	in, out, err := onnxruntime.GetInputOutputInfoWithONNXData(onnxBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("ort: describe %d bytes of ONNX: %w", len(onnxBytes), err)
	}
	conv := func(infos []onnxruntime.InputOutputInfo) []IOInfo {
		r := make([]IOInfo, len(infos))
		for i, x := range infos {
			r[i] = IOInfo{Name: x.Name, Type: x.OrtValueType.String(), Shape: slices.Clone([]int64(x.Dimensions))}
			if x.OrtValueType == onnxruntime.ONNXTypeTensor {
				r[i].Type = elementName(x.DataType)
			}
		}
		return r
	}
	return conv(in), conv(out), nil
}
