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

func (s *memTokens) Waiting(ctx context.Context, c string) ([]Pending, error) {
	p, ok, _ := s.Lookup(ctx, c)
	if !ok {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Pending{p}
	if p.WorkflowID == "" || p.ActivityID == "" {
		return out, nil
	}
	for k, o := range s.m {
		if k != c && !s.done[k] && o.WorkflowID == p.WorkflowID && o.RunID == p.RunID && o.ActivityID == p.ActivityID {
			out = append(out, o)
		}
	}
	return out, nil
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

// TestBridgeLaterAttemptAdoptsEarlierWork: after a crash, the service may
// work on a dead attempt's redelivered request while the live retry's
// request waits behind it on the same consumer. The live attempt hears the
// dead one's progress and is completed with its answer, once; a failure of
// the earlier attempt leaves the later one to its own request; another
// activity of the same workflow is never touched.
func TestBridgeLaterAttemptAdoptsEarlierWork(t *testing.T) {
	tokens := &memTokens{m: map[string]Pending{}, done: map[string]bool{}}
	fc := &fakeClient{}
	b := NewBridge(fc, tokens, nil)
	ctx := context.Background()
	att := func(corr, tok, activity string) Pending {
		return Pending{CorrelationID: corr, TaskToken: []byte(tok), WorkflowID: "p/train", RunID: "r1", ActivityID: activity, Topic: "train.requested"}
	}
	_ = tokens.Save(ctx, att("p/train/5/1", "dead", "5"))
	_ = tokens.Save(ctx, att("p/train/5/2", "live", "5"))
	_ = tokens.Save(ctx, att("p/train/6/1", "other", "6"))
	if err := b.HandleProgress(ctx, events.Progress{CorrelationID: "p/train/5/1", Done: 10, Total: 100}); err != nil {
		t.Fatal(err)
	}
	beats := map[string]int{}
	for _, c := range fc.calls {
		if c.kind == "heartbeat" {
			beats[c.token]++
		}
	}
	if beats["dead"] != 1 || beats["live"] != 1 || beats["other"] != 0 {
		t.Fatalf("heartbeats by token %v, want the dead and the live attempt once each", beats)
	}

	raw := json.RawMessage(`{"correlation_id":"p/train/5/1","run_id":"r"}`)
	if err := b.HandleCompleted(ctx, raw); err != nil {
		t.Fatal(err)
	}
	// The live attempt's own request, answered later, finds nothing waiting.
	if err := b.HandleCompleted(ctx, json.RawMessage(`{"correlation_id":"p/train/5/2","run_id":"r"}`)); err != nil {
		t.Fatal(err)
	}
	completed := map[string]string{}
	for _, c := range fc.calls {
		if c.kind == "complete" {
			if _, twice := completed[c.token]; twice {
				t.Fatalf("token %s completed twice", c.token)
			}
			completed[c.token] = string(c.result.(json.RawMessage))
		}
	}
	if len(completed) != 2 || completed["live"] != string(raw) || completed["dead"] != string(raw) {
		t.Fatalf("completions %v, want the dead and the live attempt with the first answer", completed)
	}
	if _, ok, _ := tokens.Lookup(ctx, "p/train/6/1"); !ok {
		t.Fatal("another activity of the workflow was completed")
	}

	// A failed earlier attempt does not fail a later one.
	_ = tokens.Save(ctx, att("p/train/7/1", "dead7", "7"))
	_ = tokens.Save(ctx, att("p/train/7/2", "live7", "7"))
	if err := b.HandleFailed(ctx, events.Failed{CorrelationID: "p/train/7/1", Service: "train", Reason: "plugin crashed", Retryable: true}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := tokens.Lookup(ctx, "p/train/7/2"); !ok {
		t.Fatal("the earlier attempt's failure finished the later attempt")
	}
}
