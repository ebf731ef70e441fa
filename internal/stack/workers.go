package stack

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/events"
)

// Service names a process may run (Config.Services, `worker --services`).
const (
	ServiceIngest = "ingest"
	ServiceSynth  = "synth"
	ServiceTrain  = "train"
	ServiceEval   = "eval"
	ServiceGround = "ground"
)

// AllServices are the services a process runs when Config.Services is empty.
var AllServices = []string{ServiceIngest, ServiceSynth, ServiceTrain, ServiceEval, ServiceGround}

// workerHeartbeat is how often a worker refreshes its row in workers, and
// workerTTL how long after its last refresh it still counts as live.
const (
	workerHeartbeat = 10 * time.Second
	workerTTL       = 45 * time.Second
)

// DefaultCommandLease is Config.CommandLease's default.
const DefaultCommandLease = 30 * time.Second

// ParseList splits a comma-separated flag or environment value, trimming
// blanks and dropping empty items.
func ParseList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// DefaultWorkerID is "<host>-<pid>".
func DefaultWorkerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "local"
	}
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}

// workerDefaults checks and defaults the worker fields of a Config:
// Services (all when empty), Queues (the default queue when empty),
// Backends (every backend built in when empty) and WorkerID.
func (c *Config) workerDefaults() error {
	if len(c.Services) == 0 {
		c.Services = slices.Clone(AllServices)
	}
	seen := map[string]bool{}
	for _, s := range c.Services {
		if !slices.Contains(AllServices, s) {
			return fmt.Errorf("stack config: services: unknown service %q (want some of %s)", s, strings.Join(AllServices, ", "))
		}
		if seen[s] {
			return fmt.Errorf("stack config: services: %q listed twice", s)
		}
		seen[s] = true
	}
	if len(c.Queues) == 0 {
		c.Queues = []string{events.DefaultQueue}
	}
	for i, q := range c.Queues {
		if q == "" {
			q = events.DefaultQueue
		}
		if err := events.ValidQueue(q); err != nil {
			return fmt.Errorf("stack config: queues: %w", err)
		}
		if slices.Contains(c.Queues[:i], q) {
			return fmt.Errorf("stack config: queues: %q listed twice", q)
		}
		c.Queues[i] = q
	}
	known := slices.Sorted(maps.Keys(pluginBinaries))
	for _, b := range c.Backends {
		base, _, _ := strings.Cut(b, ":")
		if !slices.Contains(known, base) {
			return fmt.Errorf("stack config: backends: unknown backend %q (want some of %s)", b, strings.Join(known, ", "))
		}
	}
	if c.CommandLease == 0 {
		c.CommandLease = DefaultCommandLease
	}
	if c.CommandLease < time.Second {
		return fmt.Errorf("stack config: command lease %v: want at least 1s", c.CommandLease)
	}
	if c.WorkerID == "" {
		c.WorkerID = DefaultWorkerID()
	}
	if strings.ContainsAny(c.WorkerID, " \t\n") {
		return fmt.Errorf("stack config: worker id %q: must not contain whitespace", c.WorkerID)
	}
	return nil
}

// runs reports whether the process runs service.
func (c *Config) runs(service string) bool { return slices.Contains(c.Services, service) }

// backendAllowed reports whether the process may start the plugin of a
// backend key ("gomlx", "libtorch:cuda"): every backend when
// Config.Backends is empty; else the key or its base name must be listed.
func (c *Config) backendAllowed(name string) bool {
	if len(c.Backends) == 0 {
		return true
	}
	base, _, _ := strings.Cut(name, ":")
	return slices.Contains(c.Backends, name) || slices.Contains(c.Backends, base)
}

// Registry is the worker registry (table workers): the live workers and
// what they serve. It implements workflows.WorkerDirectory.
type Registry struct{ Pool *pgxpool.Pool }

// Worker is one row of the registry.
type Worker struct {
	ID       string    `json:"worker_id"`
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Services []string  `json:"services"`
	Queues   []string  `json:"queues"`
	Backends []string  `json:"backends"`
	Started  time.Time `json:"started_at"`
	Seen     time.Time `json:"seen_at"`
}

// Live lists the workers seen within the registry's time to live, by id.
func (r *Registry) Live(ctx context.Context) ([]Worker, error) {
	rows, err := r.Pool.Query(ctx, `
		SELECT worker_id, host, pid, services, queues, backends, started_at, seen_at
		FROM workers WHERE seen_at > now() - make_interval(secs => $1) ORDER BY worker_id`, workerTTL.Seconds())
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	defer rows.Close()
	var out []Worker
	for rows.Next() {
		var w Worker
		if err := rows.Scan(&w.ID, &w.Host, &w.PID, &w.Services, &w.Queues, &w.Backends, &w.Started, &w.Seen); err != nil {
			return nil, fmt.Errorf("list workers: %w", err)
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// Serving returns the ids of the live workers that consume service's
// commands on queue. "train.describe" and "train.export" are served by
// every train worker on the default queue, "synth.describe" by every synth
// worker.
func (r *Registry) Serving(ctx context.Context, service, queue string) ([]string, error) {
	svc := service
	switch service {
	case "train.describe", "train.export":
		svc, queue = ServiceTrain, ""
	case "synth.describe":
		svc, queue = ServiceSynth, ""
	}
	var ids []string
	err := r.Pool.QueryRow(ctx, `
		SELECT coalesce(array_agg(worker_id ORDER BY worker_id), '{}') FROM workers
		WHERE seen_at > now() - make_interval(secs => $1) AND $2 = ANY(services) AND ($3 = '' OR $3 = ANY(queues))`,
		workerTTL.Seconds(), svc, queue).Scan(&ids)
	if err != nil {
		return nil, fmt.Errorf("workers serving %s on %s: %w", service, queue, err)
	}
	return ids, nil
}

// register records this worker in the registry and refreshes its row
// until ctx is done; then it removes the row.
func (s *Stack) register(ctx context.Context) error {
	host, _ := os.Hostname()
	backends := s.cfg.Backends
	if len(backends) == 0 {
		backends = slices.Sorted(maps.Keys(pluginBinaries))
	}
	_, err := s.Pool.Exec(ctx, `
		INSERT INTO workers (worker_id, host, pid, services, queues, backends)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (worker_id) DO UPDATE SET host = $2, pid = $3, services = $4, queues = $5, backends = $6,
			started_at = now(), seen_at = now()`,
		s.cfg.WorkerID, host, os.Getpid(), s.cfg.Services, s.cfg.Queues, backends)
	if err != nil {
		return fmt.Errorf("register worker %s: %w", s.cfg.WorkerID, err)
	}
	s.Logger.Info("worker registered", "worker", s.cfg.WorkerID, "services", s.cfg.Services, "queues", s.cfg.Queues, "backends", backends)
	s.goRun(func() error {
		t := time.NewTicker(workerHeartbeat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if _, err := s.Pool.Exec(dctx, `DELETE FROM workers WHERE worker_id = $1`, s.cfg.WorkerID); err != nil {
					s.Logger.Warn("unregister worker", "worker", s.cfg.WorkerID, "err", err)
				}
				return nil
			case <-t.C:
			}
			if _, err := s.Pool.Exec(ctx, `UPDATE workers SET seen_at = now() WHERE worker_id = $1`, s.cfg.WorkerID); err != nil && !errors.Is(err, context.Canceled) {
				s.Logger.Warn("refresh worker registration", "worker", s.cfg.WorkerID, "err", err)
			}
		}
	})
	return nil
}
