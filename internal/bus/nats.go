package bus

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsBackend maps each topic to a JetStream stream (limits retention, so
// every consumer group sees every message) and each consumer group to a
// durable pull consumer on it. Stream names cannot hold dots, so topic
// "ingest.requested" lives in stream and subject "gm_ingest_requested".
type natsBackend struct {
	cfg    Config
	logger watermill.LoggerAdapter
	nc     *nats.Conn
	js     jetstream.JetStream
	pub    *ensuringPublisher
}

func newNATSBackend(ctx context.Context, cfg Config, logger watermill.LoggerAdapter) (*natsBackend, error) {
	nc, err := connectNATS(cfg.NATSURL, "groundmesh-bus")
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("open jetstream: %w", err)
	}
	if _, err := js.AccountInfo(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream on %s: %w", cfg.NATSURL, err)
	}
	b := &natsBackend{cfg: cfg, logger: logger, nc: nc, js: js}
	pub, err := wmjs.NewPublisher(wmjs.PublisherConfig{
		Conn:            nc,
		Logger:          logger,
		ConfigureStream: b.streamConfig,
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("create jetstream publisher: %w", err)
	}
	b.pub = &ensuringPublisher{Publisher: pub, ensure: b.ensureStream, js: js}
	return b, nil
}

func connectNATS(url, name string) (*nats.Conn, error) {
	nc, err := nats.Connect(url, nats.Name(name), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	return nc, nil
}

// streamName turns a topic into a valid stream name and subject.
func streamName(topic string) string {
	r := strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_", "/", "_", "\\", "_")
	return "gm_" + r.Replace(topic)
}

func (n *natsBackend) streamConfig(topic string) jetstream.StreamConfig {
	name := streamName(topic)
	return jetstream.StreamConfig{
		Name:        name,
		Description: "groundmesh topic " + topic,
		Subjects:    []string{name},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      n.cfg.NATSStreamMaxAge,
		Storage:     jetstream.FileStorage,
	}
}

func (n *natsBackend) ensureStream(ctx context.Context, js jetstream.JetStream, topic string) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, n.streamConfig(topic))
	if err != nil {
		return nil, fmt.Errorf("create stream for %s: %w", topic, err)
	}
	return s, nil
}

func (n *natsBackend) publisher() message.Publisher { return n.pub }

func (n *natsBackend) subscriber(group, _ string, o HandleOptions) (message.Subscriber, error) {
	// One connection per subscriber: the subscriber drains its connection
	// on Close.
	nc, err := connectNATS(n.cfg.NATSURL, "groundmesh-"+group)
	if err != nil {
		return nil, err
	}
	durable := strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_", "/", "_", "\\", "_").Replace(group)
	ackWait := n.cfg.AckDeadline
	// Few messages in flight: a message's ack wait runs from delivery
	// to the client, not from the handler's start.
	consume := []jetstream.PullConsumeOpt{jetstream.PullMaxMessages(16)}
	if o.Lease > 0 && o.Lease < ackWait {
		ackWait = o.Lease
		consume = []jetstream.PullConsumeOpt{jetstream.PullMaxMessages(1)}
	}
	sub, err := wmjs.NewSubscriber(wmjs.SubscriberConfig{
		Conn:            nc,
		Logger:          n.logger,
		AckWaitTimeout:  n.cfg.AckDeadline,
		ConfigureStream: n.streamConfig,
		ResourceInitializer: func(ctx context.Context, js jetstream.JetStream, topic string) (jetstream.Consumer, func(context.Context, watermill.LoggerAdapter), error) {
			s, err := n.ensureStream(ctx, js, topic)
			if err != nil {
				return nil, nil, err
			}
			c, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
				Name:          durable,
				Durable:       durable,
				Description:   "groundmesh handler " + group,
				DeliverPolicy: jetstream.DeliverAllPolicy,
				AckPolicy:     jetstream.AckExplicitPolicy,
				AckWait:       ackWait,
				MaxAckPending: 256,
			})
			if err != nil {
				return nil, nil, fmt.Errorf("create consumer %s on %s: %w", durable, topic, err)
			}
			return nakUnsettled{Consumer: c, lease: ackWait}, nil, nil
		},
		ConsumeOptions: consume,
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("create jetstream subscriber: %w", err)
	}
	return sub, nil
}

func (n *natsBackend) close() error {
	err := n.pub.Close() // closes n.nc
	return err
}

// ensuringPublisher creates a topic's stream before its first publish:
// JetStream drops (no responders) a publish to a subject no stream holds.
type ensuringPublisher struct {
	*wmjs.Publisher
	ensure func(ctx context.Context, js jetstream.JetStream, topic string) (jetstream.Stream, error)
	js     jetstream.JetStream
	done   sync.Map
}

func (p *ensuringPublisher) Publish(topic string, msgs ...*message.Message) error {
	if _, ok := p.done.Load(topic); !ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := p.ensure(ctx, p.js, topic); err != nil {
			return err
		}
		p.done.Store(topic, true)
	}
	return p.Publisher.Publish(topic, msgs...)
}

// nakUnsettled wraps a JetStream consumer so that a message the subscriber
// hands back neither acked nor nacked is nacked at once. The subscriber
// drops, unsettled, every message it receives while it closes (up to
// PullMaxMessages fetched ahead of the handler): without the nack each
// would wait out the consumer's ack wait (AckDeadline, an hour by
// default) before another consumer of the group got it.
//
// While the handler works on a message, its lease (the consumer's ack
// wait) is renewed every third of it with an in-progress ack, so that a
// message is redelivered after its ack wait only when the process that
// held it died.
type nakUnsettled struct {
	jetstream.Consumer
	lease time.Duration
}

func (c nakUnsettled) Consume(h jetstream.MessageHandler, opts ...jetstream.PullConsumeOpt) (jetstream.ConsumeContext, error) {
	return c.Consumer.Consume(func(msg jetstream.Msg) {
		m := &settleTracker{Msg: msg}
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			t := time.NewTicker(c.lease / 3)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					if m.settled.Load() {
						return
					}
					_ = msg.InProgress()
				}
			}
		}()
		defer func() {
			if r := recover(); r != nil {
				// watermill-nats hands a message over in a select that also
				// watches for closing, and the subscriber closes the output
				// channel as it closes: the send can be chosen on the closed
				// channel and panic on this NATS callback goroutine, taking
				// the process down. Seen in TestConsumerStoppedMidStreamLosesNothing.
				// The message was not delivered: it is nacked below.
				if err, ok := r.(runtime.Error); !ok || err.Error() != "send on closed channel" {
					panic(r)
				}
			}
			if !m.settled.Load() {
				_ = msg.Nak()
			}
		}()
		h(m)
	}, opts...)
}

// settleTracker notes whether a message was acked, nacked or terminated.
type settleTracker struct {
	jetstream.Msg
	settled atomic.Bool
}

func (m *settleTracker) Ack() error { m.settled.Store(true); return m.Msg.Ack() }
func (m *settleTracker) DoubleAck(ctx context.Context) error {
	m.settled.Store(true)
	return m.Msg.DoubleAck(ctx)
}
func (m *settleTracker) Nak() error { m.settled.Store(true); return m.Msg.Nak() }
func (m *settleTracker) NakWithDelay(d time.Duration) error {
	m.settled.Store(true)
	return m.Msg.NakWithDelay(d)
}
func (m *settleTracker) Term() error { m.settled.Store(true); return m.Msg.Term() }
func (m *settleTracker) TermWithReason(reason string) error {
	m.settled.Store(true)
	return m.Msg.TermWithReason(reason)
}
