package workflows

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/temporal"

	"github.com/groundmesh/groundmesh/internal/events"
)

type memTokens struct {
	mu   sync.Mutex
	m    map[string]Pending
	done map[string]bool
}

func (s *memTokens) Save(_ context.Context, p Pending) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[p.CorrelationID] = p
	delete(s.done, p.CorrelationID)
	return nil
}

func (s *memTokens) Lookup(_ context.Context, c string) (Pending, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.m[c]
	return p, ok && !s.done[c], nil
}

func (s *memTokens) MarkDone(_ context.Context, c string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.done[c] = true
	return nil
}

type call struct {
	kind   string
	token  string
	result any
	err    error
}

type fakeClient struct {
	calls   []call
	failGet error
}

func (f *fakeClient) CompleteActivity(_ context.Context, tok []byte, result any, err error) error {
	f.calls = append(f.calls, call{"complete", string(tok), result, err})
	return f.failGet
}

func (f *fakeClient) RecordActivityHeartbeat(_ context.Context, tok []byte, d ...any) error {
	f.calls = append(f.calls, call{kind: "heartbeat", token: string(tok), result: d[0]})
	return nil
}

func (f *fakeClient) SignalWorkflow(_ context.Context, wid, _, name string, arg any) error {
	f.calls = append(f.calls, call{kind: "signal:" + name, token: wid, result: arg})
	return nil
}

func TestBridgeRoutesAnswersToTheWaitingActivity(t *testing.T) {
	tokens := &memTokens{m: map[string]Pending{}, done: map[string]bool{}}
	fc := &fakeClient{}
	b := NewBridge(fc, tokens, nil)
	now := time.Unix(0, 0)
	b.now = func() time.Time { return now }
	ctx := context.Background()
	_ = tokens.Save(ctx, Pending{CorrelationID: "c1", TaskToken: []byte("tok1"), WorkflowID: "wf1"})

	// Progress: heartbeat always, signal throttled.
	for i := 0; i < 3; i++ {
		if err := b.HandleProgress(ctx, events.Progress{CorrelationID: "c1", Done: int64(i), Total: 10}); err != nil {
			t.Fatal(err)
		}
	}
	var hb, sig int
	for _, c := range fc.calls {
		switch c.kind {
		case "heartbeat":
			hb++
		case "signal:" + ProgressSignal:
			sig++
		}
	}
	if hb != 3 || sig != 1 {
		t.Fatalf("heartbeats %d signals %d, want 3 and 1", hb, sig)
	}
	// Unknown correlation ids are ignored, not errors.
	if err := b.HandleProgress(ctx, events.Progress{CorrelationID: "other"}); err != nil {
		t.Fatal(err)
	}
	// Completion hands over the raw payload, once.
	raw := json.RawMessage(`{"correlation_id":"c1","dataset_id":"d"}`)
	if err := b.HandleCompleted(ctx, raw); err != nil {
		t.Fatal(err)
	}
	if err := b.HandleCompleted(ctx, raw); err != nil { // duplicate event
		t.Fatal(err)
	}
	var completes []call
	for _, c := range fc.calls {
		if c.kind == "complete" {
			completes = append(completes, c)
		}
	}
	if len(completes) != 1 || completes[0].token != "tok1" || string(completes[0].result.(json.RawMessage)) != string(raw) {
		t.Fatalf("completions %+v", completes)
	}
	// A completion without a correlation id is a malformed event (poison).
	if err := b.HandleCompleted(ctx, json.RawMessage(`{"x":1}`)); err == nil {
		t.Fatal("want error for completion without correlation id")
	}
}

func TestBridgeFailureIsNonRetryableForBadInput(t *testing.T) {
	tokens := &memTokens{m: map[string]Pending{}, done: map[string]bool{}}
	fc := &fakeClient{}
	b := NewBridge(fc, tokens, nil)
	ctx := context.Background()
	_ = tokens.Save(ctx, Pending{CorrelationID: "c2", TaskToken: []byte("tok2")})
	if err := b.HandleFailed(ctx, events.Failed{CorrelationID: "c2", Service: "ingest", Reason: "boxes[3]: outside image", Retryable: false}); err != nil {
		t.Fatal(err)
	}
	var appErr *temporal.ApplicationError
	if len(fc.calls) != 1 || !errors.As(fc.calls[0].err, &appErr) || !appErr.NonRetryable() || appErr.Type() != ErrTypeBadInput {
		t.Fatalf("calls %+v", fc.calls)
	}
	// An activity that already timed out: the answer is dropped quietly.
	_ = tokens.Save(ctx, Pending{CorrelationID: "c3", TaskToken: []byte("tok3")})
	fc.failGet = serviceerror.NewNotFound("activity not found")
	if err := b.HandleFailed(ctx, events.Failed{CorrelationID: "c3", Service: "train", Reason: "oom", Retryable: true}); err != nil {
		t.Fatalf("gone activity should not error: %v", err)
	}
}
