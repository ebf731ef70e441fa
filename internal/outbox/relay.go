package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Publisher is what the relay publishes with: a Watermill publisher, such as
// (*bus.Bus).Publisher(). It must publish the messages it is given as they
// are (UUID and metadata included).
type Publisher interface {
	Publish(topic string, messages ...*message.Message) error
}

// TxPublisher is a Publisher that can also publish inside a Postgres
// transaction, as the Postgres bus's publisher can. The relay then publishes
// a batch and marks it published in one commit: exactly once, and one commit
// per batch instead of one per topic run.
type TxPublisher interface {
	PublishInTx(ctx context.Context, tx pgx.Tx, topic string, messages ...*message.Message) error
}

// RelayConfig configures a Relay.
type RelayConfig struct {
	// BatchSize is the most rows moved per transaction. Default 500.
	BatchSize int
	// PollInterval is the fallback wake-up when no notification arrives
	// (a notification lost while reconnecting). Default 2s.
	PollInterval time.Duration
	// RetryInterval is the wait after a failed batch. Default 1s.
	RetryInterval time.Duration
	// Retention is how long published rows are kept (for audit and
	// replay) before the relay deletes them. Default 24h; negative keeps
	// them forever.
	Retention time.Duration
	// Logger receives the relay's logs. Default: discard.
	Logger *slog.Logger
	// TracerProvider makes the relay's batch spans. Default: global.
	TracerProvider trace.TracerProvider
}

func (c *RelayConfig) setDefaults() {
	if c.BatchSize == 0 {
		c.BatchSize = 500
	}
	if c.PollInterval == 0 {
		c.PollInterval = 2 * time.Second
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = time.Second
	}
	if c.Retention == 0 {
		c.Retention = 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
}

func (c RelayConfig) validate() error {
	if c.BatchSize < 1 {
		return fmt.Errorf("batch size %d must be positive", c.BatchSize)
	}
	if c.PollInterval < 0 || c.RetryInterval < 0 {
		return errors.New("intervals must not be negative")
	}
	return nil
}

// relayLock is the advisory lock key that lets one relay at a time move rows,
// so that order is kept with several processes running a relay.
const relayLock = "groundmesh/outbox-relay"

// Relay moves committed outbox rows to the bus, oldest first, in batches:
// it publishes a batch (the row id as message UUID, the row's metadata —
// trace context included — as the message's) and marks it published in the
// same transaction that locked it. A crash between the two republishes the
// batch: delivery is at least once. Any number of processes may run a Relay;
// one at a time does the work.
type Relay struct {
	cfg    RelayConfig
	pool   *pgxpool.Pool
	pub    Publisher
	tracer trace.Tracer
}

// NewRelay builds a relay that reads pool's outbox and publishes with pub.
func NewRelay(cfg RelayConfig, pool *pgxpool.Pool, pub Publisher) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("create outbox relay: %w", err)
	}
	if pool == nil || pub == nil {
		return nil, errors.New("create outbox relay: pool and publisher are required")
	}
	return &Relay{cfg: cfg, pool: pool, pub: pub, tracer: cfg.TracerProvider.Tracer("groundmesh/outbox")}, nil
}

// Run relays until ctx is done. It wakes on the NOTIFY that Add sends at
// commit, and every PollInterval. It returns nil when ctx is cancelled.
func (r *Relay) Run(ctx context.Context) error {
	log := r.cfg.Logger
	var listener *pgxpool.Conn
	defer func() {
		if listener != nil {
			// The connection may be mid-wait; do not return it to the pool.
			_ = listener.Hijack().Close(context.Background())
		}
	}()
	lastCleanup := time.Time{}
	for {
		if ctx.Err() != nil {
			return nil
		}
		if listener == nil {
			c, err := r.listen(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				log.WarnContext(ctx, "outbox relay cannot listen; polling", slog.Any("error", err))
			}
			listener = c
		}

		_, err := r.Flush(ctx)
		wait := r.cfg.PollInterval
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.ErrorContext(ctx, "outbox relay batch failed", slog.Any("error", err))
			wait = r.cfg.RetryInterval
		}
		if r.cfg.Retention > 0 && time.Since(lastCleanup) > time.Minute {
			if err := r.cleanup(ctx); err != nil && ctx.Err() == nil {
				log.WarnContext(ctx, "outbox cleanup failed", slog.Any("error", err))
			}
			lastCleanup = time.Now()
		}

		if listener == nil {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		_, werr := listener.Conn().WaitForNotification(wctx)
		cancel()
		if werr != nil && ctx.Err() == nil && !errors.Is(werr, context.DeadlineExceeded) && !listener.Conn().IsClosed() {
			log.WarnContext(ctx, "outbox relay wait failed", slog.Any("error", werr))
		}
		if werr != nil && (listener.Conn().IsClosed() || !errors.Is(werr, context.DeadlineExceeded)) {
			// Timeouts may leave the connection closed; start over.
			_ = listener.Hijack().Close(context.Background())
			listener = nil
		}
	}
}

func (r *Relay) listen(ctx context.Context) (*pgxpool.Conn, error) {
	c, err := r.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire listen connection: %w", err)
	}
	if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{NotifyChannel}.Sanitize()); err != nil {
		c.Release()
		return nil, fmt.Errorf("listen %s: %w", NotifyChannel, err)
	}
	r.cfg.Logger.DebugContext(ctx, "outbox relay listening", slog.String("channel", NotifyChannel))
	return c, nil
}

// Flush relays batches until the outbox holds no committed unpublished row
// (or another relay holds the lock), and returns how many messages it
// published.
func (r *Relay) Flush(ctx context.Context) (int, error) {
	total := 0
	// Each Flush starts from the lowest seq, so a row whose transaction
	// committed after a higher seq was relayed is still picked up.
	var after int64
	for {
		n, err := r.relayBatch(ctx, &after)
		total += n
		if err != nil || n < r.cfg.BatchSize {
			return total, err
		}
	}
}

type row struct {
	seq      int64
	id       string
	topic    string
	payload  []byte
	metadata map[string]string
}

// relayBatch publishes and marks one batch in one transaction.
func (r *Relay) relayBatch(ctx context.Context, after *int64) (n int, err error) {
	ctx, span := r.tracer.Start(ctx, "outbox relay batch", trace.WithSpanKind(trace.SpanKindInternal))
	defer func() {
		span.SetAttributes(attribute.Int("groundmesh.outbox.messages", n))
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()

	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("relay outbox: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	var locked bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))`, relayLock).Scan(&locked); err != nil {
		return 0, fmt.Errorf("relay outbox: lock: %w", err)
	}
	if !locked {
		return 0, nil // another relay is at work
	}

	// Take the batch and mark it in one statement; publishing follows in
	// the same transaction, so a failed publish rolls the marks back. The
	// inner scan walks the partial index in seq order from where this
	// Flush's previous batch ended: a bitmap scan (which the planner picks
	// on a freshly filled table) would read the whole backlog, and the dead
	// entries of rows already published, for every batch.
	if _, err := tx.Exec(ctx, `SET LOCAL enable_bitmapscan = off`); err != nil {
		return 0, fmt.Errorf("relay outbox: set plan: %w", err)
	}
	rows, err := tx.Query(ctx, `
		UPDATE outbox SET published_at = now()
		WHERE ctid = ANY (ARRAY(
			SELECT ctid FROM outbox
			WHERE published_at IS NULL AND seq > $2
			ORDER BY seq LIMIT $1
			FOR UPDATE))
		RETURNING seq, id::text, topic, payload, metadata`, r.cfg.BatchSize, *after)
	if err != nil {
		return 0, fmt.Errorf("relay outbox: take batch: %w", err)
	}
	batch, err := pgx.CollectRows(rows, func(rs pgx.CollectableRow) (row, error) {
		var x row
		err := rs.Scan(&x.seq, &x.id, &x.topic, &x.payload, &x.metadata)
		return x, err
	})
	if err != nil {
		return 0, fmt.Errorf("relay outbox: read batch: %w", err)
	}
	slices.SortFunc(batch, func(a, b row) int { return cmp.Compare(a.seq, b.seq) })
	if len(batch) == 0 {
		return 0, nil
	}

	// Publish runs of one topic in one call each, keeping the outbox order.
	for start := 0; start < len(batch); {
		end := start
		for end < len(batch) && batch[end].topic == batch[start].topic {
			end++
		}
		msgs := make([]*message.Message, 0, end-start)
		for _, x := range batch[start:end] {
			m := message.NewMessage(x.id, x.payload)
			for k, v := range x.metadata {
				m.Metadata.Set(k, v)
			}
			m.SetContext(ctx)
			msgs = append(msgs, m)
		}
		var err error
		if tp, ok := r.pub.(TxPublisher); ok {
			err = tp.PublishInTx(ctx, tx, batch[start].topic, msgs...)
		} else {
			err = r.pub.Publish(batch[start].topic, msgs...)
		}
		if err != nil {
			return 0, fmt.Errorf("relay outbox: publish %d messages to %s: %w", len(msgs), batch[start].topic, err)
		}
		start = end
	}

	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("relay outbox: commit: %w", err)
	}
	*after = batch[len(batch)-1].seq
	return len(batch), nil
}

func (r *Relay) cleanup(ctx context.Context) error {
	_, err := r.pool.Exec(ctx, `DELETE FROM outbox WHERE published_at < now() - $1::interval`, r.cfg.Retention)
	if err != nil {
		return fmt.Errorf("delete published outbox rows: %w", err)
	}
	return nil
}
