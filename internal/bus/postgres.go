package bus

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/store"
)

// postgresBackend keeps each topic in a table "watermill_<topic>" and each
// consumer group's position in "watermill_offsets_<topic>" (watermill-sql's
// DefaultPostgreSQLSchema: consumer groups supported, order kept; the queue
// schema rejects consumer groups). Payloads are stored as BYTEA so that a
// malformed payload still travels to the poison queue.
type postgresBackend struct {
	pool   *pgxpool.Pool
	cfg    Config
	logger watermill.LoggerAdapter
	pub    *pgPublisher
	schema wsql.SchemaAdapter
	notes  *notifier
}

func newPostgresBackend(pool *pgxpool.Pool, cfg Config, logger watermill.LoggerAdapter) (*postgresBackend, error) {
	schema := wsql.DefaultPostgreSQLSchema{
		GeneratePayloadType: func(string) string { return "BYTEA" },
	}
	pub, err := wsql.NewPublisher(wsql.BeginnerFromPgx(pool), wsql.PublisherConfig{
		SchemaAdapter:        schema,
		AutoInitializeSchema: true,
	}, logger)
	if err != nil {
		return nil, err
	}
	return &postgresBackend{
		pool: pool, cfg: cfg, logger: logger, schema: schema,
		pub:   &pgPublisher{Publisher: pub, pool: pool, schema: schema, logger: logger},
		notes: newNotifier(pool, logger),
	}, nil
}

func (p *postgresBackend) publisher() message.Publisher { return p.pub }

// subscriber polls topic's table for group, and is woken between polls by
// a notification of the topic (notifier).
func (p *postgresBackend) subscriber(group, topic string, _ HandleOptions) (message.Subscriber, error) {
	ack := p.cfg.AckDeadline
	const retry = time.Second // after a failed query
	wake, unregister := p.notes.register(topic)
	quit := make(chan struct{})
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(p.pool), wsql.SubscriberConfig{
		ConsumerGroup:  group,
		SchemaAdapter:  p.schema,
		OffsetsAdapter: advisoryOffsetsAdapter{},
		PollInterval:   p.cfg.PollInterval,
		ResendInterval: p.cfg.Retry.InitialInterval,
		RetryInterval:  retry,
		BackoffManager: &notifyBackoff{
			def:  wsql.NewDefaultBackoffManager(p.cfg.PollInterval, retry),
			poll: p.cfg.PollInterval, wake: wake, quit: quit,
		},
		AckDeadline:      &ack,
		InitializeSchema: true,
	}, p.logger)
	if err != nil {
		unregister()
		return nil, err
	}
	return &notifiedSubscriber{Subscriber: sub, quit: quit, unregister: unregister}, nil
}

func (p *postgresBackend) close() error {
	p.notes.close()
	return p.pub.Close()
}

// pgPublisher is the Postgres bus's publisher. Besides Publish (one
// autocommitted INSERT per call) it can publish inside a caller's
// transaction, which the outbox relay uses to publish a batch and mark it
// published in one commit.
type pgPublisher struct {
	*wsql.Publisher
	pool        *pgxpool.Pool
	schema      wsql.SchemaAdapter
	logger      watermill.LoggerAdapter
	initialized sync.Map
}

// Publish inserts msgs into topic's table (autocommitted) and notifies the
// topic's subscribers.
func (p *pgPublisher) Publish(topic string, msgs ...*message.Message) error {
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		return err
	}
	ctx := context.Background()
	if len(msgs) > 0 {
		ctx = context.WithoutCancel(msgs[0].Context())
	}
	// The messages are committed: a failed notification only delays them
	// to the subscribers' next poll.
	if _, err := p.pool.Exec(ctx, "SELECT pg_notify($1, $2)", NotifyChannel, topic); err != nil {
		p.logger.Error("postgres bus: notify subscribers (they see the message at their next poll)", err, watermill.LogFields{"topic": topic})
	}
	return nil
}

// PublishInTx inserts msgs into topic's table within tx: they become
// visible to consumers when tx commits, and vanish if it rolls back.
func (p *pgPublisher) PublishInTx(ctx context.Context, tx pgx.Tx, topic string, msgs ...*message.Message) error {
	if err := p.ensureTopic(ctx, topic); err != nil {
		return err
	}
	pub, err := wsql.NewPublisher(wsql.TxFromPgx(tx), wsql.PublisherConfig{SchemaAdapter: p.schema}, p.logger)
	if err != nil {
		return fmt.Errorf("publish to %s in tx: %w", topic, err)
	}
	for _, m := range msgs {
		m.SetContext(ctx)
	}
	if err := pub.Publish(topic, msgs...); err != nil {
		return fmt.Errorf("publish to %s in tx: %w", topic, err)
	}
	// Delivered when tx commits, and never if it rolls back.
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", NotifyChannel, topic); err != nil {
		return fmt.Errorf("publish to %s in tx: notify: %w", topic, err)
	}
	return nil
}

// ensureTopic creates topic's table (as the publisher's auto-initialisation
// would; it cannot run inside a caller's transaction).
func (p *pgPublisher) ensureTopic(ctx context.Context, topic string) error {
	if _, ok := p.initialized.Load(topic); ok {
		return nil
	}
	queries, err := p.schema.SchemaInitializingQueries(wsql.SchemaInitializingQueriesParams{Topic: topic})
	if err != nil {
		return fmt.Errorf("initialize topic %s: %w", topic, err)
	}
	if err := store.WithTx(ctx, p.pool, func(tx pgx.Tx) error {
		for _, q := range queries {
			if _, err := tx.Exec(ctx, q.Query, q.Args...); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("initialize topic %s: %w", topic, err)
	}
	p.initialized.Store(topic, true)
	return nil
}

// advisoryOffsetsAdapter is watermill-sql's DefaultPostgreSQLOffsetsAdapter
// with one change: it serialises the consumers of one group with a
// transaction-scoped advisory lock instead of SELECT ... FOR UPDATE on the
// offsets row.
//
// Why: the subscriber holds its transaction open while the handler runs, and
// only messages written by transactions older than every running
// transaction that has an xid are visible (transaction_id <
// pg_snapshot_xmin). FOR UPDATE gives the subscriber's transaction an xid, so
// one slow handler (a training run) would hide every newer message on every
// topic from every consumer until it finished — progress events included.
// An advisory lock takes no xid; the transaction gets one only in the ack
// statement at its end. A second process of the same group that waited on the
// lock may see stale offsets and redeliver a batch; the idempotency
// middleware acks those, and its ack then fails to serialize and is retried.
type advisoryOffsetsAdapter struct {
	wsql.DefaultPostgreSQLOffsetsAdapter
}

func (a advisoryOffsetsAdapter) NextOffsetQuery(params wsql.NextOffsetQueryParams) (wsql.Query, error) {
	return wsql.Query{
		Query: `
			SELECT o.offset_acked, o.last_processed_transaction_id
			FROM ` + a.MessagesOffsetsTable(params.Topic) + ` AS o,
				(SELECT pg_advisory_xact_lock(hashtextextended($2, 0))) AS lk
			WHERE o.consumer_group = $1`,
		Args: []any{params.ConsumerGroup, "watermill/" + params.Topic + "/" + params.ConsumerGroup},
	}, nil
}
