// Package outbox is the transactional outbox: a fact is written to the
// outbox table in the same transaction as the state change it reports
// (Add), and a Relay moves committed rows to the bus in order. A fact is
// therefore published if and only if its transaction commits, at least once;
// the outbox row id is the message UUID, so consumers (the bus's idempotency
// middleware) drop the rare duplicate a relay crash can cause.
package outbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/bus"
)

// NotifyChannel is the LISTEN/NOTIFY channel Add signals and the relay
// listens on.
const NotifyChannel = "groundmesh_outbox"

// Add writes a message for topic into the outbox within tx; it is relayed to
// the bus once tx commits, and never if tx rolls back. payload is encoded to
// JSON; meta is added to the metadata, which also gets schema_version,
// event_type, correlation_id and the trace context of ctx (traceparent) — an
// "<topic> outbox" producer span, child of the caller's span — so that the
// consumer's span continues the caller's trace.
func Add(ctx context.Context, tx pgx.Tx, topic string, payload any, meta map[string]string) error {
	if tx == nil {
		return errors.New("add to outbox: tx is nil")
	}
	ctx, span := otel.Tracer("groundmesh/outbox").Start(ctx, topic+" outbox",
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.destination.name", topic)))
	defer span.End()
	msg, err := bus.NewMessage(ctx, topic, payload, meta)
	if err != nil {
		return fmt.Errorf("add to outbox: %w", err)
	}
	span.SetAttributes(attribute.String("messaging.message.id", msg.UUID))
	if _, err := tx.Exec(ctx, `
		INSERT INTO outbox (id, topic, payload, metadata) VALUES ($1, $2, $3, $4)`,
		msg.UUID, topic, []byte(msg.Payload), map[string]string(msg.Metadata)); err != nil {
		return fmt.Errorf("add %s message to outbox: %w", topic, err)
	}
	// Delivered at commit; Postgres folds repeats within one transaction.
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, NotifyChannel); err != nil {
		return fmt.Errorf("add %s message to outbox: notify relay: %w", topic, err)
	}
	return nil
}
