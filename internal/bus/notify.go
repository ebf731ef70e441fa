package bus

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// NotifyChannel is the Postgres LISTEN/NOTIFY channel of the Postgres bus:
// every publish notifies it with the topic as payload, at commit.
const NotifyChannel = "groundmesh_bus"

// notifier wakes the Postgres bus's idle subscribers when their topic gets
// a message. watermill-sql polls; without a wake-up a message waits for
// the next poll (Config.PollInterval, 250ms by default) at every hop. The
// poll stays as the safety net: a notification missed while the listening
// connection is down costs one poll interval, never a message.
type notifier struct {
	pool   *pgxpool.Pool
	logger watermill.LoggerAdapter

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]bool

	cancel context.CancelFunc
	done   chan struct{}
	// listening is closed once the first LISTEN is in place (for tests).
	listening chan struct{}
	once      sync.Once
}

func newNotifier(pool *pgxpool.Pool, logger watermill.LoggerAdapter) *notifier {
	ctx, cancel := context.WithCancel(context.Background())
	n := &notifier{pool: pool, logger: logger, waiters: map[string]map[chan struct{}]bool{}, cancel: cancel,
		done: make(chan struct{}), listening: make(chan struct{})}
	go n.run(ctx)
	return n
}

// run holds a connection of its own (not one of the pool's) that LISTENs,
// and reconnects with a backoff when it fails.
func (n *notifier) run(ctx context.Context) {
	defer close(n.done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := n.listen(ctx)
		if ctx.Err() != nil {
			return
		}
		n.logger.Error("postgres bus: LISTEN connection lost; subscribers poll until it is back", err, watermill.LogFields{"retry_in": backoff.String()})
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (n *notifier) listen(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, n.pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	n.once.Do(func() { close(n.listening) })
	// Whatever was published while nobody listened: look now.
	n.wakeAll()
	for {
		note, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for notification: %w", err)
		}
		n.wake(note.Payload)
	}
}

// register returns the channel that wakes a subscriber of topic, and the
// function that unregisters it.
func (n *notifier) register(topic string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.waiters[topic] == nil {
		n.waiters[topic] = map[chan struct{}]bool{}
	}
	n.waiters[topic][ch] = true
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		delete(n.waiters[topic], ch)
		n.mu.Unlock()
	}
}

// wake signals topic's subscribers.
func (n *notifier) wake(topic string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	signal(n.waiters[topic])
}

// wakeAll signals every subscriber.
func (n *notifier) wakeAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, chs := range n.waiters {
		signal(chs)
	}
}

// signal sends each channel a wake-up it does not already hold.
func signal(chs map[chan struct{}]bool) {
	for ch := range chs {
		select {
		case ch <- struct{}{}:
		default: // already due to look
		}
	}
}

func (n *notifier) close() {
	n.cancel()
	<-n.done
}

// notifyBackoff is the subscriber's backoff manager: after a query that
// found nothing it waits for a notification of its topic, or the poll
// interval, or the subscriber's close, and then queries again. Errors back
// off as watermill-sql's default manager does.
//
// A query woken by a notification can still find nothing: watermill-sql
// reads only messages older than every transaction running in the cluster
// (pg_snapshot_xmin), so under concurrent writes a committed message stays
// out of sight for a moment. After a wake-up that found nothing it looks
// again after 5 ms, then 10, 20, ... up to the poll interval.
//
// HandleError is called by the one goroutine that consumes the topic.
type notifyBackoff struct {
	def  wsql.BackoffManager
	poll time.Duration
	wake chan struct{}
	quit chan struct{}
	// retry is the next short wait after a wake-up; 0 when none is due.
	retry time.Duration
}

// firstRetry is the first look again after a wake-up that found nothing
// (a variable only so that a test can turn the looks off).
var firstRetry = 5 * time.Millisecond

func (b *notifyBackoff) HandleError(logger watermill.LoggerAdapter, noMsg bool, err error) time.Duration {
	if err != nil || !noMsg {
		b.retry = 0
		return b.def.HandleError(logger, noMsg, err)
	}
	wait := b.poll
	if b.retry > 0 {
		wait = b.retry
		if b.retry *= 2; b.retry >= b.poll {
			b.retry = 0
		}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-b.wake:
		b.retry = firstRetry
	case <-t.C:
	case <-b.quit:
	}
	return 0
}

// notifiedSubscriber unregisters its wake-up and ends a wait in progress
// when it closes.
type notifiedSubscriber struct {
	message.Subscriber
	quit       chan struct{}
	unregister func()
	once       sync.Once
}

// Subscribe subscribes; the subscription's end (ctx) ends a wait too, so
// that a router closing its handlers is not held up by a poll interval.
func (s *notifiedSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	context.AfterFunc(ctx, s.stop)
	return s.Subscriber.Subscribe(ctx, topic)
}

func (s *notifiedSubscriber) stop() {
	s.once.Do(func() {
		close(s.quit)
		s.unregister()
	})
}

func (s *notifiedSubscriber) Close() error {
	s.stop()
	return s.Subscriber.Close()
}
