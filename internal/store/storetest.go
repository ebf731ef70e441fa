package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/migrations"
)

// DefaultTestDatabaseURL is the server NewTestDB uses when DATABASE_URL is
// not set.
const DefaultTestDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// NewTestDB creates a uniquely named database on the server named by
// DATABASE_URL (default DefaultTestDatabaseURL), applies every migration, and
// returns its URL. The database is dropped when the test ends. When Postgres
// cannot be reached the test fails (never skips) with a message saying how to
// point it at a server.
func NewTestDB(t testing.TB) (dbURL string) {
	t.Helper()
	admin := os.Getenv("DATABASE_URL")
	if admin == "" {
		admin = DefaultTestDatabaseURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("store.NewTestDB: Postgres is unreachable at %s (set DATABASE_URL to a server this test may create databases on): %v",
			redact(admin), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("store.NewTestDB: random name: %v", err)
	}
	name := "gmtest_" + sanitize(t.Name()) + "_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("store.NewTestDB: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Errorf("store.NewTestDB: drop database %s: connect: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("store.NewTestDB: drop database %s: %v", name, err)
		}
	})

	dbURL, err = withDatabase(admin, name)
	if err != nil {
		t.Fatalf("store.NewTestDB: %v", err)
	}
	pool, err := Open(ctx, dbURL, nil)
	if err != nil {
		t.Fatalf("store.NewTestDB: %v", err)
	}
	defer pool.Close()
	if err := migrations.ApplyPool(ctx, pool, nil); err != nil {
		t.Fatalf("store.NewTestDB: %v", err)
	}
	return dbURL
}

// withDatabase returns dsn with its database replaced by name. It accepts
// URLs and key=value DSNs.
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("parse DATABASE_URL: %w", err)
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	return dsn + " dbname=" + name, nil
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
		if b.Len() >= 30 {
			break
		}
	}
	return b.String()
}

func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		return dsn
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// NewTestPool is a pool (Open) over a fresh database from NewTestDB,
// closed when the test ends.
func NewTestPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := Open(context.Background(), NewTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
