package bus

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
)

// TestConsumerStoppedMidStreamLosesNothing stops a consumer (Run's context
// cancelled, then Close) while it works through a stream of messages, and
// starts a new consumer of the same group: every message is handled, and
// none twice, on both buses.
func TestConsumerStoppedMidStreamLosesNothing(t *testing.T) {
	for _, kind := range []string{KindPostgres, KindNATS} {
		t.Run(kind, func(t *testing.T) {
			pool := testPool(t)
			cfg := fastConfig(t, kind)
			topic := testTopic
			if kind == KindNATS {
				requireNATS(t)
				cfg.NATSURL = testNATSURL
				cfg.ConsumerPrefix = "t" + uuid.NewString()[:8] + "."
				topic = "test.nats." + uuid.NewString()[:8]
				t.Cleanup(func() { deleteStream(t, topic) })
			}
			var mu sync.Mutex
			handled := map[int]int{}
			distinct := func() int {
				mu.Lock()
				defer mu.Unlock()
				return len(handled)
			}
			h := func(_ context.Context, msg *message.Message) error {
				var p struct{ I int }
				if err := json.Unmarshal(msg.Payload, &p); err != nil {
					return err
				}
				time.Sleep(3 * time.Millisecond)
				mu.Lock()
				handled[p.I]++
				mu.Unlock()
				return nil
			}

			ctx := context.Background()
			first, err := New(ctx, cfg, pool)
			if err != nil {
				t.Fatal(err)
			}
			if err := first.Handle("worker", topic, h); err != nil {
				t.Fatal(err)
			}
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- first.Run(runCtx) }()
			select {
			case <-first.Running():
			case err := <-done:
				t.Fatalf("bus stopped before running: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("bus did not start in 30s")
			}
			const n = 200
			for i := range n {
				if err := first.Publish(ctx, topic, map[string]int{"i": i}, nil); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, 30*time.Second, "the first consumer to be under way", func() (bool, error) { return distinct() >= 40, nil })
			stop()
			if err := <-done; err != nil {
				t.Errorf("first consumer's run: %v", err)
			}
			if err := first.Close(); err != nil {
				t.Errorf("close the first consumer: %v", err)
			}
			atStop := distinct()
			if atStop >= n {
				t.Fatalf("the first consumer handled all %d messages before it was stopped: nothing tested", n)
			}
			t.Logf("stopped the first consumer after %d of %d messages", atStop, n)

			startBus(t, cfg, pool, func(b *Bus) {
				if err := b.Handle("worker", topic, h); err != nil {
					t.Fatal(err)
				}
			})
			eventually(t, 60*time.Second, "every message handled", func() (bool, error) { return distinct() == n, nil })
			time.Sleep(500 * time.Millisecond) // room for a late duplicate
			mu.Lock()
			defer mu.Unlock()
			for i, c := range handled {
				if c != 1 {
					t.Errorf("message %d handled %d times", i, c)
				}
			}
		})
	}
}
