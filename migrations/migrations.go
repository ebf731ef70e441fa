// Package migrations holds groundmesh's SQL schema as goose migrations,
// embedded in the binary and applied on start.
//
// Every owner adds files in its own number range (00001-00009 platform,
// 00010-00019 ingest, 00020-00029 synth, 00030-00039 train, 00040-00049 eval,
// 00050-00059 ground). Files are written in parallel, so a database may
// already hold a higher version than a newly added file: Apply allows
// out-of-order migrations and applies every missing one. Apply takes a
// Postgres session advisory lock, so several processes may start at once.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// FS returns the embedded migration files.
func FS() embed.FS { return files }

// Apply brings the database behind db up to the newest migration. It is safe
// to call from several processes at once and a no-op when nothing is missing.
func Apply(ctx context.Context, db *sql.DB, logger *slog.Logger) error {
	if db == nil {
		return errors.New("apply migrations: db is nil")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	locker, err := lock.NewPostgresSessionLocker(
		// Poll every second for up to 5 minutes: a concurrent process
		// holding the lock is applying the same files.
		lock.WithLockTimeout(1, 300),
	)
	if err != nil {
		return fmt.Errorf("apply migrations: create session locker: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, files,
		goose.WithAllowOutofOrder(true),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(logger),
	)
	if err != nil {
		return fmt.Errorf("apply migrations: create goose provider: %w", err)
	}
	results, err := provider.Up(ctx)
	if err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	for _, r := range results {
		logger.InfoContext(ctx, "migration applied",
			slog.Int64("version", r.Source.Version),
			slog.String("file", r.Source.Path),
			slog.Duration("took", r.Duration))
	}
	return nil
}

// ApplyPool is Apply over a pgx pool.
func ApplyPool(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) error {
	if pool == nil {
		return errors.New("apply migrations: pool is nil")
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	return Apply(ctx, db, logger)
}
