package migrations_test

import (
	"context"
	"io/fs"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/migrations"
)

var platformTables = []string{"outbox", "processed_messages", "poison_messages", "lineage_edges", "activity_bridge", "workers"}

func TestApplyTwiceIsIdempotent(t *testing.T) {
	ctx := context.Background()
	url := store.NewTestDB(t) // applies once
	pool, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	before := versions(t, pool)
	for i := range 2 {
		if err := migrations.ApplyPool(ctx, pool, nil); err != nil {
			t.Fatalf("apply #%d: %v", i+2, err)
		}
	}
	after := versions(t, pool)
	if before != after {
		t.Fatalf("applied versions changed on re-apply: %d -> %d", before, after)
	}
	if want := countFiles(t); after != want {
		t.Fatalf("applied %d versions, want one per embedded file (%d)", after, want)
	}
	assertTables(t, pool)
}

// TestApplyConcurrently starts several appliers against one empty database, as
// several processes do when the stack starts.
func TestApplyConcurrently(t *testing.T) {
	ctx := context.Background()
	url := emptyDB(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			pool, err := store.Open(ctx, url, nil)
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			errs[i] = migrations.ApplyPool(ctx, pool, nil)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("applier %d: %v", i, err)
		}
	}
	pool, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if got, want := versions(t, pool), countFiles(t); got != want {
		t.Fatalf("applied %d versions, want %d", got, want)
	}
	assertTables(t, pool)
}

func versions(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(),
		`SELECT count(DISTINCT version_id) FROM goose_db_version WHERE version_id > 0 AND is_applied`).Scan(&n); err != nil {
		t.Fatalf("count applied versions: %v", err)
	}
	return n
}

func countFiles(t *testing.T) int {
	t.Helper()
	entries, err := fs.ReadDir(migrations.FS(), ".")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".sql") {
			n++
		}
	}
	if n == 0 {
		t.Fatal("no embedded migrations")
	}
	return n
}

func assertTables(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	for _, table := range platformTables {
		var ok bool
		if err := pool.QueryRow(context.Background(), `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Errorf("table %s missing after migrations", table)
		}
	}
}

// emptyDB creates a database without migrations and drops it at the end.
func emptyDB(t *testing.T) string {
	t.Helper()
	admin := os.Getenv("DATABASE_URL")
	if admin == "" {
		admin = store.DefaultTestDatabaseURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("Postgres unreachable at DATABASE_URL (%s): %v", admin, err)
	}
	defer conn.Close(context.Background())
	name := "gmtest_migrations_concurrent_" + time.Now().Format("150405_000000000")
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), admin)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Error(err)
		}
	})
	cfg, err := pgx.ParseConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = name
	return "postgres://" + cfg.User + "@" + cfg.Host + ":" + itoa(int(cfg.Port)) + "/" + name + "?sslmode=disable"
}

func itoa(i int) string {
	const digits = "0123456789"
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{digits[i%10]}, b...)
	}
	return string(b)
}
