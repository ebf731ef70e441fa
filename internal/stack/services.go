package stack

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/command"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/services/eval"
	"github.com/groundmesh/groundmesh/services/ground"
	"github.com/groundmesh/groundmesh/services/ingest"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/train"
)

// Services holds the service use cases and the compute plugin hosts they
// share. The services do not know each other; this is where the one
// dependency between them (synth reads what ingest validated) is wired.
type Services struct {
	Ingest *ingest.Service
	Synth  *synth.Service
	Train  *train.Service
	Eval   *eval.Service
	Ground *ground.Service

	groundConsumer *ground.Consumer
	cfg            *Config // the services, queues, backends and worker id to run
	pluginDir      string
	logger         *slog.Logger
	mu             sync.Mutex
	hosts          map[string]*compute.Host
	backends       map[string]compute.Backend // hosts with their metrics
}

// pluginBinaries maps backend names to plugin executables.
var pluginBinaries = map[string]string{
	"gomlx":    "groundmesh-gomlx",
	"libtorch": "groundmesh-libtorch",
	"ggml":     "groundmesh-ggml",
	"onnx":     "groundmesh-onnx",
}

// pluginEnv is the environment each plugin reads from the host's.
var pluginEnv = map[string][]string{
	"gomlx":    {"GOMLX_BACKEND"},
	"libtorch": {"GROUNDMESH_LIBTORCH_THREADS"},
	"ggml":     {"GROUNDMESH_GGML_THREADS"},
	"onnx":     {"GROUNDMESH_ONNX_THREADS", "GROUNDMESH_ONNX_OPTIMIZATION", "GROUNDMESH_ONNX_DEVICE", "GROUNDMESH_ONNXRUNTIME_LIB"},
}

// BackendAvailable reports whether the plugin of a backend (a name as
// Backend takes it) is built in pluginDir.
func BackendAvailable(pluginDir, name string) bool {
	base, _, _ := strings.Cut(name, ":")
	bin, ok := pluginBinaries[base]
	if !ok {
		return false
	}
	_, err := os.Stat(filepath.Join(pluginDir, bin))
	return err == nil
}

// Backend returns the plugin host of a backend, starting it on first use:
// name is a backend ("gomlx", "libtorch") or a backend and its device
// ("libtorch:cuda", see train.BackendKey), each its own plugin process.
// The host restarts a crashed plugin; callers get ErrPluginCrashed.
func (sv *Services) Backend(name string) (compute.Backend, error) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if b, ok := sv.backends[name]; ok {
		return b, nil
	}
	if sv.cfg != nil && !sv.cfg.backendAllowed(name) {
		// Not the request's fault: the command reached a worker that
		// does not run its backend; a retry may reach one that does.
		return nil, fmt.Errorf("backend %q: worker %s runs only backends %s (--backends); route the command to a queue whose workers run it",
			name, sv.cfg.WorkerID, strings.Join(sv.cfg.Backends, ", "))
	}
	base, device, _ := strings.Cut(name, ":")
	bin, ok := pluginBinaries[base]
	if !ok {
		return nil, fmt.Errorf("backend %q: not available in this build (have: %s): %w", name, strings.Join(slices.Sorted(maps.Keys(pluginBinaries)), ", "), train.ErrInvalidRequest)
	}
	path := filepath.Join(sv.pluginDir, bin)
	if _, err := os.Stat(path); err != nil {
		hint := "run `make build` or set GROUNDMESH_PLUGIN_DIR"
		if base == "libtorch" {
			hint = "run `make libtorch` (it needs Debian's libtorch-dev) or set GROUNDMESH_PLUGIN_DIR"
		}
		return nil, fmt.Errorf("backend %q: plugin binary %s: %w (%s)", name, path, err, hint)
	}
	env := []string{}
	for _, k := range pluginEnv[base] {
		if v := os.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	if device != "" {
		if base != "libtorch" {
			return nil, fmt.Errorf("backend %q: device %q: only libtorch takes a device: %w", name, device, train.ErrInvalidRequest)
		}
		env = append(env, "GROUNDMESH_LIBTORCH_DEVICE="+device)
	}
	h, err := compute.NewHost(compute.HostConfig{Path: path, Env: env, Logger: sv.logger.With("plugin", name)})
	if err != nil {
		return nil, fmt.Errorf("start %s plugin: %w", name, err)
	}
	// Every caller's plugin calls are counted and timed here, once
	// (groundmesh_compute_call_duration_seconds on GET /metrics).
	b, err := compute.WithMetrics(h, name, nil)
	if err != nil {
		_ = h.Close()
		return nil, fmt.Errorf("%s plugin metrics: %w", name, err)
	}
	sv.hosts[name], sv.backends[name] = h, b
	return b, nil
}

func newServices(ctx context.Context, s *Stack) (*Services, error) {
	sv := &Services{cfg: &s.cfg, pluginDir: s.cfg.PluginDir, logger: s.Logger, hosts: map[string]*compute.Host{}, backends: map[string]compute.Backend{}}
	if err := sv.build(ctx, s, sv.Backend); err != nil {
		return nil, err
	}
	return sv, nil
}

// build makes the services, which find their compute backends through
// backends: the plugin hosts (Backend), or in tests the contract's toy in
// process, so that they can drive the real handlers without a plugin.
//
// Only the services of s's Config.Services are made (all by default); a
// synth service without ingest reads datasets through services/ingest's
// reader, which serves no command.
func (sv *Services) build(ctx context.Context, s *Stack, backends func(name string) (compute.Backend, error)) error {
	if sv.cfg == nil {
		sv.cfg = &s.cfg
	}
	runs := s.cfg.runs
	if len(s.cfg.Services) == 0 {
		runs = func(string) bool { return true }
	}
	var err error
	if runs(ServiceIngest) || runs(ServiceSynth) {
		in, err := ingest.New(ingest.Config{DataDir: s.cfg.DataDir, Logger: s.Logger.With("service", "ingest")}, s.Pool)
		if err != nil {
			return err
		}
		if runs(ServiceIngest) {
			sv.Ingest = in
		}
		if runs(ServiceSynth) {
			sv.Synth, err = synth.New(synth.Config{DataDir: s.cfg.DataDir, Blob: s.Blob, Logger: s.Logger.With("service", "synth")}, s.Pool, in)
			if err != nil {
				return err
			}
		}
	}
	if runs(ServiceTrain) {
		sv.Train, err = train.New(train.Config{
			DataDir: filepath.Join(s.cfg.DataDir, "train"), Blob: s.Blob, Backends: backends,
			Synth: synthSetReader(s), Logger: s.Logger.With("service", "train"),
		}, s.Pool)
		if err != nil {
			return err
		}
	}
	if runs(ServiceEval) {
		if err := sv.buildEval(s, backends); err != nil {
			return err
		}
	}
	if runs(ServiceGround) {
		sv.Ground, err = ground.New(ground.Config{
			Catalog: ground.NewPGCatalog(s.Pool), Backends: backends, Blob: s.Blob,
			Limits: s.cfg.Ground.Limits, Batch: s.cfg.Ground.Batch, Logger: s.Logger.With("service", "ground"),
			ExportBackends: sv.exportBackends(),
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// exportBackends is services/ground's ExportBackends: the configured
// ones, else each default whose plugin is built here and allowed to this
// process (without it, an export is served on its run's backend).
func (sv *Services) exportBackends() map[string]string {
	if c := sv.cfg.Ground.ExportBackends; len(c) > 0 {
		return c
	}
	out := map[string]string{}
	for format := range events.ExportDtypes {
		// Each format's default (eval's export_backend default).
		b := events.ExportBackend(format)
		if BackendAvailable(sv.pluginDir, b) && sv.cfg.backendAllowed(b) {
			out[format] = b
		}
	}
	return out
}

// buildEval makes services/eval, which loads the run's backend for its
// predictions and reads the synth set's records through services/synth's
// shard reader.
func (sv *Services) buildEval(s *Stack, backends func(name string) (compute.Backend, error)) error {
	var err error
	predictors := func(ctx context.Context, ck eval.Checkpoint, run eval.RunInfo) (eval.Predictor, error) {
		// The backend the run trained on travels in the eval request.
		name := run.Backend
		if name == "" {
			name = train.DefaultBackend
		}
		if ck.Backend != "" { // an export, on the backend that serves it
			name = ck.Backend
		}
		b, err := backends(name)
		if err != nil {
			return nil, err
		}
		f, err := eval.NewGeneratorFactory(eval.GeneratorConfig{Backend: b, Blob: s.Blob, Attention: true})
		if err != nil {
			return nil, err
		}
		return f(ctx, ck, run)
	}
	records := func(ctx context.Context, run eval.RunInfo, fn func(model.Record) error) error {
		m, err := synth.OpenManifest(s.Blob, run.ManifestKey)
		if err != nil {
			return err
		}
		return synth.ReadRecords(ctx, s.Blob, m, nil, func(r *model.Record) error { return fn(*r) })
	}
	sv.Eval, err = eval.New(eval.Config{
		DataDir: s.cfg.DataDir, Blob: s.Blob, Logger: s.Logger.With("service", "eval"),
		Predictors: predictors, Records: records,
	}, s.Pool)
	return err
}

// synthSetReader gives services/train the records of a synth set through
// services/synth's own shard reader (manifest format and per-shard sha256
// checks live there, once), and their images from the dataset root: both
// from the set's facts that the train request carried (what synth
// answered), not from synth's or ingest's tables.
func synthSetReader(s *Stack) train.SynthReader {
	return func(ctx context.Context, set events.SynthFacts) (train.SynthSet, error) {
		if _, err := synth.OpenManifest(s.Blob, set.ManifestKey); err != nil {
			return train.SynthSet{}, fmt.Errorf("synth set %s: %w", set.SynthSetID, err)
		}
		records := func(ctx context.Context) iter.Seq2[model.Record, error] {
			return func(yield func(model.Record, error) bool) {
				_, seq, err := synth.OpenShards(ctx, s.Blob, set.ManifestKey)
				if err != nil {
					yield(model.Record{}, err)
					return
				}
				for r, err := range seq {
					if err != nil {
						yield(model.Record{}, err)
						return
					}
					if !yield(*r, nil) {
						return
					}
				}
			}
		}
		return train.SynthSet{Records: records, Images: model.FileImageResolver{DatasetRoot: set.DatasetRoot, Blobs: s.Blob}}, nil
	}
}

// serveCommands makes each service the process runs the consumer of its
// command topic on each of the process's queues (the default queue:
// "<svc>.requested", consumer group "<svc>-service"; another queue q:
// "<svc>.requested.<q>", group "<svc>-service.<q>"). "train.describe", a
// query of train's tables, and "train.export" are consumed by every train
// worker on the default queue; "synth.describe", a query of synth's, by
// every synth worker. Answers name the worker
// (Config.WorkerID).
func (sv *Services) serveCommands(b *bus.Bus, pool *pgxpool.Pool, logger *slog.Logger) error {
	cfg := sv.cfg
	if sv.Ground != nil {
		gc, err := ground.Serve(b, ground.ConsumerConfig{Handler: "ground-service", Pool: pool, Logger: logger.With("service", "ground")}, sv.Ground)
		if err != nil {
			return err
		}
		sv.groundConsumer = gc
		// What ground serves it learns from services/train's facts, in its
		// own tables: it reads none of train's.
		if _, err := ground.Project(b, ground.ProjectionConfig{Pool: pool, Logger: logger.With("service", "ground")}); err != nil {
			return err
		}
	}
	var errs []error
	for _, queue := range cfg.Queues {
		conf := func(service string, badInput func(error) bool) command.Config {
			handler := strings.ReplaceAll(service, ".", "-") + "-service"
			if queue != events.DefaultQueue {
				handler += "." + queue
			}
			return command.Config{Service: service, Handler: handler, Queue: queue, Worker: cfg.WorkerID,
				Lease: cfg.CommandLease, Logger: logger.With("service", service, "queue", queue, "worker", cfg.WorkerID), BadInput: badInput}
		}
		if sv.Ingest != nil {
			errs = append(errs, command.Serve(b, conf("ingest", func(err error) bool { return errors.Is(err, ingest.ErrBadInput) }),
				func(ctx context.Context, req events.IngestRequested, p func(events.Progress)) (events.DatasetIngested, error) {
					return sv.Ingest.Ingest(ctx, req, command.SimpleProgress("ingest", p))
				}))
		}
		if sv.Synth != nil {
			errs = append(errs, command.Serve(b, conf("synth", func(err error) bool { return errors.Is(err, synth.ErrBadInput) }),
				func(ctx context.Context, req events.SynthRequested, p func(events.Progress)) (events.SynthCompleted, error) {
					return sv.Synth.Synthesize(ctx, req, command.SimpleProgress("synth", p))
				}))
			if queue == cfg.Queues[0] {
				c := conf("synth.describe", func(err error) bool { return errors.Is(err, synth.ErrBadInput) })
				c.Queue, c.Handler = events.DefaultQueue, "synth-describe-service"
				errs = append(errs, command.Serve(b, c,
					func(ctx context.Context, req events.SynthDescribeRequested, _ func(events.Progress)) (events.SynthCompleted, error) {
						return sv.Synth.Describe(ctx, req)
					}))
			}
		}
		if sv.Train != nil {
			errs = append(errs, command.Serve(b, conf("train", func(err error) bool { return errors.Is(err, train.ErrInvalidRequest) }),
				func(ctx context.Context, req events.TrainRequested, p func(events.Progress)) (events.TrainCompleted, error) {
					return sv.Train.Train(ctx, req, p)
				}))
			if queue == cfg.Queues[0] {
				c := conf("train.describe", func(err error) bool { return errors.Is(err, train.ErrInvalidRequest) })
				c.Queue, c.Handler = events.DefaultQueue, "train-describe-service"
				errs = append(errs, command.Serve(b, c,
					func(ctx context.Context, req events.TrainDescribeRequested, _ func(events.Progress)) (events.TrainCompleted, error) {
						return sv.Train.Describe(ctx, req)
					}))
				c = conf("train.export", func(err error) bool { return errors.Is(err, train.ErrInvalidRequest) })
				c.Queue, c.Handler = events.DefaultQueue, "train-export-service"
				errs = append(errs, command.Serve(b, c,
					func(ctx context.Context, req events.ExportRequested, _ func(events.Progress)) (events.ExportCompleted, error) {
						return sv.Train.Export(ctx, req)
					}))
			}
		}
		if sv.Eval != nil {
			errs = append(errs, command.Serve(b, conf("eval", func(err error) bool { return errors.Is(err, eval.ErrBadInput) }),
				func(ctx context.Context, req events.EvalRequested, p func(events.Progress)) (events.EvaluationCompleted, error) {
					return sv.Eval.Evaluate(ctx, req, command.SimpleProgress("eval", p))
				}))
		}
	}
	return errors.Join(errs...)
}

func (sv *Services) close() error {
	if sv.groundConsumer != nil {
		sv.groundConsumer.Close()
	}
	if sv.Ground != nil {
		sv.Ground.Close()
	}
	sv.mu.Lock()
	defer sv.mu.Unlock()
	var errs []error
	for _, h := range sv.hosts {
		errs = append(errs, h.Close())
	}
	return errors.Join(errs...)
}
