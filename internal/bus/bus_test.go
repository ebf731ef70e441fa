package bus

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/events"
)

const testTopic = "ingest.requested"

func TestPostgresRoundTripPropagatesTrace(t *testing.T) {
	pool := testPool(t)
	rec, tp := testTracer()
	cfg := fastConfig(t, KindPostgres)
	cfg.TracerProvider = tp
	got := newCollector()
	b := startBus(t, cfg, pool, func(b *Bus) {
		if err := b.Handle("test.ingest", testTopic, Typed(func(ctx context.Context, ev events.IngestRequested, msg *message.Message) error {
			if ev.Format != "coco" {
				return Permanent(errors.New("wrong payload"))
			}
			return got.handle(ctx, msg)
		})); err != nil {
			t.Fatal(err)
		}
	})

	ctx, root := tp.Tracer("test").Start(context.Background(), "workflow")
	if err := b.Publish(ctx, testTopic, events.IngestRequested{CorrelationID: "corr-1", Format: "coco", Path: "/d"}, map[string]string{"x": "y"}); err != nil {
		t.Fatal(err)
	}
	root.End()
	got.wait(t, 1, 10*time.Second)

	msg, hctx := got.msgs[0], got.ctxs[0]
	for k, want := range map[string]string{
		events.MetaSchemaVersion: events.SchemaVersion,
		events.MetaEventType:     testTopic,
		events.MetaCorrelationID: "corr-1",
		"x":                      "y",
	} {
		if v := msg.Metadata.Get(k); v != want {
			t.Errorf("metadata %s = %q, want %q", k, v, want)
		}
	}
	if !strings.HasPrefix(msg.Metadata.Get(events.MetaTraceParent), "00-"+root.SpanContext().TraceID().String()) {
		t.Errorf("traceparent %q is not in the publisher's trace", msg.Metadata.Get(events.MetaTraceParent))
	}
	if CorrelationID(hctx) != "corr-1" {
		t.Errorf("correlation id in handler ctx = %q", CorrelationID(hctx))
	}

	hspan := trace.SpanContextFromContext(hctx)
	if hspan.TraceID() != root.SpanContext().TraceID() {
		t.Fatalf("handler runs in trace %s, want the producer's %s", hspan.TraceID(), root.SpanContext().TraceID())
	}
	var publish, process bool
	var publishID trace.SpanID
	for _, s := range rec.Ended() {
		if s.Name() == testTopic+" publish" && s.SpanKind() == trace.SpanKindProducer {
			publish, publishID = true, s.SpanContext().SpanID()
		}
	}
	eventually(t, 5*time.Second, "the process span to end", func() (bool, error) {
		for _, s := range rec.Ended() {
			if s.Name() == testTopic+" process" && s.SpanKind() == trace.SpanKindConsumer &&
				s.Parent().SpanID() == publishID && s.SpanContext().TraceID() == root.SpanContext().TraceID() {
				process = true
			}
		}
		return process, nil
	})
	if !publish {
		t.Fatal("no producer span")
	}
}

func TestEveryHandlerNameGetsEachMessageOnce(t *testing.T) {
	pool := testPool(t)
	a, b2 := newCollector(), newCollector()
	b := startBus(t, fastConfig(t, KindPostgres), pool, func(b *Bus) {
		_ = b.Handle("group.a", testTopic, a.handle)
		_ = b.Handle("group.b", testTopic, b2.handle)
	})
	for i := range 5 {
		if err := b.Publish(context.Background(), testTopic, map[string]int{"i": i}, nil); err != nil {
			t.Fatal(err)
		}
	}
	a.wait(t, 5, 10*time.Second)
	b2.wait(t, 5, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if a.count() != 5 || b2.count() != 5 {
		t.Fatalf("counts a=%d b=%d, want 5 each", a.count(), b2.count())
	}
	// Order is kept within a group.
	for i, m := range a.msgs {
		var v map[string]int
		_ = json.Unmarshal(m.Payload, &v)
		if v["i"] != i {
			t.Fatalf("message %d carries i=%d: out of order", i, v["i"])
		}
	}
}

func TestDuplicateMessageIsProcessedOnce(t *testing.T) {
	pool := testPool(t)
	var runs atomic.Int32
	got := newCollector()
	b := startBus(t, fastConfig(t, KindPostgres), pool, func(b *Bus) {
		_ = b.Handle("dedupe", testTopic, func(ctx context.Context, msg *message.Message) error {
			runs.Add(1)
			return got.handle(ctx, msg)
		})
	})
	msg, err := NewMessage(context.Background(), testTopic, map[string]string{"a": "b"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The same UUID three times (a redelivery, a relay re-publish), then
	// a different message as a marker.
	publishCopies(t, b, testTopic, msg, 3)
	if err := b.Publish(context.Background(), testTopic, map[string]string{"marker": "1"}, nil); err != nil {
		t.Fatal(err)
	}
	got.wait(t, 2, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2 (duplicate + marker)", n)
	}
	if n := processedRows(t, pool, "dedupe"); n != 2 {
		t.Fatalf("processed_messages has %d rows, want 2", n)
	}
}

func TestBadMessagesArePoisonedAndConsumptionGoesOn(t *testing.T) {
	pool := testPool(t)
	good := newCollector()
	poisoned := newCollector()
	var transient atomic.Int32
	b := startBus(t, fastConfig(t, KindPostgres), pool, func(b *Bus) {
		_ = b.Handle("typed", testTopic, Typed(func(ctx context.Context, ev events.IngestRequested, msg *message.Message) error {
			switch ev.Name {
			case "panic":
				panic("handler bug")
			case "always-fails":
				return errors.New("database is down")
			case "flaky":
				if transient.Add(1) < 3 {
					return errors.New("temporarily unavailable")
				}
			}
			return good.handle(ctx, msg)
		}))
		_ = b.Handle("poison.watch", events.TopicPoison, poisoned.handle)
	})
	pub := b.Publisher()
	raw := func(payload string, meta map[string]string) string {
		m, err := NewMessage(context.Background(), testTopic, []byte(payload), meta)
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(testTopic, m); err != nil {
			t.Fatal(err)
		}
		return m.UUID
	}
	cases := map[string]string{
		raw(`{not json`, nil):                   "not valid JSON",
		raw(`{"format":"coco","bogus":1}`, nil): "unknown field",
		raw(`{"format":"coco"}`, map[string]string{events.MetaSchemaVersion: "2"}): "unknown schema_version",
		raw(`{"format":"coco","name":"panic"}`, nil):                               "panic",
		raw(`{"format":"coco","name":"always-fails"}`, nil):                        "database is down",
	}
	flaky := raw(`{"format":"coco","name":"flaky"}`, nil)
	last := raw(`{"format":"coco","name":"good"}`, nil)

	good.wait(t, 2, 15*time.Second)
	if good.msgs[0].UUID != flaky || good.msgs[1].UUID != last {
		t.Fatalf("handled %s, %s; want the flaky message then the good one", good.msgs[0].UUID, good.msgs[1].UUID)
	}
	if n := transient.Load(); n != 3 {
		t.Errorf("flaky handler ran %d times, want 3 (two retries)", n)
	}

	poisoned.wait(t, len(cases), 10*time.Second)
	for _, m := range poisoned.msgs {
		want, ok := cases[m.Metadata.Get(MetaPoisonMessageID)]
		if !ok {
			t.Errorf("unexpected poisoned message %s (reason %q)", m.Metadata.Get(MetaPoisonMessageID), m.Metadata.Get(MetaPoisonReason))
			continue
		}
		if !strings.Contains(m.Metadata.Get(MetaPoisonReason), want) {
			t.Errorf("poison reason %q does not mention %q", m.Metadata.Get(MetaPoisonReason), want)
		}
		if m.Metadata.Get(MetaPoisonTopic) != testTopic || m.Metadata.Get(MetaPoisonConsumer) != "typed" {
			t.Errorf("poison metadata lacks origin: %v", m.Metadata)
		}
	}

	rows, err := pool.Query(context.Background(), `SELECT message_id, topic, consumer, reason, payload FROM poison_messages`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var id, topic, consumer, reason string
		var payload []byte
		if err := rows.Scan(&id, &topic, &consumer, &reason, &payload); err != nil {
			t.Fatal(err)
		}
		n++
		if want := cases[id]; want == "" || !strings.Contains(reason, want) || topic != testTopic || consumer != "typed" || len(payload) == 0 {
			t.Errorf("poison row %s: topic=%s consumer=%s reason=%q payload=%q", id, topic, consumer, reason, payload)
		}
	}
	if n != len(cases) {
		t.Fatalf("%d poison rows, want %d", n, len(cases))
	}
}

// TestSlowHandlerDoesNotStallOtherTopics guards the advisory-lock offsets
// adapter: with watermill-sql's FOR UPDATE adapter a handler in progress
// hides every newer message on every topic until it returns.
func TestSlowHandlerDoesNotStallOtherTopics(t *testing.T) {
	pool := testPool(t)
	release := make(chan struct{})
	fast := newCollector()
	started := make(chan struct{}, 1)
	b := startBus(t, fastConfig(t, KindPostgres), pool, func(b *Bus) {
		_ = b.Handle("slow", "train.requested", func(ctx context.Context, msg *message.Message) error {
			started <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		})
		_ = b.Handle("fast", "train.progress", fast.handle)
	})
	defer close(release)
	if err := b.Publish(context.Background(), "train.requested", map[string]int{"n": 1}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("slow handler did not start")
	}
	if err := b.Publish(context.Background(), "train.progress", map[string]int{"done": 1}, nil); err != nil {
		t.Fatal(err)
	}
	fast.wait(t, 1, 5*time.Second)
}

func TestHandleRejectsBadRegistrations(t *testing.T) {
	pool := testPool(t)
	b, err := New(context.Background(), fastConfig(t, KindPostgres), pool)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	noop := func(context.Context, *message.Message) error { return nil }
	if err := b.Handle("h", testTopic, noop); err != nil {
		t.Fatal(err)
	}
	if err := b.Handle("h", "other", noop); err == nil {
		t.Fatal("duplicate handler name accepted")
	}
	if err := b.Handle("", testTopic, noop); err == nil {
		t.Fatal("empty name accepted")
	}
	if err := b.Run(context.Background()); err == nil {
		t.Fatal("Run ignored registration errors")
	}
	if _, err := New(context.Background(), Config{Kind: "kafka"}, pool); err == nil {
		t.Fatal("unknown kind accepted")
	}
	if _, err := New(context.Background(), Config{}, nil); err == nil {
		t.Fatal("nil pool accepted")
	}
}

// TestOneGroupAcrossProcessesHandlesEachMessageOnce runs two buses (two
// processes) with the same handler name: the group shares the messages.
func TestOneGroupAcrossProcessesHandlesEachMessageOnce(t *testing.T) {
	pool := testPool(t)
	var runs atomic.Int32
	seen := newCollector()
	h := func(ctx context.Context, msg *message.Message) error {
		runs.Add(1)
		return seen.handle(ctx, msg)
	}
	b1 := startBus(t, fastConfig(t, KindPostgres), pool, func(b *Bus) { _ = b.Handle("shared", testTopic, h) })
	startBus(t, fastConfig(t, KindPostgres), pool, func(b *Bus) { _ = b.Handle("shared", testTopic, h) })
	const n = 60
	for i := range n {
		if err := b1.Publish(context.Background(), testTopic, map[string]int{"i": i}, nil); err != nil {
			t.Fatal(err)
		}
	}
	seen.wait(t, n, 20*time.Second)
	time.Sleep(300 * time.Millisecond)
	if got := runs.Load(); got != n {
		t.Fatalf("handler ran %d times for %d messages", got, n)
	}
}
