package bus

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
)

// A handler with a Lease on NATS that works three leases long keeps its
// message: the lease is renewed while it works, so the other consumer of
// its group (another process) is not handed the message meanwhile. (That
// a dead process's message goes to the other consumer after the lease is
// internal/stack's TestWorkersSplitByServiceAndQueue, with SIGKILL.)
func TestNATSLeaseIsRenewedWhileTheHandlerWorks(t *testing.T) {
	requireNATS(t)
	pool := testPool(t)
	topic := "test.lease." + uuid.NewString()[:8]
	t.Cleanup(func() { deleteStream(t, topic) })
	const lease = time.Second
	var deliveries atomic.Int32
	done := make(chan struct{}, 4)
	slow := func(ctx context.Context, _ *message.Message) error {
		deliveries.Add(1)
		select {
		case <-time.After(3 * lease):
		case <-ctx.Done():
			return ctx.Err()
		}
		done <- struct{}{}
		return nil
	}
	prefix := "t" + uuid.NewString()[:8] + "."
	var buses []*Bus
	for range 2 { // two processes' buses, one consumer group
		cfg := fastConfig(t, KindNATS)
		cfg.NATSURL = testNATSURL
		cfg.ConsumerPrefix = prefix
		buses = append(buses, startBus(t, cfg, pool, func(b *Bus) {
			if err := b.HandleWith("worker", topic, HandleOptions{Lease: lease}, slow); err != nil {
				t.Fatal(err)
			}
		}))
	}
	if err := buses[0].Publish(context.Background(), topic, map[string]string{"work": "long"}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the message was not handled within 20s")
	}
	time.Sleep(2 * lease)
	if n := deliveries.Load(); n != 1 {
		t.Fatalf("the message was delivered %d times while its handler worked three leases long, want 1", n)
	}
}
