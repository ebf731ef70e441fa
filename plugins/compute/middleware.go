package compute

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Decorators that wrap any Backend (a Host, an in-process backend) with one
// concern each, in the style of Vault's dbplugin middleware. Compose them:
//
//	b = compute.WithLogging(compute.WithTracing(compute.WithMetrics(host, "gomlx", nil), "gomlx"), logger)
//
// Trace context reaches the plugin process through gRPC metadata (otelgrpc
// on both sides of the connection), so spans a backend opens nest under
// the host's.

// instrumentationName names the tracer and meter of this package.
const instrumentationName = "groundmesh/plugins/compute"

// WithTracing returns a Backend that opens a span per call ("compute.Train",
// ...) with the attributes compute.backend, compute.stage and compute.step.
func WithTracing(next Backend, backend string) Backend {
	return &tracing{next: next, backend: backend, tracer: otel.Tracer(instrumentationName)}
}

type tracing struct {
	next    Backend
	backend string
	tracer  trace.Tracer
}

func (t *tracing) start(ctx context.Context, method string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	attrs = append(attrs, attribute.String("compute.backend", t.backend))
	return t.tracer.Start(ctx, "compute."+method, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

func end(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

func (t *tracing) Describe(ctx context.Context) (d Description, err error) {
	ctx, span := t.start(ctx, "Describe")
	defer func() { end(span, err) }()
	return t.next.Describe(ctx)
}

func (t *tracing) Train(ctx context.Context, req TrainRequest, progress func(TrainProgress) error) (r TrainResult, err error) {
	ctx, span := t.start(ctx, "Train",
		attribute.String("compute.run_id", req.RunID),
		attribute.String("compute.stage", req.Stage),
		attribute.Int("compute.steps", req.Steps),
		attribute.Bool("compute.resume", req.ResumeCheckpoint != ""))
	last := 0
	defer func() {
		span.SetAttributes(attribute.Int("compute.step", last))
		if err == nil {
			span.SetAttributes(attribute.Float64("compute.first_loss", r.FirstLoss), attribute.Float64("compute.last_loss", r.LastLoss))
		}
		end(span, err)
	}()
	return t.next.Train(ctx, req, func(p TrainProgress) error {
		last = p.Step
		if p.Checkpoint != nil {
			span.AddEvent("checkpoint", trace.WithAttributes(
				attribute.Int("compute.step", p.Step), attribute.Float64("compute.loss", p.Loss),
				attribute.String("compute.checkpoint", p.Checkpoint.Path)))
		}
		if progress == nil {
			return nil
		}
		return progress(p)
	})
}

func (t *tracing) Load(ctx context.Context, req LoadRequest) (r LoadResult, err error) {
	ctx, span := t.start(ctx, "Load", attribute.String("compute.checkpoint", req.Checkpoint))
	defer func() { end(span, err) }()
	return t.next.Load(ctx, req)
}

func (t *tracing) Prefill(ctx context.Context, req PrefillRequest) (r ForwardResult, err error) {
	ctx, span := t.start(ctx, "Prefill", attribute.Int("compute.batch", len(req.Batch)))
	defer func() { end(span, err) }()
	return t.next.Prefill(ctx, req)
}

func (t *tracing) Decode(ctx context.Context, req DecodeRequest) (r ForwardResult, err error) {
	ctx, span := t.start(ctx, "Decode", attribute.Int("compute.batch", len(req.Tokens)))
	defer func() { end(span, err) }()
	return t.next.Decode(ctx, req)
}

func (t *tracing) Generate(ctx context.Context, req GenerateRequest) (r GenerateResult, err error) {
	ctx, span := t.start(ctx, "Generate", attribute.Int("compute.batch", len(req.Batch)), attribute.String("compute.grammar", req.Grammar.Kind))
	defer func() { end(span, err) }()
	return t.next.Generate(ctx, req)
}

func (t *tracing) ReleaseCache(ctx context.Context, session, cacheID string) (err error) {
	ctx, span := t.start(ctx, "ReleaseCache")
	defer func() { end(span, err) }()
	return t.next.ReleaseCache(ctx, session, cacheID)
}

func (t *tracing) Unload(ctx context.Context, session string) (err error) {
	ctx, span := t.start(ctx, "Unload")
	defer func() { end(span, err) }()
	return t.next.Unload(ctx, session)
}

// WithMetrics returns a Backend that counts calls and measures their
// latency, by backend, method and outcome (ok, error, crashed), and records
// training steps, their wall time and the loss, by stage. meter nil means
// the global meter provider.
func WithMetrics(next Backend, backend string, meter metric.Meter) (Backend, error) {
	if meter == nil {
		meter = otel.Meter(instrumentationName)
	}
	m := &metrics{next: next, backend: attribute.String("compute.backend", backend)}
	var err error
	if m.calls, err = meter.Int64Counter("groundmesh.compute.calls",
		metric.WithDescription("Compute backend calls."), metric.WithUnit("{call}")); err != nil {
		return nil, err
	}
	if m.latency, err = meter.Float64Histogram("groundmesh.compute.call.duration",
		metric.WithDescription("Compute backend call latency."), metric.WithUnit("s")); err != nil {
		return nil, err
	}
	if m.steps, err = meter.Int64Counter("groundmesh.compute.train.steps",
		metric.WithDescription("Training steps reported by the backend."), metric.WithUnit("{step}")); err != nil {
		return nil, err
	}
	if m.stepTime, err = meter.Float64Histogram("groundmesh.compute.train.step.duration", metric.WithUnit("s"),
		metric.WithDescription("Wall time of one optimizer step: the time between two progress reports over the steps between them."),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)); err != nil {
		return nil, err
	}
	if m.loss, err = meter.Float64Gauge("groundmesh.compute.train.loss",
		metric.WithDescription("Last reported training loss.")); err != nil {
		return nil, err
	}
	return m, nil
}

type metrics struct {
	next     Backend
	backend  attribute.KeyValue
	calls    metric.Int64Counter
	latency  metric.Float64Histogram
	steps    metric.Int64Counter
	stepTime metric.Float64Histogram
	loss     metric.Float64Gauge
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrPluginCrashed):
		return "crashed"
	default:
		return "error"
	}
}

func (m *metrics) record(ctx context.Context, method string, start time.Time, err error) {
	attrs := metric.WithAttributes(m.backend, attribute.String("compute.method", method), attribute.String("outcome", outcome(err)))
	m.calls.Add(ctx, 1, attrs)
	m.latency.Record(ctx, time.Since(start).Seconds(), attrs)
}

func (m *metrics) Describe(ctx context.Context) (d Description, err error) {
	defer func(t time.Time) { m.record(ctx, "Describe", t, err) }(time.Now())
	return m.next.Describe(ctx)
}

func (m *metrics) Train(ctx context.Context, req TrainRequest, progress func(TrainProgress) error) (r TrainResult, err error) {
	defer func(t time.Time) { m.record(ctx, "Train", t, err) }(time.Now())
	stage := metric.WithAttributes(m.backend, attribute.String("compute.stage", req.Stage))
	last, lastAt := -1, time.Time{}
	return m.next.Train(ctx, req, func(p TrainProgress) error {
		now := time.Now()
		if last >= 0 && p.Step > last {
			n := p.Step - last
			m.steps.Add(ctx, int64(n), stage)
			per := now.Sub(lastAt).Seconds() / float64(n)
			for range min(n, 1000) { // each step observed, up to a report's first 1000
				m.stepTime.Record(ctx, per, stage)
			}
		}
		last, lastAt = p.Step, now
		m.loss.Record(ctx, p.Loss, stage)
		if progress == nil {
			return nil
		}
		return progress(p)
	})
}

func (m *metrics) Load(ctx context.Context, req LoadRequest) (r LoadResult, err error) {
	defer func(t time.Time) { m.record(ctx, "Load", t, err) }(time.Now())
	return m.next.Load(ctx, req)
}

func (m *metrics) Prefill(ctx context.Context, req PrefillRequest) (r ForwardResult, err error) {
	defer func(t time.Time) { m.record(ctx, "Prefill", t, err) }(time.Now())
	return m.next.Prefill(ctx, req)
}

func (m *metrics) Decode(ctx context.Context, req DecodeRequest) (r ForwardResult, err error) {
	defer func(t time.Time) { m.record(ctx, "Decode", t, err) }(time.Now())
	return m.next.Decode(ctx, req)
}

func (m *metrics) Generate(ctx context.Context, req GenerateRequest) (r GenerateResult, err error) {
	defer func(t time.Time) { m.record(ctx, "Generate", t, err) }(time.Now())
	return m.next.Generate(ctx, req)
}

func (m *metrics) ReleaseCache(ctx context.Context, session, cacheID string) (err error) {
	defer func(t time.Time) { m.record(ctx, "ReleaseCache", t, err) }(time.Now())
	return m.next.ReleaseCache(ctx, session, cacheID)
}

func (m *metrics) Unload(ctx context.Context, session string) (err error) {
	defer func(t time.Time) { m.record(ctx, "Unload", t, err) }(time.Now())
	return m.next.Unload(ctx, session)
}

// WithLogging returns a Backend that logs every call with its duration:
// Debug for inference calls, Info for Describe, Load and Train (and each
// checkpoint), Error for failures.
func WithLogging(next Backend, logger *slog.Logger) Backend {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &logging{next: next, logger: logger}
}

type logging struct {
	next   Backend
	logger *slog.Logger
}

func (l *logging) log(ctx context.Context, level slog.Level, method string, start time.Time, err error, attrs ...any) {
	attrs = append(attrs, "duration", time.Since(start))
	if err != nil {
		l.logger.ErrorContext(ctx, "compute "+method+" failed", append(attrs, "error", err)...)
		return
	}
	l.logger.Log(ctx, level, "compute "+method, attrs...)
}

func (l *logging) Describe(ctx context.Context) (d Description, err error) {
	defer func(t time.Time) {
		l.log(ctx, slog.LevelInfo, "describe", t, err, "backend", d.Backend, "version", d.Version, "devices", d.Devices)
	}(time.Now())
	return l.next.Describe(ctx)
}

func (l *logging) Train(ctx context.Context, req TrainRequest, progress func(TrainProgress) error) (r TrainResult, err error) {
	l.logger.InfoContext(ctx, "compute train started", "run_id", req.RunID, "stage", req.Stage, "steps", req.Steps,
		"init", req.InitCheckpoint, "resume", req.ResumeCheckpoint)
	defer func(t time.Time) {
		l.log(ctx, slog.LevelInfo, "train", t, err, "run_id", req.RunID, "stage", req.Stage,
			"steps", r.Steps, "first_loss", r.FirstLoss, "last_loss", r.LastLoss)
	}(time.Now())
	return l.next.Train(ctx, req, func(p TrainProgress) error {
		if p.Checkpoint != nil {
			l.logger.InfoContext(ctx, "compute checkpoint", "run_id", req.RunID, "stage", req.Stage,
				"step", p.Step, "loss", p.Loss, "path", p.Checkpoint.Path)
		} else {
			l.logger.DebugContext(ctx, "compute train step", "stage", req.Stage, "step", p.Step, "loss", p.Loss,
				"lr", p.LearningRate, "tokens_per_sec", p.TokensPerSec)
		}
		if progress == nil {
			return nil
		}
		return progress(p)
	})
}

func (l *logging) Load(ctx context.Context, req LoadRequest) (r LoadResult, err error) {
	defer func(t time.Time) {
		l.log(ctx, slog.LevelInfo, "load", t, err, "checkpoint", req.Checkpoint, "session", r.Session)
	}(time.Now())
	return l.next.Load(ctx, req)
}

func (l *logging) Prefill(ctx context.Context, req PrefillRequest) (r ForwardResult, err error) {
	defer func(t time.Time) {
		l.log(ctx, slog.LevelDebug, "prefill", t, err, "session", req.Session, "batch", len(req.Batch), "cache", r.CacheID)
	}(time.Now())
	return l.next.Prefill(ctx, req)
}

func (l *logging) Decode(ctx context.Context, req DecodeRequest) (r ForwardResult, err error) {
	defer func(t time.Time) {
		l.log(ctx, slog.LevelDebug, "decode", t, err, "session", req.Session, "cache", req.CacheID)
	}(time.Now())
	return l.next.Decode(ctx, req)
}

func (l *logging) Generate(ctx context.Context, req GenerateRequest) (r GenerateResult, err error) {
	defer func(t time.Time) {
		l.log(ctx, slog.LevelDebug, "generate", t, err, "session", req.Session, "batch", len(req.Batch), "grammar", req.Grammar.Kind)
	}(time.Now())
	return l.next.Generate(ctx, req)
}

func (l *logging) ReleaseCache(ctx context.Context, session, cacheID string) (err error) {
	defer func(t time.Time) {
		l.log(ctx, slog.LevelDebug, "release cache", t, err, "session", session, "cache", cacheID)
	}(time.Now())
	return l.next.ReleaseCache(ctx, session, cacheID)
}

func (l *logging) Unload(ctx context.Context, session string) (err error) {
	defer func(t time.Time) { l.log(ctx, slog.LevelDebug, "unload", t, err, "session", session) }(time.Now())
	return l.next.Unload(ctx, session)
}
