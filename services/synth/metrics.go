package synth

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// synthMetrics are the service's OpenTelemetry instruments (GET /metrics
// shows groundmesh_synth_samples_total, groundmesh_synth_build_duration_seconds
// and groundmesh_synth_samples_per_second).
type synthMetrics struct {
	samples  metric.Int64Counter
	duration metric.Float64Histogram
	rate     metric.Float64Gauge
}

func newSynthMetrics() (*synthMetrics, error) {
	meter := otel.Meter("groundmesh/synth")
	m := &synthMetrics{}
	var err error
	if m.samples, err = meter.Int64Counter("groundmesh.synth.samples", metric.WithUnit("{sample}"),
		metric.WithDescription("Samples written by the synth sets this process built (reused sets add none).")); err != nil {
		return nil, err
	}
	if m.duration, err = meter.Float64Histogram("groundmesh.synth.build.duration", metric.WithUnit("s"),
		metric.WithDescription("Wall time of one synth set's build."),
		metric.WithExplicitBucketBoundaries(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600)); err != nil {
		return nil, err
	}
	// No unit: the exporter would add one more "_per_second" to the name.
	if m.rate, err = meter.Float64Gauge("groundmesh.synth.samples_per_second",
		metric.WithDescription("Samples per second of the latest synth set built.")); err != nil {
		return nil, err
	}
	return m, nil
}

// built records a finished build of n samples that took d.
func (m *synthMetrics) built(ctx context.Context, n int64, d time.Duration) {
	m.samples.Add(ctx, n)
	m.duration.Record(ctx, d.Seconds())
	if d > 0 {
		m.rate.Record(ctx, float64(n)/d.Seconds())
	}
}
