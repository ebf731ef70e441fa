// Package command turns a service use case into a bus consumer of its
// command topic: it decodes "<svc>.requested", runs the use case with a
// progress callback that publishes "<svc>.progress", and answers with
// "<svc>.completed" or "<svc>.failed". Services stay plain functions; this
// is the only place that knows the request/answer topic convention.
package command

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/events"
)

// UseCase is a service operation: the request, a progress sink, the answer.
type UseCase[Req, Res any] func(ctx context.Context, req Req, progress func(events.Progress)) (Res, error)

// Registrar is the part of internal/bus this package needs.
type Registrar interface {
	Handle(name, topic string, fn func(ctx context.Context, msg *message.Message) error) error
	Publish(ctx context.Context, topic string, payload any, meta map[string]string) error
}

// Config configures one command consumer.
type Config struct {
	// Service is the short service name: the consumer reads
	// "<Service>.requested" and answers on "<Service>.progress|completed|failed".
	Service string
	// Handler names the consumer group. Renaming it changes the group (a new
	// group starts from the topic's beginning): name it deliberately.
	Handler string
	// BadInput reports errors that are the request's fault; they are
	// answered as non-retryable failures.
	BadInput func(error) bool
	// ProgressEvery throttles progress events (default 1s); the first and
	// the final (Done == Total) report always go out.
	ProgressEvery time.Duration
	// KeepAlive (default 30s) republishes the last progress report while
	// the use case runs and has published nothing for that long, so that
	// the waiting activity's heartbeat (workflows: 3 minutes) stays alive
	// through a silent phase: building shards from a large set on a busy
	// machine, or waiting for a run lock an earlier attempt of the same
	// command still holds. Without it a retried attempt never heard from
	// its service until the earlier one finished, timed out in turn, and
	// the pipeline failed after its last attempt although the work went
	// on. It proves the handling process alive, not that the use case
	// advances: its StartToClose timeout still bounds a stuck one.
	KeepAlive time.Duration
	// Queue is the command queue this consumer serves: it reads
	// events.CommandTopic(Service, Queue) ("<Service>.requested" for the
	// default queue, "<Service>.requested.<Queue>" otherwise). Answers go
	// to the same "<Service>.progress|completed|failed" whatever the queue.
	Queue string
	// Worker names this process (its --worker-id) in every answer: the
	// "worker" metadata key of progress, completed and failed, and the
	// completed answer's "worker" field. (Progress and failure payloads,
	// which consumers decode strictly, stay as they were: the bridge
	// fills their Worker from the metadata.)
	Worker string
	// Lease, with a registrar that takes handler options (internal/bus),
	// is how soon a command whose process died goes to another consumer
	// of the group (bus.HandleOptions.Lease); 0: the bus's default.
	Lease  time.Duration
	Logger *slog.Logger
}

// optionsRegistrar is a Registrar that takes handler options
// (internal/bus's Bus does).
type optionsRegistrar interface {
	HandleWith(name, topic string, o bus.HandleOptions, fn func(ctx context.Context, msg *message.Message) error) error
}

// Serve registers the consumer of cfg.Service's command topic on r.
func Serve[Req, Res any](r Registrar, cfg Config, uc UseCase[Req, Res]) error {
	if cfg.Service == "" {
		return errors.New("command: Service is required")
	}
	if cfg.Handler == "" {
		cfg.Handler = cfg.Service + "-service"
	}
	if cfg.ProgressEvery == 0 {
		cfg.ProgressEvery = time.Second
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.BadInput == nil {
		cfg.BadInput = func(error) bool { return false }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := events.ValidQueue(cfg.Queue); err != nil {
		return fmt.Errorf("command %s: %w", cfg.Service, err)
	}
	tracer := otel.Tracer("groundmesh/command")
	topic := events.CommandTopic(cfg.Service, cfg.Queue)
	handle := r.Handle
	if or, ok := r.(optionsRegistrar); ok && cfg.Lease > 0 {
		handle = func(name, topic string, fn func(ctx context.Context, msg *message.Message) error) error {
			return or.HandleWith(name, topic, bus.HandleOptions{Lease: cfg.Lease}, fn)
		}
	}
	return handle(cfg.Handler, topic, bus.Typed(func(ctx context.Context, req Req, msg *message.Message) error {
		corr := msg.Metadata.Get(events.MetaCorrelationID)
		if corr == "" {
			corr = bus.CorrelationID(ctx)
		}
		if corr == "" {
			return bus.Permanent(fmt.Errorf("%s: command without correlation id", topic))
		}
		ctx, span := tracer.Start(ctx, cfg.Service+".handle", trace.WithAttributes(
			attribute.String("groundmesh.correlation_id", corr),
			attribute.String("groundmesh.queue", cmp.Or(cfg.Queue, events.DefaultQueue)),
			attribute.String("groundmesh.worker", cfg.Worker)))
		defer span.End()
		meta := map[string]string{events.MetaCorrelationID: corr}
		if cfg.Worker != "" {
			meta[events.MetaWorker] = cfg.Worker
		}
		cfg.Logger.InfoContext(ctx, "command received", "service", cfg.Service, "topic", topic, "correlation_id", corr, "worker", cfg.Worker)

		var mu sync.Mutex
		var last time.Time                            // last report published
		beat := time.Now()                            // last publish of any kind, or the start
		latest := events.Progress{Phase: cfg.Service} // last report, published or not
		publish := func(p events.Progress, now time.Time) {
			p.CorrelationID, p.Service, p.At = corr, cfg.Service, now.UTC()
			if err := r.Publish(ctx, cfg.Service+".progress", p, meta); err != nil {
				cfg.Logger.WarnContext(ctx, "publish progress", "service", cfg.Service, "err", err)
			}
		}
		progress := func(p events.Progress) {
			mu.Lock()
			now := time.Now()
			latest = p
			due := last.IsZero() || now.Sub(last) >= cfg.ProgressEvery || (p.Total > 0 && p.Done >= p.Total)
			if due {
				last, beat = now, now
			}
			mu.Unlock()
			if due {
				publish(p, now)
			}
		}
		stop := make(chan struct{})
		var keepers sync.WaitGroup
		keepers.Go(func() {
			t := time.NewTicker(cfg.KeepAlive / 4)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-t.C:
				}
				mu.Lock()
				now := time.Now()
				idle := now.Sub(beat) >= cfg.KeepAlive
				p := latest
				if idle {
					beat = now
				}
				mu.Unlock()
				if idle {
					publish(p, now)
				}
			}
		})

		res, err := uc(ctx, req, progress)
		close(stop)
		keepers.Wait()
		if err != nil {
			if ctx.Err() != nil {
				// Shutting down: leave the command unacked for redelivery.
				return fmt.Errorf("%s interrupted: %w", cfg.Service, err)
			}
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
			f := events.Failed{CorrelationID: corr, Service: cfg.Service, Reason: err.Error(), Retryable: !cfg.BadInput(err)}
			cfg.Logger.ErrorContext(ctx, "command failed", "service", cfg.Service, "correlation_id", corr, "retryable", f.Retryable, "err", err)
			if perr := r.Publish(ctx, cfg.Service+".failed", f, meta); perr != nil {
				return fmt.Errorf("publish %s.failed: %w", cfg.Service, perr)
			}
			return nil
		}
		answer, err := withCorrelation(res, corr)
		if err != nil {
			return bus.Permanent(err)
		}
		if cfg.Worker != "" {
			answer[events.MetaWorker] = cfg.Worker
		}
		if err := r.Publish(ctx, cfg.Service+".completed", answer, meta); err != nil {
			return fmt.Errorf("publish %s.completed: %w", cfg.Service, err)
		}
		cfg.Logger.InfoContext(ctx, "command completed", "service", cfg.Service, "correlation_id", corr, "worker", cfg.Worker)
		return nil
	}))
}

// withCorrelation returns res as a JSON object with correlation_id set.
func withCorrelation(res any, corr string) (map[string]any, error) {
	b, err := json.Marshal(res)
	if err != nil {
		return nil, fmt.Errorf("encode answer: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return nil, fmt.Errorf("answer %T is not a JSON object", res)
	}
	m["correlation_id"] = corr
	return m, nil
}

// SimpleProgress adapts a use case whose progress is (done, total, message)
// to events.Progress with a phase.
func SimpleProgress(phase string, sink func(events.Progress)) func(done, total int64, msg string) {
	return func(done, total int64, msg string) {
		sink(events.Progress{Phase: phase, Done: done, Total: total, Message: msg})
	}
}
