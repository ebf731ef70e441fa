package bus

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/groundmesh/groundmesh/internal/store"
)

func testPool(t *testing.T) *pgxpool.Pool { return store.NewTestPool(t) }

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("BUS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func testTracer() (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	rec := tracetest.NewSpanRecorder()
	return rec, sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
}

// fastConfig is a Config with short intervals for tests.
func fastConfig(t *testing.T, kind string) Config {
	return Config{
		Kind:         kind,
		Logger:       testLogger(t),
		PollInterval: 20 * time.Millisecond,
		Retry:        RetryConfig{MaxRetries: 2, InitialInterval: 5 * time.Millisecond, MaxInterval: 20 * time.Millisecond},
		CloseTimeout: 5 * time.Second,
	}
}

// startBus builds a bus, lets register add handlers, runs it and waits until
// it is subscribed. The bus is closed at cleanup.
func startBus(t *testing.T, cfg Config, pool *pgxpool.Pool, register func(b *Bus)) *Bus {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b, err := New(ctx, cfg, pool)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if register != nil {
		register(b)
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	select {
	case <-b.Running():
	case err := <-done:
		cancel()
		t.Fatalf("bus stopped before running: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("bus did not start in 30s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("bus run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("bus did not stop in 15s")
		}
		if err := b.Close(); err != nil {
			t.Errorf("close bus: %v", err)
		}
	})
	return b
}

// collector records what a handler saw.
type collector struct {
	mu   sync.Mutex
	msgs []*message.Message
	ctxs []context.Context
	ch   chan struct{}
}

func newCollector() *collector { return &collector{ch: make(chan struct{}, 1000)} }

func (c *collector) handle(ctx context.Context, msg *message.Message) error {
	c.mu.Lock()
	c.msgs = append(c.msgs, msg)
	c.ctxs = append(c.ctxs, ctx)
	c.mu.Unlock()
	c.ch <- struct{}{}
	return nil
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

// wait blocks until the collector has seen n messages.
func (c *collector) wait(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for c.count() < n {
		select {
		case <-c.ch:
		case <-deadline:
			t.Fatalf("saw %d messages, want %d within %s", c.count(), n, timeout)
		}
	}
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok && err == nil {
			return
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s (last error: %v)", what, errors.Join(lastErr))
}

// publishCopies publishes msg to topic n times, each a copy with its
// UUID: one message delivered n times.
func publishCopies(t *testing.T, b *Bus, topic string, msg *message.Message, n int) {
	t.Helper()
	for range n {
		if err := b.Publisher().Publish(topic, msg.Copy()); err != nil {
			t.Fatal(err)
		}
	}
}

// processedRows counts the idempotency rows consumer group has written.
func processedRows(t *testing.T, pool *pgxpool.Pool, consumer string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM processed_messages WHERE consumer = $1`, consumer).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
