package bus

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/events"
)

const testNATSURL = "nats://127.0.0.1:4222"

// requireNATS fails (never skips) when the NATS server is not reachable.
func requireNATS(t *testing.T) {
	t.Helper()
	c, err := net.DialTimeout("tcp", "127.0.0.1:4222", 3*time.Second)
	if err != nil {
		t.Fatalf("NATS with JetStream must run at 127.0.0.1:4222 for this test (start nats-server -js): %v", err)
	}
	_ = c.Close()
}

func TestNATSRoundTripGroupsAndDedupe(t *testing.T) {
	requireNATS(t)
	pool := testPool(t)
	topic := "test.nats." + uuid.NewString()[:8]
	t.Cleanup(func() { deleteStream(t, topic) })

	rec, tp := testTracer()
	cfg := fastConfig(t, KindNATS)
	cfg.NATSURL = testNATSURL
	cfg.TracerProvider = tp
	cfg.ConsumerPrefix = "t" + uuid.NewString()[:8] + "."
	a, c := newCollector(), newCollector()
	b := startBus(t, cfg, pool, func(b *Bus) {
		if err := b.Handle("a", topic, a.handle); err != nil {
			t.Fatal(err)
		}
		if err := b.Handle("c", topic, c.handle); err != nil {
			t.Fatal(err)
		}
	})

	ctx, root := tp.Tracer("test").Start(context.Background(), "workflow")
	ctx = WithCorrelationID(ctx, "corr-nats")
	if err := b.Publish(ctx, topic, map[string]string{"hello": "nats"}, nil); err != nil {
		t.Fatal(err)
	}
	root.End()
	dup, err := NewMessage(context.Background(), topic, map[string]string{"dup": "1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := b.Publisher().Publish(topic, dup.Copy()); err != nil {
			t.Fatal(err)
		}
	}
	a.wait(t, 2, 15*time.Second)
	c.wait(t, 2, 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	if a.count() != 2 || c.count() != 2 {
		t.Fatalf("group a saw %d, group c saw %d; want 2 each (one message, one deduped pair)", a.count(), c.count())
	}
	first := a.msgs[0]
	if first.Metadata.Get(events.MetaCorrelationID) != "corr-nats" || CorrelationID(a.ctxs[0]) != "corr-nats" {
		t.Errorf("correlation id lost: %v", first.Metadata)
	}
	if got := trace.SpanContextFromContext(a.ctxs[0]).TraceID(); got != root.SpanContext().TraceID() {
		t.Errorf("consumer trace %s, want %s", got, root.SpanContext().TraceID())
	}
	eventually(t, 5*time.Second, "a consumer span", func() (bool, error) {
		for _, s := range rec.Ended() {
			if s.Name() == topic+" process" && s.SpanContext().TraceID() == root.SpanContext().TraceID() {
				return true, nil
			}
		}
		return false, nil
	})
}

func TestNATSUnreachableFailsClearly(t *testing.T) {
	pool := testPool(t)
	cfg := fastConfig(t, KindNATS)
	cfg.NATSURL = "nats://127.0.0.1:1"
	if _, err := New(context.Background(), cfg, pool); err == nil {
		t.Fatal("New succeeded without a NATS server")
	}
}

func deleteStream(t *testing.T, topic string) {
	nc, err := nats.Connect(testNATSURL)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	if err := js.DeleteStream(context.Background(), streamName(topic)); err != nil {
		t.Errorf("cleanup: delete stream: %v", err)
	}
}
