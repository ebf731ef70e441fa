// Package store is groundmesh's Postgres plumbing: a traced pgx pool,
// transactions, and the shared lineage table. Services keep their own
// repositories; what lives here is what two or more of them need.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultMaxConns is the pool size Open uses when the URL does not set
// pool_max_conns. pgxpool's own default (max(4, NumCPU)) is too small for one
// process that runs many bus handlers: each Postgres subscriber holds a
// connection while its handler runs, and the handler needs another.
const DefaultMaxConns = 32

// Open connects a pgx pool to url (a postgres:// URL or key=value DSN) with
// OpenTelemetry tracing of every statement (otelpgx: one span per query,
// batch, copy and connect, as children of the span in the caller's ctx).
// It pings the server before returning.
func Open(ctx context.Context, url string, logger *slog.Logger) (*pgxpool.Pool, error) {
	if url == "" {
		return nil, errors.New("open postgres: empty url")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("open postgres: parse url: %w", err)
	}
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = int32(max(DefaultMaxConns, 4*runtime.NumCPU()))
	}
	cfg.ConnConfig.Tracer = otelpgx.NewTracer(otelpgx.WithTrimSQLInSpanName())
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open postgres: ping %s:%d: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	logger.DebugContext(ctx, "postgres pool open",
		slog.String("host", cfg.ConnConfig.Host),
		slog.String("database", cfg.ConnConfig.Database),
		slog.Int("max_conns", int(cfg.MaxConns)))
	return pool, nil
}

// TxBeginner starts a transaction: a *pgxpool.Pool, a *pgx.Conn, or a pgx.Tx
// (whose Begin makes a savepoint).
type TxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// WithTx runs fn in a transaction on db and commits it when fn returns nil.
// It rolls back when fn returns an error or panics (the panic is re-raised
// after the rollback). Passing a pgx.Tx as db nests fn in a savepoint.
func WithTx(ctx context.Context, db TxBeginner, fn func(pgx.Tx) error) (err error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			panic(p)
		}
	}()
	if err := fn(tx); err != nil {
		if rbErr := tx.Rollback(context.WithoutCancel(ctx)); rbErr != nil && !errors.Is(rbErr, pgx.ErrTxClosed) {
			return errors.Join(err, fmt.Errorf("roll back transaction: %w", rbErr))
		}
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit transaction: %w", err)
	}
	return nil
}

// Execer runs a statement: a pgx.Tx, a *pgxpool.Pool or a *pgx.Conn.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// AddLineage records that the entity (srcKind, srcID) relates to
// (dstKind, dstID) by relation, e.g. ("dataset", id, "synth_set", id2,
// "derived_from"). Adding the same edge again is a no-op. Call it with the
// transaction that creates the entities so that the edge commits with them.
func AddLineage(ctx context.Context, tx Execer, srcKind, srcID, dstKind, dstID, relation string) error {
	for name, v := range map[string]string{
		"src kind": srcKind, "src id": srcID, "dst kind": dstKind, "dst id": dstID, "relation": relation,
	} {
		if v == "" {
			return fmt.Errorf("add lineage edge: empty %s", name)
		}
	}
	_, err := tx.Exec(ctx, `
		INSERT INTO lineage_edges (src_kind, src_id, dst_kind, dst_id, relation)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (src_kind, src_id, dst_kind, dst_id, relation) DO NOTHING`,
		srcKind, srcID, dstKind, dstID, relation)
	if err != nil {
		return fmt.Errorf("add lineage edge %s/%s -%s-> %s/%s: %w", srcKind, srcID, relation, dstKind, dstID, err)
	}
	return nil
}
