package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/groundmesh/groundmesh/internal/events"
)

// busMetrics are the bus's OpenTelemetry instruments, named by the
// messaging semantic conventions where they name one.
type busMetrics struct {
	// duration is messaging.process.duration: a handler's time, retries
	// included, by topic, consumer group and error.type.
	duration metric.Float64Histogram
	// lag is how long a message waited from being made (its published_at)
	// to its handler's start: transport, outbox and queue time together.
	lag metric.Float64Histogram
	// poison reads the size of the poison queue on each collection.
	poison metric.Registration
}

// newBusMetrics creates the instruments on the global meter provider and
// a gauge of poison_messages' rows read through pool.
func newBusMetrics(pool *pgxpool.Pool) (*busMetrics, error) {
	meter := otel.Meter("groundmesh/bus")
	m := &busMetrics{}
	var err error
	if m.duration, err = meter.Float64Histogram("messaging.process.duration", metric.WithUnit("s"),
		metric.WithDescription("Time a consumer's handler took for a message, retries included."),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800)); err != nil {
		return nil, err
	}
	if m.lag, err = meter.Float64Histogram("groundmesh.bus.lag", metric.WithUnit("s"),
		metric.WithDescription("Time from a message's publication to the start of its handler."),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600)); err != nil {
		return nil, err
	}
	poison, err := meter.Int64ObservableGauge("groundmesh.bus.poison.messages", metric.WithUnit("{message}"),
		metric.WithDescription("Messages in the poison queue (poison_messages), over every topic."))
	if err != nil {
		return nil, err
	}
	m.poison, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		var n int64
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM poison_messages`).Scan(&n); err != nil {
			return fmt.Errorf("count poison messages: %w", err)
		}
		o.ObserveInt64(poison, n)
		return nil
	}, poison)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// close stops reading the poison queue's size.
func (m *busMetrics) close() error {
	if m == nil || m.poison == nil {
		return nil
	}
	return m.poison.Unregister()
}

// metering records a message's lag and its handler's duration.
func metering(m *busMetrics, consumer, topic string) message.HandlerMiddleware {
	base := []attribute.KeyValue{
		attribute.String("messaging.destination.name", topic),
		attribute.String("messaging.consumer.group.name", consumer),
	}
	set := metric.WithAttributes(base...)
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			start := time.Now()
			if at, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(events.MetaPublishedAt)); err == nil {
				m.lag.Record(ctx, max(0, start.Sub(at).Seconds()), set)
			}
			out, err := h(msg)
			if err != nil {
				m.duration.Record(ctx, time.Since(start).Seconds(),
					metric.WithAttributes(append(base, attribute.String("error.type", fmt.Sprintf("%T", err)))...))
			} else {
				m.duration.Record(ctx, time.Since(start).Seconds(), set)
			}
			return out, err
		}
	}
}
