package outbox_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/outbox"
	"github.com/groundmesh/groundmesh/internal/store"
)

func testPool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	pool, err := store.Open(context.Background(), store.NewTestDB(tb), nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

func logger() *slog.Logger {
	if os.Getenv("OUTBOX_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// recorder is a Publisher that keeps what it was given; failAfter makes it
// return an error after forwarding, as a relay that crashes between publish
// and commit would.
type recorder struct {
	mu        sync.Mutex
	msgs      []*message.Message
	topics    []string
	failAfter bool
}

func (r *recorder) Publish(topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		r.msgs = append(r.msgs, m)
		r.topics = append(r.topics, topic)
	}
	if r.failAfter {
		return errors.New("crash after publish")
	}
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func addN(t *testing.T, pool *pgxpool.Pool, topic string, from, n int) {
	t.Helper()
	if err := store.WithTx(context.Background(), pool, func(tx pgx.Tx) error {
		for i := from; i < from+n; i++ {
			if err := outbox.Add(context.Background(), tx, topic, map[string]int{"i": i}, nil); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestRolledBackAddPublishesNothing(t *testing.T) {
	pool := testPool(t)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Add(ctx, tx, events.TopicDatasetIngested, events.DatasetIngested{DatasetID: "d"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	relay, err := outbox.NewRelay(outbox.RelayConfig{}, pool, rec)
	if err != nil {
		t.Fatal(err)
	}
	n, err := relay.Flush(ctx)
	if err != nil || n != 0 || rec.count() != 0 {
		t.Fatalf("rolled back message relayed: n=%d published=%d err=%v", n, rec.count(), err)
	}
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("outbox holds %d rows after rollback (err %v)", rows, err)
	}
}

func TestAddRequiresValidInput(t *testing.T) {
	pool := testPool(t)
	err := store.WithTx(context.Background(), pool, func(tx pgx.Tx) error {
		return outbox.Add(context.Background(), tx, "", map[string]int{}, nil)
	})
	if err == nil {
		t.Fatal("empty topic accepted")
	}
	if err := outbox.Add(context.Background(), nil, "t", 1, nil); err == nil {
		t.Fatal("nil tx accepted")
	}
	if _, err := outbox.NewRelay(outbox.RelayConfig{BatchSize: -1}, pool, &recorder{}); err == nil {
		t.Fatal("negative batch accepted")
	}
}

// TestCommittedAddIsPublishedOnceInOrderAcrossRestarts runs a relay, stops
// it, adds more while none runs, and starts another.
func TestCommittedAddIsPublishedOnceInOrderAcrossRestarts(t *testing.T) {
	pool := testPool(t)
	rec := &recorder{}
	run := func(until int) {
		ctx, cancel := context.WithCancel(context.Background())
		relay, err := outbox.NewRelay(outbox.RelayConfig{BatchSize: 7, PollInterval: 50 * time.Millisecond, Logger: logger()}, pool, rec)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- relay.Run(ctx) }()
		deadline := time.Now().Add(10 * time.Second)
		for rec.count() < until && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(150 * time.Millisecond) // a few more polls: nothing else may come
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	addN(t, pool, "a.topic", 0, 20)
	addN(t, pool, "b.topic", 20, 5)
	run(25)
	addN(t, pool, "a.topic", 25, 15)
	run(40)

	if rec.count() != 40 {
		t.Fatalf("published %d messages, want 40", rec.count())
	}
	seen := map[string]bool{}
	for i, m := range rec.msgs {
		if seen[m.UUID] {
			t.Fatalf("message %s published twice", m.UUID)
		}
		seen[m.UUID] = true
		if want := `{"i": ` + itoa(i) + `}`; string(m.Payload) != want {
			t.Fatalf("message %d payload %s, want %s: out of order", i, m.Payload, want)
		}
		if m.Metadata.Get(events.MetaSchemaVersion) != events.SchemaVersion || m.Metadata.Get(events.MetaEventType) != rec.topics[i] {
			t.Fatalf("metadata %v on topic %s", m.Metadata, rec.topics[i])
		}
	}
	var unpublished int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE published_at IS NULL`).Scan(&unpublished); err != nil || unpublished != 0 {
		t.Fatalf("%d rows left unpublished (err %v)", unpublished, err)
	}
}

func TestRelayWakesOnNotify(t *testing.T) {
	pool := testPool(t)
	rec := &recorder{}
	relay, err := outbox.NewRelay(outbox.RelayConfig{PollInterval: time.Hour, Logger: logger()}, pool, rec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(300 * time.Millisecond) // first flush done; now waiting on LISTEN
	for round := 1; round <= 3; round++ {
		start := time.Now()
		addN(t, pool, "n.topic", round, 1)
		for rec.count() < round {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("round %d: not relayed within 5s with an hour's poll interval: NOTIFY not heard", round)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestCrashBetweenPublishAndCommitIsDedupedByConsumers makes the first relay
// publish and then fail (so the rows stay unpublished), and checks that a bus
// handler still handles each fact once, in the trace of the code that added it.
func TestCrashBetweenPublishAndCommitIsDedupedByConsumers(t *testing.T) {
	pool := testPool(t)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	defer otel.SetTracerProvider(prev)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := bus.New(ctx, bus.Config{PollInterval: 20 * time.Millisecond, Logger: logger(), TracerProvider: tp}, pool)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var mu sync.Mutex
	handled := map[string]int{}
	var traces []trace.TraceID
	if err := b.Handle("outbox.test", events.TopicCheckpointSaved, bus.Typed(func(ctx context.Context, ev events.CheckpointSaved, msg *message.Message) error {
		mu.Lock()
		defer mu.Unlock()
		handled[ev.CheckpointID]++
		traces = append(traces, trace.SpanContextFromContext(ctx).TraceID())
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	go func() { _ = b.Run(ctx) }()
	<-b.Running()

	uctx, useCase := tp.Tracer("test").Start(context.Background(), "save checkpoint")
	if err := store.WithTx(uctx, pool, func(tx pgx.Tx) error {
		for _, id := range []string{"c1", "c2", "c3"} {
			if err := outbox.Add(uctx, tx, events.TopicCheckpointSaved, events.CheckpointSaved{CheckpointID: id, Stage: "stage1"}, nil); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	useCase.End()

	crashing := &crashOnce{pub: b.Publisher()}
	relay, err := outbox.NewRelay(outbox.RelayConfig{}, pool, crashing)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := relay.Flush(ctx); err == nil {
		t.Fatal("the crashing publisher's error was not reported")
	}
	if n, err := relay.Flush(ctx); err != nil || n != 3 {
		t.Fatalf("second flush relayed %d (err %v), want 3", n, err)
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(traces)
		mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for _, id := range []string{"c1", "c2", "c3"} {
		if handled[id] != 1 {
			t.Errorf("checkpoint %s handled %d times, want 1 (published twice, deduped)", id, handled[id])
		}
	}
	for _, tr := range traces {
		if tr != useCase.SpanContext().TraceID() {
			t.Errorf("handler ran in trace %s, want the use case's %s", tr, useCase.SpanContext().TraceID())
		}
	}
}

// crashOnce publishes for real, then fails the first call.
type crashOnce struct {
	pub     outbox.Publisher
	crashed bool
}

func (c *crashOnce) Publish(topic string, msgs ...*message.Message) error {
	if err := c.pub.Publish(topic, msgs...); err != nil {
		return err
	}
	if !c.crashed {
		c.crashed = true
		return errors.New("relay crashed before marking the batch")
	}
	return nil
}

func itoa(i int) string {
	s := ""
	if i == 0 {
		return "0"
	}
	for ; i > 0; i /= 10 {
		s = string(rune('0'+i%10)) + s
	}
	return s
}

// failingTx publishes into the relay's transaction and then fails.
type failingTx struct{ inner outbox.TxPublisher }

func (f failingTx) Publish(string, ...*message.Message) error { return errors.New("unused") }
func (f failingTx) PublishInTx(ctx context.Context, tx pgx.Tx, topic string, msgs ...*message.Message) error {
	if err := f.inner.PublishInTx(ctx, tx, topic, msgs...); err != nil {
		return err
	}
	return errors.New("crash after publishing in tx")
}

// TestRelayPublishesInItsTransactionOnPostgresBus checks the Postgres bus
// path: a failed batch leaves neither messages nor marks; a good one both.
func TestRelayPublishesInItsTransactionOnPostgresBus(t *testing.T) {
	pool := testPool(t)
	ctx := context.Background()
	b, err := bus.New(ctx, bus.Config{Logger: logger()}, pool)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	tp, ok := b.Publisher().(outbox.TxPublisher)
	if !ok {
		t.Fatal("the Postgres bus publisher cannot publish in a transaction")
	}
	addN(t, pool, events.TopicModelPromoted, 0, 5)

	bad, err := outbox.NewRelay(outbox.RelayConfig{}, pool, failingTx{inner: tp})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Flush(ctx); err == nil {
		t.Fatal("failure not reported")
	}
	count := func(q string) int {
		var n int
		if err := pool.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(`SELECT count(*) FROM "watermill_model.promoted"`); n != 0 {
		t.Fatalf("%d messages left by a rolled back batch", n)
	}
	good, err := outbox.NewRelay(outbox.RelayConfig{}, pool, b.Publisher())
	if err != nil {
		t.Fatal(err)
	}
	if n, err := good.Flush(ctx); err != nil || n != 5 {
		t.Fatalf("relayed %d, err %v", n, err)
	}
	if n := count(`SELECT count(*) FROM "watermill_model.promoted"`); n != 5 {
		t.Fatalf("%d messages on the bus, want 5", n)
	}
	if n := count(`SELECT count(*) FROM outbox WHERE published_at IS NULL`); n != 0 {
		t.Fatalf("%d rows unmarked", n)
	}
	if n := count(`SELECT count(DISTINCT uuid) FROM "watermill_model.promoted" w JOIN outbox o ON o.id::text = w.uuid`); n != 5 {
		t.Fatalf("%d bus messages carry their outbox row id, want 5", n)
	}
}
