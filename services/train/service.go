// Package train is services/train: it runs tinygrounder's three training
// stages from one run spec through a compute backend (a plugin process),
// keeps every checkpoint in the blob store with its sha256, records runs,
// stages, checkpoints, the loss curve and lineage in Postgres, publishes
// checkpoint.saved through the outbox, and resumes a killed run from its
// last checkpoint.
//
// The service is a plain use case: the bus handler and the Temporal bridge
// call Train with an events.TrainRequested and forward its progress.
package train

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// ErrRunBusy: another worker is training the run now. Retry later.
var ErrRunBusy = errors.New("train: run is being trained by another worker")

// BackendKey is the name under which a run records its backend and
// Config.Backends finds it: the backend alone on its default device (""
// or "cpu"), "backend:device" on another ("libtorch:cuda"), which only
// libtorch takes.
func BackendKey(backend, device string) (string, error) {
	switch device {
	case "", "cpu":
		return backend, nil
	case "cuda":
		if backend != "libtorch" {
			return "", fmt.Errorf("train: device %q needs the libtorch backend, not %q: %w", device, backend, ErrInvalidRequest)
		}
		return backend + ":" + device, nil
	}
	return "", fmt.Errorf("train: device %q: want cpu or cuda: %w", device, ErrInvalidRequest)
}

// DefaultBackend is the backend of a request that names none.
const DefaultBackend = "gomlx"

var tracer = otel.Tracer("groundmesh/services/train")

// Config configures the service.
type Config struct {
	// DataDir holds the service's working files: tokenized shards and the
	// checkpoints a backend writes before they move into the blob store
	// (DataDir/runs/<run>/...). Required; created if missing. The plugin
	// processes must see the same paths.
	DataDir string
	// Blob is the blob store checkpoints and tokenizers go to. Required.
	Blob blob.Store
	// Backends returns the compute backend of a name ("gomlx", ...); the
	// service does not close what it returns. Required.
	Backends func(name string) (compute.Backend, error)
	// Synth opens a synth set. Required: the composition root passes
	// services/synth's own shard reader (services never import each other).
	Synth SynthReader
	// MetricsFlush bounds how long logged loss points wait in memory
	// before they are written (they are always written with a checkpoint).
	// Default 5s.
	MetricsFlush time.Duration
	// Logger receives the service's logs. Default: discard.
	Logger *slog.Logger
}

// BackendMap adapts a fixed set of backends to Config.Backends.
func BackendMap(m map[string]compute.Backend) func(string) (compute.Backend, error) {
	return func(name string) (compute.Backend, error) {
		b, ok := m[name]
		if !ok {
			return nil, fmt.Errorf("backend %q: not configured: %w", name, ErrInvalidRequest)
		}
		return b, nil
	}
}

// Service runs training.
type Service struct {
	cfg   Config
	store *pgStore
	log   *slog.Logger

	mu   sync.Mutex
	live map[string]*RunStatus // runs this process is training now
}

// New validates cfg and returns the service.
func New(cfg Config, pool *pgxpool.Pool) (*Service, error) {
	if pool == nil {
		return nil, errors.New("new train service: no Postgres pool")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("new train service: DataDir is required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("new train service: data dir: %w", err)
	}
	if cfg.Blob == nil {
		return nil, errors.New("new train service: Blob is required")
	}
	if cfg.Backends == nil {
		return nil, errors.New("new train service: Backends is required")
	}
	if cfg.Synth == nil {
		return nil, errors.New("new train service: Synth is required")
	}
	if cfg.MetricsFlush <= 0 {
		cfg.MetricsFlush = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, store: &pgStore{pool: pool}, log: cfg.Logger, live: map[string]*RunStatus{}}, nil
}

// RunStatus is where a run stands (the Train workflow's query answers it).
type RunStatus struct {
	RunID  string `json:"run_id"`
	Status string `json:"status"` // running, completed, failed
	// Stage is the current (or last) stage, Step its last recorded step of
	// Steps, Loss the loss at Step.
	Stage  string        `json:"stage"`
	Step   int           `json:"step"`
	Steps  int           `json:"steps"`
	Loss   float64       `json:"loss"`
	Stages []StageStatus `json:"stages"`
	// Live is true when this process is training the run now.
	Live      bool      `json:"live"`
	UpdatedAt time.Time `json:"updated_at"`
}

// StageStatus is one stage of a run.
type StageStatus struct {
	Stage     string  `json:"stage"`
	Status    string  `json:"status"` // pending, running, completed, failed
	Step      int     `json:"step"`
	Steps     int     `json:"steps"`
	FirstLoss float64 `json:"first_loss"`
	LastLoss  float64 `json:"last_loss"`
}

// ErrRunNotFound: Status of a run that does not exist.
var ErrRunNotFound = errors.New("train: run not found")

// Status returns the run's current stage, step and loss: live from this
// process when it trains the run, else from Postgres.
func (s *Service) Status(ctx context.Context, runID string) (RunStatus, error) {
	s.mu.Lock()
	if st, ok := s.live[runID]; ok {
		out := *st
		out.Stages = append([]StageStatus(nil), st.Stages...)
		s.mu.Unlock()
		return out, nil
	}
	s.mu.Unlock()
	if _, err := uuid.Parse(runID); err != nil {
		return RunStatus{}, fmt.Errorf("run id %q: %w", runID, ErrRunNotFound)
	}
	run, err := s.store.run(ctx, runID)
	if errors.Is(err, errNoRun) {
		return RunStatus{}, fmt.Errorf("status of run %s: %w", runID, ErrRunNotFound)
	}
	if err != nil {
		return RunStatus{}, err
	}
	spec, err := ParseSpec(run.Spec)
	if err != nil {
		return RunStatus{}, fmt.Errorf("status of run %s: stored spec: %w", runID, err)
	}
	rows, err := s.store.stages(ctx, runID)
	if err != nil {
		return RunStatus{}, err
	}
	out := RunStatus{RunID: runID, Status: run.Status, Stage: run.CurrentStage, UpdatedAt: run.UpdatedAt}
	for _, name := range Stages {
		ss := StageStatus{Stage: name, Status: "pending", Steps: spec.Stage(name).Steps}
		if r, ok := rows[name]; ok {
			ss.Status, ss.Step, ss.Steps = r.Status, r.Step, r.Steps
			if r.FirstLoss != nil {
				ss.FirstLoss = *r.FirstLoss
			}
			if r.LastLoss != nil {
				ss.LastLoss = *r.LastLoss
			}
		}
		out.Stages = append(out.Stages, ss)
		if name == out.Stage {
			out.Step, out.Steps, out.Loss = ss.Step, ss.Steps, ss.LastLoss
		}
	}
	return out, nil
}

// setLive updates (or, with nil, removes) this process's view of a run.
func (s *Service) setLive(runID string, fn func(*RunStatus)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fn == nil {
		delete(s.live, runID)
		return
	}
	st, ok := s.live[runID]
	if !ok {
		st = &RunStatus{RunID: runID, Status: "running", Live: true}
		s.live[runID] = st
	}
	fn(st)
	st.UpdatedAt = time.Now()
}
