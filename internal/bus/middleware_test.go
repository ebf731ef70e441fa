package bus

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/events"
)

func newTestMessage(t *testing.T, ctx context.Context, payload any) *message.Message {
	t.Helper()
	m, err := NewMessage(ctx, testTopic, payload, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestTracingMiddlewareContinuesProducerTrace(t *testing.T) {
	rec, tp := testTracer()
	ctx, parent := tp.Tracer("t").Start(context.Background(), "producer")
	msg := newTestMessage(t, ctx, map[string]int{"a": 1})
	parent.End()

	var inner trace.SpanContext
	h := tracing(tp.Tracer("bus"), DefaultPropagator, "g", testTopic)(func(m *message.Message) ([]*message.Message, error) {
		inner = trace.SpanContextFromContext(m.Context())
		return nil, errors.New("failed")
	})
	if _, err := h(msg); err == nil {
		t.Fatal("error swallowed")
	}
	if inner.TraceID() != parent.SpanContext().TraceID() {
		t.Fatal("handler span not in the producer's trace")
	}
	var found bool
	for _, s := range rec.Ended() {
		if s.Name() == testTopic+" process" {
			found = true
			if s.Parent().SpanID() != parent.SpanContext().SpanID() || s.SpanKind() != trace.SpanKindConsumer || s.Status().Code != codes.Error {
				t.Errorf("span parent=%s kind=%s status=%v", s.Parent().SpanID(), s.SpanKind(), s.Status())
			}
		}
	}
	if !found {
		t.Fatal("no process span")
	}
}

func TestCorrelationMiddleware(t *testing.T) {
	msg := newTestMessage(t, context.Background(), map[string]string{"correlation_id": "c-9"})
	if msg.Metadata.Get(events.MetaCorrelationID) != "c-9" {
		t.Fatalf("NewMessage did not lift the payload's correlation id: %v", msg.Metadata)
	}
	var sb strings.Builder
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{w: &sb, mu: &mu}, nil))
	h := correlation(logger, "g", testTopic)(func(m *message.Message) ([]*message.Message, error) {
		if CorrelationID(m.Context()) != "c-9" {
			t.Errorf("ctx correlation id %q", CorrelationID(m.Context()))
		}
		Logger(m.Context()).Info("working")
		// It flows on into messages published from the handler.
		out := newTestMessage(t, m.Context(), map[string]int{"x": 1})
		if out.Metadata.Get(events.MetaCorrelationID) != "c-9" {
			t.Errorf("correlation id not propagated to an outgoing message")
		}
		return nil, nil
	})
	if _, err := h(msg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sb.String(), "correlation_id=c-9") || !strings.Contains(sb.String(), "handler=g") {
		t.Fatalf("log line lacks correlation: %s", sb.String())
	}
}

type lockedWriter struct {
	w  *strings.Builder
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestSchemaCheckMiddleware(t *testing.T) {
	ok := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	for _, tc := range []struct {
		version, payload string
		wantErr          bool
	}{
		{"1", `{}`, false},
		{"1.4", `{"a":1}`, false},
		{"2", `{}`, true},
		{"", `{}`, true},
		{"1", `{bad`, true},
	} {
		m := message.NewMessage("id", []byte(tc.payload))
		if tc.version != "" {
			m.Metadata.Set(events.MetaSchemaVersion, tc.version)
		}
		_, err := schemaCheck(ok)(m)
		if (err != nil) != tc.wantErr || (err != nil && !IsPermanent(err)) {
			t.Errorf("version %q payload %q: err=%v", tc.version, tc.payload, err)
		}
	}
}

func TestRetryMiddleware(t *testing.T) {
	cfg := RetryConfig{MaxRetries: 3, InitialInterval: 1e6, MaxInterval: 2e6}
	cfg.setDefaults()
	run := func(fn message.HandlerFunc) (int, error) {
		n := 0
		h := retry(cfg, watermill.NopLogger{})(recoverer(func(m *message.Message) ([]*message.Message, error) {
			n++
			return fn(m)
		}))
		_, err := h(message.NewMessage("id", nil))
		return n, err
	}
	calls := 0
	if n, err := run(func(*message.Message) ([]*message.Message, error) {
		calls++
		if calls < 3 {
			return nil, errors.New("transient")
		}
		return nil, nil
	}); err != nil || n != 3 {
		t.Errorf("transient: %d calls, err %v; want 3, nil", n, err)
	}
	if n, err := run(func(*message.Message) ([]*message.Message, error) { return nil, errors.New("down") }); err == nil || n != 4 {
		t.Errorf("always failing: %d calls, err %v; want 4 and an error", n, err)
	}
	if n, err := run(func(*message.Message) ([]*message.Message, error) { return nil, Permanent(errors.New("bad")) }); !IsPermanent(err) || n != 1 {
		t.Errorf("permanent: %d calls, err %v; want 1", n, err)
	}
	if n, err := run(func(*message.Message) ([]*message.Message, error) { panic("bug") }); err == nil || n != 1 {
		t.Errorf("panic: %d calls, err %v; want 1", n, err)
	}
}

func TestRecovererMiddleware(t *testing.T) {
	_, err := recoverer(func(*message.Message) ([]*message.Message, error) { panic("kaboom") })(message.NewMessage("id", nil))
	if err == nil || !isPanic(err) || !strings.Contains(err.Error(), "kaboom") {
		t.Fatalf("want a recovered panic error, got %v", err)
	}
}

func TestIdempotencyMiddleware(t *testing.T) {
	pool := testPool(t)
	runs := 0
	fail := true
	h := idempotency(pool, "g")(func(m *message.Message) ([]*message.Message, error) {
		runs++
		if fail {
			return nil, errors.New("failed")
		}
		return nil, nil
	})
	msg := message.NewMessage("m-1", []byte(`{}`))
	if _, err := h(msg); err == nil {
		t.Fatal("error swallowed")
	}
	fail = false
	for range 3 {
		if _, err := h(msg.Copy()); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 2 {
		t.Fatalf("handler ran %d times, want 2 (a failure is not recorded; then once)", runs)
	}
	// Another consumer is independent.
	other := idempotency(pool, "g2")(func(*message.Message) ([]*message.Message, error) { runs++; return nil, nil })
	if _, err := other(msg.Copy()); err != nil || runs != 3 {
		t.Fatalf("other consumer: runs %d err %v", runs, err)
	}

	// MarkProcessed inside the handler's tx: a rolled back tx leaves no record.
	h2 := idempotency(pool, "g3")(func(m *message.Message) ([]*message.Message, error) {
		tx, err := pool.Begin(m.Context())
		if err != nil {
			return nil, err
		}
		if err := MarkProcessed(m.Context(), tx); err != nil {
			return nil, err
		}
		_ = tx.Rollback(m.Context())
		return nil, errors.New("effects failed")
	})
	_, _ = h2(message.NewMessage("m-2", nil))
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM processed_messages WHERE consumer='g3'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("rolled back mark left %d rows (err %v)", n, err)
	}
	if err := MarkProcessed(context.Background(), pool); err == nil {
		t.Fatal("MarkProcessed outside a handler succeeded")
	}
}

type fakePublisher struct {
	mu   sync.Mutex
	msgs map[string][]*message.Message
	err  error
}

func (f *fakePublisher) Publish(topic string, msgs ...*message.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	if f.msgs == nil {
		f.msgs = map[string][]*message.Message{}
	}
	f.msgs[topic] = append(f.msgs[topic], msgs...)
	return nil
}
func (f *fakePublisher) Close() error { return nil }

func TestPoisonMiddleware(t *testing.T) {
	pool := testPool(t)
	pub := &fakePublisher{}
	failing := func(*message.Message) ([]*message.Message, error) { return nil, errors.New("cannot decode") }
	msg := message.NewMessage("m-1", []byte(`{bad`))
	msg.Metadata.Set("k", "v")
	if _, err := poison(pool, pub, "g", testTopic)(failing)(msg); err != nil {
		t.Fatalf("poisoned message not acked: %v", err)
	}
	got := pub.msgs[events.TopicPoison]
	if len(got) != 1 || got[0].Metadata.Get(MetaPoisonReason) != "cannot decode" ||
		got[0].Metadata.Get(MetaPoisonTopic) != testTopic || got[0].Metadata.Get("k") != "v" || string(got[0].Payload) != `{bad` {
		t.Fatalf("poison topic got %v", got)
	}
	var reason string
	var payload []byte
	if err := pool.QueryRow(context.Background(),
		`SELECT reason, payload FROM poison_messages WHERE consumer='g' AND message_id='m-1' AND topic=$1`, testTopic).Scan(&reason, &payload); err != nil {
		t.Fatal(err)
	}
	if reason != "cannot decode" || string(payload) != `{bad` {
		t.Fatalf("row reason=%q payload=%q", reason, payload)
	}

	// When the poison queue cannot publish, the message is nacked.
	pub.err = errors.New("broker down")
	if _, err := poison(pool, pub, "g", testTopic)(failing)(message.NewMessage("m-2", nil)); err == nil {
		t.Fatal("a failed poison publish acked the message")
	}
	// Success passes through untouched.
	if _, err := poison(pool, pub, "g", testTopic)(func(*message.Message) ([]*message.Message, error) { return nil, nil })(message.NewMessage("m-3", nil)); err != nil {
		t.Fatal(err)
	}
}

func TestTypedDecodesStrictly(t *testing.T) {
	var got events.Progress
	h := Typed(func(ctx context.Context, ev events.Progress, msg *message.Message) error { got = ev; return nil })
	if err := h(context.Background(), message.NewMessage("1", []byte(`{"service":"ingest","done":3,"total":9}`))); err != nil || got.Done != 3 {
		t.Fatalf("good payload: %v %+v", err, got)
	}
	for _, bad := range []string{`{"service":"x","extra":1}`, `{"done":"three"}`, `{} {}`, `not json`} {
		if err := h(context.Background(), message.NewMessage("1", []byte(bad))); !IsPermanent(err) {
			t.Errorf("payload %s: want a permanent error, got %v", bad, err)
		}
	}
}
