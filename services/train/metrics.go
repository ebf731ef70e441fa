package train

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// trainMetrics are the service's OpenTelemetry instruments (GET /metrics
// shows them as groundmesh_train_step_duration_seconds and
// groundmesh_train_loss).
type trainMetrics struct {
	step metric.Float64Histogram
	loss metric.Float64Gauge
}

func newTrainMetrics() (*trainMetrics, error) {
	meter := otel.Meter("groundmesh/train")
	m := &trainMetrics{}
	var err error
	if m.step, err = meter.Float64Histogram("groundmesh.train.step.duration", metric.WithUnit("s"),
		metric.WithDescription("Wall time of one optimizer step, from the backend's progress reports, by stage and backend."),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)); err != nil {
		return nil, err
	}
	if m.loss, err = meter.Float64Gauge("groundmesh.train.loss",
		metric.WithDescription("Training loss at the latest progress report, by stage and backend.")); err != nil {
		return nil, err
	}
	return m, nil
}

// stepClock turns a stage's progress reports into step times.
type stepClock struct {
	step int
	at   time.Time
}

// record notes a progress report at step with loss: the time since the
// previous report, over the steps between them, is each step's time.
func (m *trainMetrics) record(ctx context.Context, c *stepClock, stage, backend string, step int, loss float64) {
	now := time.Now()
	attrs := metric.WithAttributes(attribute.String("stage", stage), attribute.String("backend", backend))
	if !c.at.IsZero() && step > c.step {
		per := now.Sub(c.at).Seconds() / float64(step-c.step)
		for range min(step-c.step, 1000) {
			m.step.Record(ctx, per, attrs)
		}
	}
	m.loss.Record(ctx, loss, attrs)
	c.step, c.at = step, now
}
