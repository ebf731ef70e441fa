// Package telemetry sets up OpenTelemetry tracing, metrics and context
// propagation for every groundmesh process, and builds slog loggers that stamp
// each record with the trace and span of its context.
//
// Metrics are always readable in the Prometheus text format through
// Gatherer (the gateway's GET /metrics), and also pushed to the OTLP
// collector when one is configured.
//
// Spans go to an OTLP collector when one is configured, and otherwise to a
// JSON-lines trace file (one object per span) that several processes may
// append to; ReadTraceFile reads such a file back so that tests can check
// that one trace crosses several hops.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// DefaultShutdownTimeout bounds Shutdown when Config.ShutdownTimeout is zero.
const DefaultShutdownTimeout = 2 * time.Second

// Config says where a process sends its telemetry.
type Config struct {
	// Service names the process (resource attribute service.name, and the
	// "service" field of every trace-file line). Required.
	Service string
	// TraceFile is a JSON-lines file that receives one object per finished span
	// when OTLPEndpoint is empty. Several processes may append to the same file.
	// Empty with no OTLPEndpoint: spans are created and propagated but not exported.
	TraceFile string
	// OTLPEndpoint is an OTLP/gRPC collector address, as found in
	// OTEL_EXPORTER_OTLP_ENDPOINT ("http://localhost:4317", or "host:port",
	// which is dialled without TLS). main reads the environment and passes it
	// in. When set, traces and metrics go there and TraceFile is ignored.
	OTLPEndpoint string
	// MetricInterval is how often metrics are pushed to the collector.
	// Default 15s. Only used with OTLPEndpoint.
	MetricInterval time.Duration
	// ShutdownTimeout bounds Shutdown, whatever deadline its context carries.
	// Default DefaultShutdownTimeout (2s).
	ShutdownTimeout time.Duration
	// Logger receives OpenTelemetry's internal errors (a failed export, for
	// example) at warn level. Default: slog.Default().
	Logger *slog.Logger
}

func (c *Config) defaults() error {
	c.Service = strings.TrimSpace(c.Service)
	if c.Service == "" {
		return errors.New("telemetry config: Service is required")
	}
	if c.MetricInterval < 0 || c.ShutdownTimeout < 0 {
		return errors.New("telemetry config: negative MetricInterval or ShutdownTimeout")
	}
	if c.MetricInterval == 0 {
		c.MetricInterval = 15 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Telemetry owns the providers that Setup installed globally.
type Telemetry struct {
	tp              *sdktrace.TracerProvider
	mp              *sdkmetric.MeterProvider
	prom            *prometheus.Registry
	shutdownTimeout time.Duration
	exporter        string
}

// Setup builds a TracerProvider and a MeterProvider for cfg and installs them,
// with the W3C tracecontext and baggage propagators, as the otel globals.
// Call Shutdown before the process exits so that buffered spans are written.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", cfg.Service),
		attribute.Int("process.pid", os.Getpid()),
	)

	var (
		spanExp  sdktrace.SpanExporter
		readers  []sdkmetric.Option
		exporter = "none"
	)
	switch {
	case cfg.OTLPEndpoint != "":
		traceOpts, metricOpts := otlpOptions(cfg.OTLPEndpoint)
		te, err := otlptracegrpc.New(ctx, traceOpts...)
		if err != nil {
			return nil, fmt.Errorf("create otlp trace exporter for %s: %w", cfg.OTLPEndpoint, err)
		}
		me, err := otlpmetricgrpc.New(ctx, metricOpts...)
		if err != nil {
			_ = te.Shutdown(ctx)
			return nil, fmt.Errorf("create otlp metric exporter for %s: %w", cfg.OTLPEndpoint, err)
		}
		spanExp = te
		readers = append(readers, sdkmetric.WithReader(
			sdkmetric.NewPeriodicReader(me, sdkmetric.WithInterval(cfg.MetricInterval))))
		exporter = "otlp"
	case cfg.TraceFile != "":
		fe, err := NewFileExporter(cfg.TraceFile, cfg.Service)
		if err != nil {
			return nil, err
		}
		spanExp = fe
		exporter = "file"
	}

	// Every instrument is also read on demand into a registry of this
	// process's own, for GET /metrics.
	prom := prometheus.NewRegistry()
	pe, err := otelprom.New(otelprom.WithRegisterer(prom))
	if err != nil {
		return nil, fmt.Errorf("create prometheus metric reader: %w", err)
	}
	readers = append(readers, sdkmetric.WithReader(pe))

	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if spanExp != nil {
		tpOpts = append(tpOpts, sdktrace.WithBatcher(spanExp, sdktrace.WithBatchTimeout(time.Second)))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)
	mp := sdkmetric.NewMeterProvider(append(readers, sdkmetric.WithResource(res))...)

	logger := cfg.Logger
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("opentelemetry error", "service", cfg.Service, "err", err)
	}))
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{}))

	return &Telemetry{tp: tp, mp: mp, prom: prom, shutdownTimeout: cfg.ShutdownTimeout, exporter: exporter}, nil
}

// otlpOptions turns an OTEL_EXPORTER_OTLP_ENDPOINT value into exporter
// options. A value with a scheme is used as a URL (http:// means no TLS); a
// bare host:port is dialled without TLS, as local collectors expect.
func otlpOptions(endpoint string) ([]otlptracegrpc.Option, []otlpmetricgrpc.Option) {
	if strings.Contains(endpoint, "://") {
		return []otlptracegrpc.Option{otlptracegrpc.WithEndpointURL(endpoint)},
			[]otlpmetricgrpc.Option{otlpmetricgrpc.WithEndpointURL(endpoint)}
	}
	return []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure()},
		[]otlpmetricgrpc.Option{otlpmetricgrpc.WithEndpoint(endpoint), otlpmetricgrpc.WithInsecure()}
}

// Exporter says where spans go: "otlp", "file" or "none".
func (t *Telemetry) Exporter() string { return t.exporter }

// Gatherer reads the process's OpenTelemetry metrics in the Prometheus
// data model (names with their unit, dots as underscores: the histogram
// groundmesh.compute.call.duration in seconds is
// groundmesh_compute_call_duration_seconds).
func (t *Telemetry) Gatherer() prometheus.Gatherer { return t.prom }

// TracerProvider returns the provider that Setup installed globally.
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tp }

// ForceFlush writes every finished span that is still buffered.
func (t *Telemetry) ForceFlush(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, t.shutdownTimeout)
	defer cancel()
	if err := t.tp.ForceFlush(ctx); err != nil {
		return fmt.Errorf("flush spans: %w", err)
	}
	return nil
}

// Shutdown flushes and stops the providers. It returns within the configured
// ShutdownTimeout (2s by default) even when a collector is unreachable, in
// which case the spans still buffered are lost and the error says so.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, t.shutdownTimeout)
	defer cancel()
	// Both providers wait on the same deadline, so run them side by side.
	errc := make(chan error, 1)
	go func() { errc <- t.mp.Shutdown(ctx) }()
	var errs []error
	if err := t.tp.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("shut down tracer provider: %w", err))
	}
	if err := <-errc; err != nil {
		errs = append(errs, fmt.Errorf("shut down meter provider: %w", err))
	}
	return errors.Join(errs...)
}
