package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/events"
)

// Metadata keys the poison queue adds to a poisoned message.
const (
	MetaPoisonReason    = "poison_reason"
	MetaPoisonTopic     = "poison_topic"
	MetaPoisonConsumer  = "poison_consumer"
	MetaPoisonMessageID = "poison_message_id"
)

// Each middleware below does one thing; Handle chains them, outermost first:
// tracing, metering (metrics.go), correlation, idempotency, poison, schema
// check, retry, recoverer.

// tracing starts a consumer span "<topic> process" whose parent is the
// producer's span, read from the message's traceparent.
func tracing(tracer trace.Tracer, prop propagation.TextMapPropagator, consumer, topic string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx := prop.Extract(msg.Context(), propagation.MapCarrier(msg.Metadata))
			ctx, span := tracer.Start(ctx, topic+" process",
				trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(
					attribute.String("messaging.operation.type", "process"),
					attribute.String("messaging.destination.name", topic),
					attribute.String("messaging.consumer.group.name", consumer),
					attribute.String("messaging.message.id", msg.UUID),
				))
			defer span.End()
			msg.SetContext(ctx)
			out, err := h(msg)
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
			}
			return out, err
		}
	}
}

// correlation puts the message's correlation id into ctx, and a logger that
// carries it (with handler, topic and message id) for Logger(ctx).
func correlation(logger *slog.Logger, consumer, topic string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			id := msg.Metadata.Get(events.MetaCorrelationID)
			l := logger.With(
				slog.String("handler", consumer),
				slog.String("topic", topic),
				slog.String("message_id", msg.UUID))
			ctx := msg.Context()
			if id != "" {
				ctx = WithCorrelationID(ctx, id)
				l = l.With(slog.String("correlation_id", id))
				trace.SpanFromContext(ctx).SetAttributes(attribute.String("groundmesh.correlation_id", id))
			}
			msg.SetContext(withLogger(ctx, l))
			return h(msg)
		}
	}
}

// idempotency acks, without running the handler, a message this consumer
// has already processed (same UUID), and records the message as processed
// after the handler (or the poison queue) has dealt with it. Handlers that
// want the record in the same transaction as their effects call
// MarkProcessed.
func idempotency(pool *pgxpool.Pool, consumer string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			var done bool
			if err := pool.QueryRow(ctx, `
				SELECT EXISTS (SELECT 1 FROM processed_messages WHERE consumer = $1 AND message_id = $2)`,
				consumer, msg.UUID).Scan(&done); err != nil {
				return nil, fmt.Errorf("check whether message %s was processed: %w", msg.UUID, err)
			}
			if done {
				Logger(ctx).DebugContext(ctx, "duplicate message acked without handling")
				trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("groundmesh.duplicate", true))
				return nil, nil
			}
			msg.SetContext(context.WithValue(ctx, processedKey, processedMark{consumer: consumer, messageID: msg.UUID}))
			out, err := h(msg)
			if err != nil {
				return out, err
			}
			// The handler is done: a failure to record it only risks one
			// more run on redelivery, so it is retried as any error is.
			if err := insertProcessed(context.WithoutCancel(ctx), pool, consumer, msg.UUID); err != nil {
				return out, err
			}
			return out, nil
		}
	}
}

// poison catches the error the inner chain gives up with, records the
// message in poison_messages and publishes it to events.TopicPoison with the
// reason (unless pub is nil), then acks it so that the handler keeps
// consuming. Only when the
// poison queue itself fails is the message nacked (and redelivered).
func poison(pool *pgxpool.Pool, pub message.Publisher, consumer, topic string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, herr := h(msg)
			if herr == nil {
				return out, nil
			}
			ctx := context.WithoutCancel(msg.Context())
			reason := herr.Error()
			Logger(ctx).ErrorContext(ctx, "message sent to the poison queue", slog.String("reason", reason))
			trace.SpanFromContext(ctx).SetAttributes(attribute.String("groundmesh.poison_reason", reason))

			meta, err := json.Marshal(msg.Metadata)
			if err != nil {
				return nil, errors.Join(herr, fmt.Errorf("poison message %s: marshal metadata: %w", msg.UUID, err))
			}
			if _, err := pool.Exec(ctx, `
				INSERT INTO poison_messages (topic, consumer, message_id, payload, metadata, reason)
				VALUES ($1, $2, $3, $4, $5, $6)
				ON CONFLICT (consumer, message_id) DO UPDATE
				SET reason = excluded.reason, payload = excluded.payload, metadata = excluded.metadata, created_at = now()`,
				topic, consumer, msg.UUID, []byte(msg.Payload), meta, reason); err != nil {
				return nil, errors.Join(herr, fmt.Errorf("poison message %s: record: %w", msg.UUID, err))
			}

			if pub == nil {
				return nil, nil
			}
			// A UUID derived from (consumer, message) lets consumers of the
			// poison topic dedupe a re-poisoned redelivery.
			pm := message.NewMessage(uuid.NewSHA1(uuid.NameSpaceOID, []byte(consumer+"/"+msg.UUID)).String(), msg.Payload)
			for k, v := range msg.Metadata {
				pm.Metadata.Set(k, v)
			}
			pm.Metadata.Set(MetaPoisonReason, reason)
			pm.Metadata.Set(MetaPoisonTopic, topic)
			pm.Metadata.Set(MetaPoisonConsumer, consumer)
			pm.Metadata.Set(MetaPoisonMessageID, msg.UUID)
			pm.Metadata.Set(events.MetaEventType, events.TopicPoison)
			pm.SetContext(ctx)
			if err := pub.Publish(events.TopicPoison, pm); err != nil {
				return nil, errors.Join(herr, fmt.Errorf("poison message %s: publish: %w", msg.UUID, err))
			}
			return nil, nil
		}
	}
}

// schemaCheck rejects (Permanent) a message whose schema_version major this
// build does not know, or whose payload is not JSON.
func schemaCheck(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		v := msg.Metadata.Get(events.MetaSchemaVersion)
		if major(v) != major(events.SchemaVersion) {
			return nil, Permanent(fmt.Errorf("unknown schema_version %q (this consumer knows major %s)", v, major(events.SchemaVersion)))
		}
		if !json.Valid(msg.Payload) {
			return nil, Permanent(errors.New("payload is not valid JSON"))
		}
		return h(msg)
	}
}

func major(version string) string {
	m, _, _ := strings.Cut(strings.TrimPrefix(version, "v"), ".")
	return m
}

// RetryConfig sets the backoff of handler retries.
type RetryConfig struct {
	// MaxRetries is how many times a failing handler is retried before the
	// message is poisoned. Default 3; negative means none.
	MaxRetries int
	// InitialInterval is the first wait. Default 100ms.
	InitialInterval time.Duration
	// MaxInterval caps the exponential wait. Default 5s.
	MaxInterval time.Duration
}

func (c *RetryConfig) setDefaults() {
	if c.MaxRetries == 0 {
		c.MaxRetries = 3
	}
	if c.MaxRetries < 0 {
		c.MaxRetries = 0
	}
	if c.InitialInterval == 0 {
		c.InitialInterval = 100 * time.Millisecond
	}
	if c.MaxInterval == 0 {
		c.MaxInterval = 5 * time.Second
	}
}

// retry retries transient errors with exponential backoff; Permanent errors
// and recovered panics are not retried.
func retry(cfg RetryConfig, logger watermill.LoggerAdapter) message.HandlerMiddleware {
	return middleware.Retry{
		MaxRetries:          cfg.MaxRetries,
		InitialInterval:     cfg.InitialInterval,
		MaxInterval:         cfg.MaxInterval,
		Multiplier:          2,
		RandomizationFactor: 0.2,
		ResetContextOnRetry: true,
		ShouldRetry: func(p middleware.RetryParams) bool {
			return !IsPermanent(p.Err) && !isPanic(p.Err)
		},
		Logger: logger,
	}.Middleware
}

// recoverer turns a handler panic into an error (with the stack) instead of
// crashing the process.
func recoverer(h message.HandlerFunc) message.HandlerFunc {
	return middleware.Recoverer(h)
}

func isPanic(err error) bool {
	var p middleware.RecoveredPanicError
	return errors.As(err, &p)
}
