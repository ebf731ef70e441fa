package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/groundmesh/groundmesh/internal/store"
)

func TestOpenTracesStatements(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	defer otel.SetTracerProvider(prev)

	ctx := context.Background()
	pool, err := store.Open(ctx, store.NewTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	ctx, parent := tp.Tracer("test").Start(ctx, "use case")
	var n int
	if err := pool.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("query: %v %d", err, n)
	}
	parent.End()

	found := false
	for _, s := range rec.Ended() {
		if s.Parent().SpanID() == parent.SpanContext().SpanID() && strings.Contains(s.Name(), "SELECT") {
			found = true
		}
	}
	if !found {
		var names []string
		for _, s := range rec.Ended() {
			names = append(names, s.Name())
		}
		t.Fatalf("no SQL span under the caller's span; spans: %v", names)
	}
}

func TestOpenFailsClearlyWhenUnreachable(t *testing.T) {
	_, err := store.Open(context.Background(), "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=2", nil)
	if err == nil || !strings.Contains(err.Error(), "open postgres") {
		t.Fatalf("want a wrapped open error, got %v", err)
	}
}

func TestWithTxCommitsAndRollsBack(t *testing.T) {
	ctx := context.Background()
	pool, err := store.Open(ctx, store.NewTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE t (v int)`); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	if err := store.WithTx(ctx, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO t VALUES (1)`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if count() != 1 {
		t.Fatal("committed row missing")
	}

	boom := errors.New("boom")
	err = store.WithTx(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO t VALUES (2)`); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("want the fn error, got %v", err)
	}
	if count() != 1 {
		t.Fatal("rolled back row is visible")
	}

	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic swallowed")
			}
		}()
		_ = store.WithTx(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO t VALUES (3)`); err != nil {
				return err
			}
			panic("handler bug")
		})
	}()
	if count() != 1 {
		t.Fatal("row from a panicking tx is visible")
	}

	// A failing statement surfaces as a wrapped error.
	err = store.WithTx(ctx, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO missing VALUES (1)`)
		return err
	})
	if err == nil {
		t.Fatal("want an error")
	}
}

func TestAddLineageIsIdempotent(t *testing.T) {
	ctx := context.Background()
	pool, err := store.Open(ctx, store.NewTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for range 3 {
		if err := store.WithTx(ctx, pool, func(tx pgx.Tx) error {
			if err := store.AddLineage(ctx, tx, "dataset", "d1", "synth_set", "s1", "derived_from"); err != nil {
				return err
			}
			return store.AddLineage(ctx, tx, "dataset", "d1", "synth_set", "s1", "sampled_from")
		}); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM lineage_edges WHERE src_id = 'd1'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("want 2 distinct edges, got %d", n)
	}
	if err := store.AddLineage(ctx, pool, "dataset", "", "x", "y", "z"); err == nil {
		t.Fatal("empty id accepted")
	}
}

func TestNewTestDBDropsDatabase(t *testing.T) {
	var url string
	t.Run("inner", func(t *testing.T) { url = store.NewTestDB(t) })
	name := url[strings.LastIndex(url, "/")+1:]
	name = strings.SplitN(name, "?", 2)[0]
	admin := os.Getenv("DATABASE_URL")
	if admin == "" {
		admin = store.DefaultTestDatabaseURL
	}
	conn, err := pgx.Connect(context.Background(), admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatalf("database %s still exists after the test ended", name)
	}
}

// fatalTB records Fatalf instead of failing the real test.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (f *fatalTB) Skip(...any)           { f.msg = "skipped"; runtime.Goexit() }
func (f *fatalTB) Skipf(string, ...any)  { f.msg = "skipped"; runtime.Goexit() }
func (f *fatalTB) SkipNow()              { f.msg = "skipped"; runtime.Goexit() }
func (f *fatalTB) Cleanup(func())        {}
func (f *fatalTB) Name() string          { return "unreachable" }
func (f *fatalTB) Errorf(string, ...any) {}

func TestNewTestDBFailsWhenPostgresIsUnreachable(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		store.NewTestDB(f)
	}()
	<-done
	if !strings.Contains(f.msg, "Postgres is unreachable") || !strings.Contains(f.msg, "DATABASE_URL") {
		t.Fatalf("want a clear fatal message, got %q", f.msg)
	}
}

// TestOpenNeverShowsThePassword: whether the URL is malformed, the server
// is unreachable or the pool opens, neither the error nor the log carries
// the password of the connection URL.
func TestOpenNeverShowsThePassword(t *testing.T) {
	const secret = "s3cr3t-Pa55word"
	var logs strings.Builder
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, url := range []string{
		"postgres://groundmesh:" + secret + "@127.0.0.1:1/groundmesh?connect_timeout=2",
		"postgres://groundmesh:" + secret + "@127.0.0.1:1/groundmesh?pool_max_conns=many",
		"postgres://groundmesh:" + secret + "@[::1:5432/groundmesh",
		"host=127.0.0.1 port=1 user=groundmesh password=" + secret + " connect_timeout=2",
	} {
		pool, err := store.Open(ctx, url, logger)
		if err == nil {
			pool.Close()
			t.Fatalf("Open(%q) succeeded against a closed port", url)
		}
		t.Logf("refused: %v", err)
		if strings.Contains(err.Error(), secret) {
			t.Errorf("the error shows the password: %v", err)
		}
	}
	// And when the pool opens (the server trusts loopback, so the
	// password is sent and ignored): its debug line names host and
	// database only.
	u, err := url.Parse(store.NewTestDB(t))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), secret)
	pool, err := store.Open(ctx, u.String(), logger)
	if err != nil {
		t.Fatalf("open the test database with a password: %v", err)
	}
	pool.Close()
	if !strings.Contains(logs.String(), "postgres pool open") {
		t.Errorf("no log line for the opened pool:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("the log shows the password:\n%s", logs.String())
	}
}
