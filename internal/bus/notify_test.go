package bus

import (
	"context"
	"sync"
	"testing"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/groundmesh/groundmesh/internal/store"
)

// On the Postgres bus a message reaches an idle subscriber through
// LISTEN/NOTIFY, not the next poll: with a 30s poll interval each of ten
// messages, published one after another's delivery, arrives within a
// second (without the wake-up the first would wait up to 30s).
func TestPostgresNotifyWakesIdleSubscriber(t *testing.T) {
	pool := testPool(t)
	cfg := fastConfig(t, KindPostgres)
	cfg.PollInterval = 30 * time.Second
	got := newCollector()
	b := startBus(t, cfg, pool, func(b *Bus) {
		if err := b.Handle("test.notify", testTopic, got.handle); err != nil {
			t.Fatal(err)
		}
	})
	// The subscriber has made its first (empty) query and waits.
	time.Sleep(300 * time.Millisecond)
	for i := range 10 {
		start := time.Now()
		if err := b.Publish(context.Background(), testTopic, map[string]int{"i": i}, nil); err != nil {
			t.Fatal(err)
		}
		got.wait(t, i+1, time.Second)
		t.Logf("message %d delivered in %s", i, time.Since(start))
	}

	// Inside a transaction the wake-up comes at commit.
	pp, ok := b.Publisher().(interface {
		PublishInTx(ctx context.Context, tx pgx.Tx, topic string, msgs ...*message.Message) error
	})
	if !ok {
		t.Fatal("the Postgres bus's publisher cannot publish in a transaction")
	}
	msg, err := NewMessage(context.Background(), testTopic, map[string]string{"in": "tx"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.WithTx(context.Background(), pool, func(tx pgx.Tx) error {
		return pp.PublishInTx(context.Background(), tx, testTopic, msg)
	}); err != nil {
		t.Fatal(err)
	}
	got.wait(t, 11, time.Second)
}

// When the listening connection dies, subscribers fall back to polling and
// the notifier reconnects: a message published after the kill still
// arrives, within the reconnect's backoff, long before the 30s poll. The
// short looks a subscriber takes after a wake-up are turned off: they would
// find the message without any notification (seen: with them on, a
// notifier that never reconnects passed this test).
func TestPostgresNotifyReconnects(t *testing.T) {
	pool := testPool(t)
	cfg := fastConfig(t, KindPostgres)
	cfg.PollInterval = 30 * time.Second
	defer func(d time.Duration) { firstRetry = d }(firstRetry)
	firstRetry = cfg.PollInterval // one look per wake-up, then the poll
	got := newCollector()
	b := startBus(t, cfg, pool, func(b *Bus) {
		if err := b.Handle("test.notify", testTopic, got.handle); err != nil {
			t.Fatal(err)
		}
	})
	notes := b.backend.(*postgresBackend).notes
	<-notes.listening
	var killed int
	if err := pool.QueryRow(context.Background(), `
		SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query = 'LISTEN `+NotifyChannel+`'`).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed != 1 {
		t.Fatalf("terminated %d listening connections, want 1", killed)
	}
	time.Sleep(50 * time.Millisecond) // the notifier notices and backs off
	if err := b.Publish(context.Background(), testTopic, map[string]string{"after": "kill"}, nil); err != nil {
		t.Fatal(err)
	}
	got.wait(t, 1, 5*time.Second)
}

// HandleConcurrent on NATS handles n messages of one group at once: four
// handlers that each wait for the other three finish only when four run
// together; one at a time they would time out.
func TestNATSHandleConcurrent(t *testing.T) {
	requireNATS(t)
	pool := testPool(t)
	topic := "test.nats.conc." + uuid.NewString()[:8]
	t.Cleanup(func() { deleteStream(t, topic) })
	cfg := fastConfig(t, KindNATS)
	cfg.NATSURL = testNATSURL
	cfg.ConsumerPrefix = "t" + uuid.NewString()[:8] + "."
	var arrived sync.WaitGroup
	arrived.Add(4)
	all := make(chan struct{})
	go func() { arrived.Wait(); close(all) }()
	got := newCollector()
	b := startBus(t, cfg, pool, func(b *Bus) {
		if err := b.HandleConcurrent("conc", topic, 4, func(ctx context.Context, msg *message.Message) error {
			arrived.Done()
			select {
			case <-all:
			case <-time.After(10 * time.Second):
			}
			return got.handle(ctx, msg)
		}); err != nil {
			t.Fatal(err)
		}
	})
	start := time.Now()
	for i := range 4 {
		if err := b.Publish(context.Background(), topic, map[string]int{"i": i}, nil); err != nil {
			t.Fatal(err)
		}
	}
	got.wait(t, 4, 30*time.Second)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("four messages took %s: they were not handled at once", d)
	}
	// Each message once, across the four subscribers of the group.
	seen := map[string]bool{}
	for _, m := range got.msgs {
		if seen[m.UUID] {
			t.Fatalf("message %s handled twice", m.UUID)
		}
		seen[m.UUID] = true
	}
}

// A NoDedupe handler keeps no idempotency rows: a message delivered three
// times is handled three times, and processed_messages has nothing of its
// group, while a deduplicating group beside it handles it once.
func TestNoDedupeHandlerKeepsNoRows(t *testing.T) {
	pool := testPool(t)
	plain, dedupe := newCollector(), newCollector()
	b := startBus(t, fastConfig(t, KindPostgres), pool, func(b *Bus) {
		if err := b.HandleWith("replies", testTopic, HandleOptions{NoDedupe: true}, plain.handle); err != nil {
			t.Fatal(err)
		}
		if err := b.Handle("once", testTopic, dedupe.handle); err != nil {
			t.Fatal(err)
		}
	})
	msg, err := NewMessage(context.Background(), testTopic, map[string]string{"a": "b"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	publishCopies(t, b, testTopic, msg, 3)
	plain.wait(t, 3, 10*time.Second)
	dedupe.wait(t, 1, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if n := dedupe.count(); n != 1 {
		t.Fatalf("the deduplicating group handled the message %d times", n)
	}
	if rows := processedRows(t, pool, "replies"); rows != 0 {
		t.Fatalf("the NoDedupe group wrote %d processed_messages rows", rows)
	}
}

// After a wake-up whose query found nothing (the message not yet visible
// under watermill-sql's snapshot rule), the subscriber looks again within
// milliseconds, doubling, not after the whole poll interval; a found
// message ends the short looks.
func TestNotifyBackoffLooksAgainSoonAfterAWakeUp(t *testing.T) {
	b := &notifyBackoff{poll: 30 * time.Second, wake: make(chan struct{}, 1), quit: make(chan struct{})}
	b.wake <- struct{}{}
	b.HandleError(nil, true, nil) // woken at once
	start := time.Now()
	for range 3 { // 5, 10 and 20 ms
		b.HandleError(nil, true, nil)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("three looks after a wake-up took %s", d)
	}
	if b.retry != 8*firstRetry {
		t.Fatalf("next short wait %s, want %s", b.retry, 8*firstRetry)
	}
	b.def = wsql.NewDefaultBackoffManager(b.poll, time.Second)
	b.HandleError(nil, false, nil) // a message found
	if b.retry != 0 {
		t.Fatalf("a found message left a short wait of %s due", b.retry)
	}
}
