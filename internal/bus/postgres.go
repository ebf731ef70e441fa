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
		pub: &pgPublisher{Publisher: pub, pool: pool, schema: schema, logger: logger},
	}, nil
}

func (p *postgresBackend) publisher() message.Publisher { return p.pub }

func (p *postgresBackend) subscriber(group string) (message.Subscriber, error) {
	ack := p.cfg.AckDeadline
	return wsql.NewSubscriber(wsql.BeginnerFromPgx(p.pool), wsql.SubscriberConfig{
		ConsumerGroup:    group,
		SchemaAdapter:    p.schema,
		OffsetsAdapter:   advisoryOffsetsAdapter{},
		PollInterval:     p.cfg.PollInterval,
		ResendInterval:   p.cfg.Retry.InitialInterval,
		RetryInterval:    time.Second,
		AckDeadline:      &ack,
		InitializeSchema: true,
	}, p.logger)
}

func (p *postgresBackend) close() error { return p.pub.Close() }

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
