package command

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/events"
)

type published struct {
	topic   string
	payload any
}

type fakeBus struct {
	handler func(ctx context.Context, msg *message.Message) error
	topic   string
	mu      sync.Mutex
	out     []published
}

func (f *fakeBus) Handle(name, topic string, fn func(ctx context.Context, msg *message.Message) error) error {
	f.topic, f.handler = topic, fn
	return nil
}

func (f *fakeBus) Publish(_ context.Context, topic string, payload any, _ map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.out = append(f.out, published{topic, payload})
	return nil
}

type req struct {
	CorrelationID string `json:"correlation_id"`
	N             int    `json:"n"`
}

type res struct {
	CorrelationID string `json:"correlation_id"`
	Double        int    `json:"double"`
}

var errBad = errors.New("bad n")

func setup(t *testing.T) *fakeBus {
	t.Helper()
	fb := &fakeBus{}
	err := Serve(fb, Config{Service: "demo", BadInput: func(err error) bool { return errors.Is(err, errBad) }},
		func(ctx context.Context, r req, progress func(events.Progress)) (res, error) {
			progress(events.Progress{Done: 0, Total: 2})
			progress(events.Progress{Done: 1, Total: 2}) // throttled away
			progress(events.Progress{Done: 2, Total: 2}) // final: always sent
			switch {
			case r.N < 0:
				return res{}, errBad
			case r.N == 0:
				return res{}, errors.New("disk full")
			}
			return res{Double: 2 * r.N}, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if fb.topic != "demo.requested" {
		t.Fatalf("topic %q", fb.topic)
	}
	return fb
}

func send(t *testing.T, fb *fakeBus, body string, corr string) error {
	msg := message.NewMessage(watermill.NewUUID(), []byte(body))
	if corr != "" {
		msg.Metadata.Set(events.MetaCorrelationID, corr)
	}
	return fb.handler(context.Background(), msg)
}

func TestServeAnswersCompletedWithCorrelation(t *testing.T) {
	fb := setup(t)
	if err := send(t, fb, `{"correlation_id":"c1","n":21}`, "c1"); err != nil {
		t.Fatal(err)
	}
	var topics []string
	for _, p := range fb.out {
		topics = append(topics, p.topic)
	}
	if len(fb.out) != 3 || topics[0] != "demo.progress" || topics[1] != "demo.progress" || topics[2] != "demo.completed" {
		t.Fatalf("published %v", topics)
	}
	b, _ := json.Marshal(fb.out[2].payload)
	var got res
	_ = json.Unmarshal(b, &got)
	if got.CorrelationID != "c1" || got.Double != 42 {
		t.Fatalf("answer %s", b)
	}
	if p := fb.out[0].payload.(events.Progress); p.CorrelationID != "c1" || p.Service != "demo" {
		t.Fatalf("progress %+v", p)
	}
}

func TestServeFailures(t *testing.T) {
	fb := setup(t)
	_ = send(t, fb, `{"n":-1}`, "c2")
	_ = send(t, fb, `{"n":0}`, "c3")
	var fails []events.Failed
	for _, p := range fb.out {
		if p.topic == "demo.failed" {
			fails = append(fails, p.payload.(events.Failed))
		}
	}
	if len(fails) != 2 || fails[0].Retryable || !fails[1].Retryable || fails[0].CorrelationID != "c2" {
		t.Fatalf("failures %+v", fails)
	}
	// Malformed command and missing correlation id are permanent (poison).
	if err := send(t, fb, `{"n":"x"}`, "c4"); !bus.IsPermanent(err) {
		t.Fatalf("malformed: %v", err)
	}
	if err := send(t, fb, `{"n":1}`, ""); !bus.IsPermanent(err) {
		t.Fatalf("no correlation: %v", err)
	}
}

// TestServeKeepsASilentCommandAlive: a use case that reports nothing for
// several keepalive periods (building shards, waiting for a lock an
// earlier attempt holds) still publishes progress under its correlation
// id, repeating its last report, so that the waiting activity's heartbeat
// does not time out; the keepalive stops with the use case.
func TestServeKeepsASilentCommandAlive(t *testing.T) {
	fb := &fakeBus{}
	const keep = 40 * time.Millisecond
	err := Serve(fb, Config{Service: "demo", KeepAlive: keep},
		func(ctx context.Context, r req, progress func(events.Progress)) (res, error) {
			progress(events.Progress{Phase: "prepare", Total: 10, Message: "building shards"})
			time.Sleep(8 * keep) // silent
			return res{Double: 2 * r.N}, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if err := send(t, fb, `{"correlation_id":"c9","n":1}`, "c9"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * keep) // nothing may follow the answer
	fb.mu.Lock()
	defer fb.mu.Unlock()
	var beats int
	for i, p := range fb.out {
		if i == len(fb.out)-1 {
			if p.topic != "demo.completed" {
				t.Fatalf("last published %s, want demo.completed", p.topic)
			}
			break
		}
		pr, ok := p.payload.(events.Progress)
		if p.topic != "demo.progress" || !ok || pr.CorrelationID != "c9" || pr.Phase != "prepare" || pr.Message != "building shards" {
			t.Fatalf("published %s %+v, want the prepare report repeated", p.topic, p.payload)
		}
		beats++
	}
	// The report itself, then one beat per idle keepalive period (about
	// 7 over 8 periods; a loaded machine may miss some ticks).
	if beats < 4 {
		t.Errorf("%d progress events over %v of silence with keepalive %v, want at least 4", beats, 8*keep, keep)
	}
}
