package bus

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgconn"
)

type ctxKey int

const (
	correlationKey ctxKey = iota
	loggerKey
	processedKey
)

// WithCorrelationID returns ctx carrying a correlation id; Publish copies it
// into messages that do not name one.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey, id)
}

// CorrelationID returns the correlation id in ctx ("" when none). Inside a
// handler it is the consumed message's.
func CorrelationID(ctx context.Context) string {
	id, _ := ctx.Value(correlationKey).(string)
	return id
}

// Logger returns the logger a handler should use: the bus logger with the
// handler, topic, message id and correlation id attached. Outside a handler
// it returns a logger that discards.
func Logger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey).(*slog.Logger); ok {
		return l
	}
	return slog.New(slog.DiscardHandler)
}

func withLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey, l)
}

// processedMark identifies the message being handled, for MarkProcessed.
type processedMark struct {
	consumer  string
	messageID string
}

// Execer is what MarkProcessed writes with: a pgx.Tx (or pool, or conn).
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// MarkProcessed records, in the handler's own transaction tx, that the
// message being handled has been processed by this handler. The idempotency
// middleware records it anyway after the handler succeeds; calling
// MarkProcessed inside the transaction that holds the handler's effects makes
// the effects and the record commit together, so a redelivery after a crash
// between the two cannot apply the effects twice.
func MarkProcessed(ctx context.Context, tx Execer) error {
	m, ok := ctx.Value(processedKey).(processedMark)
	if !ok {
		return fmt.Errorf("mark message processed: ctx is not a bus handler's")
	}
	return insertProcessed(ctx, tx, m.consumer, m.messageID)
}

func insertProcessed(ctx context.Context, db Execer, consumer, messageID string) error {
	if _, err := db.Exec(ctx, `
		INSERT INTO processed_messages (consumer, message_id) VALUES ($1, $2)
		ON CONFLICT (consumer, message_id) DO NOTHING`, consumer, messageID); err != nil {
		return fmt.Errorf("mark message %s processed by %s: %w", messageID, consumer, err)
	}
	return nil
}
