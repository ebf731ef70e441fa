// Package gomlx is groundmesh's compute backend runtime and its pure-Go
// engine: it trains and runs the tinygrounder v1 model (model.Config) on
// GoMLX's Go backend, with no cgo, so that it builds with CGO_ENABLED=0 and
// is the embedded default everywhere. The same runtime computes on
// libtorch when built with the libtorch tag (Config.Engine "libtorch",
// engine_torch.go): only the tensor operations differ (engine.go).
//
// The model is the one definition in package model (model.Net), run two
// ways. Training builds it over GoMLX graph nodes (ops.go), one graph per
// batch shape that runs forward, backward and the AdamW update (with
// gradient clipping) in one call; parameters and optimizer state stay in
// backend buffers between steps and are donated to the next step.
// Inference runs the same definition over eager float32 arrays
// (model/eager) with a KV cache (a small batch decodes far faster that way
// than through per-call graph execution), except Config.Grounder's encoder
// and head, which run as a GoMLX graph; a parity test holds the two
// executions together.
//
// Checkpoints are safetensors files under the canonical parameter names
// (see params.go for the layout every backend shares), plus AdamW moments
// and the step, written atomically.
package gomlx

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"

	gomlxcompute "github.com/gomlx/compute"
	"github.com/gomlx/compute/gobackend"
	"github.com/gomlx/gomlx/core/graph"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/eager"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// DefaultOptions is the GoMLX Go-backend configuration used when
// Config.Options is empty. GoMLX's default (parallel op execution on a
// worker pool bounded at 2x cores) deadlocked on a 2-core machine, and so
// can "ops_parallel", which shares that pool. "ops_sequential" runs one op at
// a time (matmuls still split across cores) and was the fastest setting
// measured on the shared 2-core dev box; "parallelism=-1" (unbounded
// goroutines, so no pool to deadlock on) was ~15% faster on an idle one.
const DefaultOptions = "ops_sequential"

// Config configures the backend.
type Config struct {
	// Options is the GoMLX Go-backend configuration string, a comma-separated
	// list such as "ops_sequential" or "parallelism=-1" (the part after "go:"
	// in GOMLX_BACKEND). Empty means DefaultOptions.
	Options string
	// Logger receives training and session logs. Nil discards them.
	Logger *slog.Logger
	// Engine computes the model: EngineGoMLX (the default) or, in a
	// binary built with the libtorch tag, EngineLibtorch.
	Engine string
	// Device is the engine's device ("cpu", or "cuda" for libtorch); empty
	// means the engine's first.
	Device string
	// Threads is the libtorch engine's intra-op and OpenBLAS threads; 0
	// means 1 on the CPU and the libraries' defaults on CUDA.
	Threads int
	// GraphOptimization is the onnx engine's ONNX Runtime graph
	// optimization level: disable, basic, extended or all (the default).
	GraphOptimization string
}

// Engine names.
const (
	EngineGoMLX    = "gomlx"
	EngineLibtorch = "libtorch"
	EngineGGML     = "ggml"
	EngineONNX     = "onnx"
)

// Backend is the GoMLX compute backend. It is safe for concurrent use.
type Backend struct {
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer
	ml     gomlxcompute.Backend
	eng    engine

	mu       sync.Mutex
	sessions map[string]*session
	nextID   atomic.Uint64

	// faults makes the backend compute a wrong function on purpose, for
	// the test that shows the conformance matrix can fail; always zero
	// outside it.
	faults faults
}

// faults are deliberate errors, each in one operation of the model.
type faults struct {
	// ignorePatchPositions reads embed.patch_pos (Config.PatchPositions)
	// as zeros, in training and inference alike.
	ignorePatchPositions bool
}

// wrap returns o with the faults in its operations.
func (f faults) wrap(o *ops) model.Ops[*graph.Node] {
	if f.ignorePatchPositions {
		return zeroPatchPositions{o}
	}
	return o
}

type zeroPatchPositions struct{ *ops }

func (z zeroPatchPositions) Param(name string, shape ...int) *graph.Node {
	p := z.ops.Param(name, shape...)
	if name == "embed.patch_pos" {
		return graph.ZerosLike(p)
	}
	return p
}

var _ compute.Backend = (*Backend)(nil)

// New builds a backend: it starts GoMLX's Go backend with cfg.Options.
func New(cfg Config) (*Backend, error) {
	if strings.TrimSpace(cfg.Options) == "" {
		cfg.Options = DefaultOptions
	}
	cfg.Options = strings.TrimPrefix(cfg.Options, "go:")
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ml, err := newGoBackend(cfg.Options)
	if err != nil {
		return nil, fmt.Errorf("start gomlx go backend with %q: %w", cfg.Options, err)
	}
	eng, err := newEngine(cfg)
	if err != nil {
		return nil, err
	}
	return &Backend{
		cfg:      cfg,
		log:      cfg.Logger,
		tracer:   otel.Tracer("groundmesh/plugins/" + eng.name()),
		ml:       ml,
		eng:      eng,
		sessions: map[string]*session{},
	}, nil
}

func init() {
	registerEngine(EngineGoMLX, func(cfg Config) (engine, error) { return gomlxEngine{options: cfg.Options}, nil })
}

// gomlxEngine computes on GoMLX's Go backend (Backend.ml): the training
// step is one compiled graph per batch shape (trainer), the grounder one
// more (grounderRunner).
type gomlxEngine struct{ options string }

func (gomlxEngine) name() string      { return EngineGoMLX }
func (gomlxEngine) devices() []string { return []string{"cpu"} }
func (e gomlxEngine) version() string {
	return fmt.Sprintf("gomlx %s, go backend (%s), %s %s/%s", gomlxVersion(), e.options, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
func (gomlxEngine) newStepper(b *Backend, cfg model.Config, objective string, specs []paramSpec, sel []bool, st *modelState) (stepper, error) {
	return newTrainer(b, cfg, objective, specs, sel, st)
}

// newLM decodes on model/eager: for this model's size one sequence's
// step costs a fraction of a millisecond there, less than a graph call.
func (gomlxEngine) dtypes() []string { return loadDtypes }
func (gomlxEngine) canTrain() bool   { return true }

func (gomlxEngine) newLM(b *Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32, _ string, _ map[string][]byte) (func() lmSeq, error) {
	ops := &eager.Ops{Params: weights}
	return func() lmSeq { return &eagerSeq{cfg: cfg, net: model.NewNet[*eager.Tensor](ops, cfg)} }, nil
}

func (gomlxEngine) newGrounder(b *Backend, cfg model.Config, specs []paramSpec, weights map[string][]float32, _ string, _ map[string][]byte) (grounderCompute, error) {
	return newGrounderExec(b.ml, cfg, specs, weights)
}

// newGoBackend starts GoMLX's Go backend. Its "parallelism=N" option prints
// a line on stdout, which in a go-plugin process carries the handshake, so
// stdout points at stderr meanwhile.
func newGoBackend(opts string) (gomlxcompute.Backend, error) {
	if strings.Contains(opts, "parallelism") {
		stdout := os.Stdout
		os.Stdout = os.Stderr
		defer func() { os.Stdout = stdout }()
	}
	return gobackend.New(opts)
}

// gomlxVersion is the GoMLX module version this binary was built with.
func gomlxVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/gomlx/gomlx" {
				return d.Version
			}
		}
	}
	return "unknown"
}

// loadDtypes are the LoadRequest dtypes the GoMLX and libtorch engines
// implement.
var loadDtypes = []string{compute.DtypeFloat32}

// Describe reports the backend and what it can do.
func (b *Backend) Describe(ctx context.Context) (compute.Description, error) {
	_, span := b.tracer.Start(ctx, b.eng.name()+".Describe")
	defer span.End()
	return compute.Description{
		Backend:      b.eng.name(),
		Version:      b.eng.version(),
		Devices:      b.eng.devices(),
		CanTrain:     b.eng.canTrain(),
		CanAttention: true,
		Dtypes:       b.eng.dtypes(),
		Features:     append(model.AllFeatures(), compute.ObjectiveFeature(compute.ObjectiveGrounder), compute.FeatureGenerate),
	}, nil
}

func (b *Backend) newID(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, b.nextID.Add(1))
}
