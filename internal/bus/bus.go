// Package bus is groundmesh's event bus: Watermill publishers and a router
// of consumer handlers over Postgres (default; watermill-sql) or NATS
// JetStream, with the middleware every handler gets — tracing, correlation,
// idempotency, retries with backoff, panic recovery and a poison queue.
//
// Handler names are consumer group names: every handler registered under one
// name (in any number of processes) shares the topic's messages, and each
// differently named handler gets every message of the topic once. Renaming a
// handler therefore creates a new consumer group, which starts from the
// oldest message still stored and forgets what the old name processed: name
// handlers deliberately ("ingest.on-requested"), and never rename one casually.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/events"
)

// Kinds of bus.
const (
	KindPostgres = "postgres"
	KindNATS     = "nats"
)

// Config configures a Bus.
type Config struct {
	// Kind selects the transport: "postgres" (default; messages in tables
	// of the pool's database) or "nats" (JetStream).
	Kind string
	// NATSURL is the NATS server (Kind "nats"). Default nats://127.0.0.1:4222.
	NATSURL string
	// NATSStreamMaxAge is how long JetStream keeps a topic's messages
	// (Kind "nats"). Default 7 days.
	NATSStreamMaxAge time.Duration
	// ConsumerPrefix is prepended to every handler name to form its
	// consumer group (e.g. "prod."), so that two deployments sharing one
	// broker do not share groups. Changing it changes every group.
	ConsumerPrefix string
	// Logger receives the bus's and Watermill's logs. Default: discard.
	Logger *slog.Logger
	// PollInterval is how often an idle Postgres subscriber polls for new
	// messages (Kind "postgres"). Default 250ms.
	PollInterval time.Duration
	// AckDeadline is how long a handler may work on one message before the
	// message is redelivered (its context is cancelled then). Default 1h:
	// long work (training) must fit in it or be handed off.
	AckDeadline time.Duration
	// Retry sets the backoff of handler retries.
	Retry RetryConfig
	// CloseTimeout is how long Close waits for handlers to finish. Default 30s.
	CloseTimeout time.Duration
	// TracerProvider makes the publish and process spans. Default: the
	// global provider (otel.GetTracerProvider()).
	TracerProvider trace.TracerProvider
	// Propagator writes and reads trace context in metadata. Default
	// DefaultPropagator (W3C traceparent and baggage).
	Propagator propagation.TextMapPropagator
}

func (c *Config) setDefaults() {
	if c.Kind == "" {
		c.Kind = KindPostgres
	}
	if c.NATSURL == "" {
		c.NATSURL = "nats://127.0.0.1:4222"
	}
	if c.NATSStreamMaxAge == 0 {
		c.NATSStreamMaxAge = 7 * 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.PollInterval == 0 {
		c.PollInterval = 250 * time.Millisecond
	}
	if c.AckDeadline == 0 {
		c.AckDeadline = time.Hour
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 30 * time.Second
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.Propagator == nil {
		c.Propagator = DefaultPropagator
	}
	c.Retry.setDefaults()
}

func (c Config) validate() error {
	switch c.Kind {
	case KindPostgres, KindNATS:
	default:
		return fmt.Errorf("unknown bus kind %q (want %q or %q)", c.Kind, KindPostgres, KindNATS)
	}
	if c.PollInterval < 0 || c.AckDeadline < 0 || c.CloseTimeout < 0 || c.NATSStreamMaxAge < 0 {
		return errors.New("durations must not be negative")
	}
	return nil
}

// backend is one transport: a publisher and a subscriber per consumer group.
type backend interface {
	publisher() message.Publisher
	subscriber(group, topic string, o HandleOptions) (message.Subscriber, error)
	close() error
}

// Bus publishes events and runs the handlers registered on it.
type Bus struct {
	cfg     Config
	pool    *pgxpool.Pool
	logger  watermill.LoggerAdapter
	tracer  trace.Tracer
	backend backend
	router  *message.Router
	metrics *busMetrics

	mu       sync.Mutex
	handlers map[string]bool
	subs     []message.Subscriber
	errs     []error
	started  bool
	closed   bool
}

// New builds a Bus. pool is required for both kinds: it holds the
// idempotency and poison tables, and for Kind "postgres" the messages too.
func New(ctx context.Context, cfg Config, pool *pgxpool.Pool) (*Bus, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("create bus: %w", err)
	}
	if pool == nil {
		return nil, errors.New("create bus: pool is nil")
	}
	wlog := watermill.NewSlogLoggerWithLevelMapping(cfg.Logger.With(slog.String("component", "watermill")),
		// Watermill logs every message at Info; keep that at Debug.
		map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})
	b := &Bus{
		cfg:      cfg,
		pool:     pool,
		logger:   wlog,
		tracer:   cfg.TracerProvider.Tracer("groundmesh/bus"),
		handlers: map[string]bool{},
	}
	var err error
	switch cfg.Kind {
	case KindPostgres:
		b.backend, err = newPostgresBackend(pool, cfg, wlog)
	case KindNATS:
		b.backend, err = newNATSBackend(ctx, cfg, wlog)
	}
	if err != nil {
		return nil, fmt.Errorf("create %s bus: %w", cfg.Kind, err)
	}
	b.router, err = message.NewRouter(message.RouterConfig{CloseTimeout: cfg.CloseTimeout}, wlog)
	if err != nil {
		_ = b.backend.close()
		return nil, fmt.Errorf("create bus router: %w", err)
	}
	if b.metrics, err = newBusMetrics(pool); err != nil {
		_ = b.backend.close()
		return nil, fmt.Errorf("create bus metrics: %w", err)
	}
	return b, nil
}

// Kind returns the transport in use ("postgres" or "nats").
func (b *Bus) Kind() string { return b.cfg.Kind }

// Publisher returns the raw Watermill publisher, for callers that build their
// own messages (the outbox relay). Messages published through it get no
// metadata or span added.
func (b *Bus) Publisher() message.Publisher { return b.backend.publisher() }

// Publish sends payload (JSON-encoded) to topic in a new message; see
// NewMessage for the metadata it carries. It records a producer span
// "<topic> publish" whose context the message carries, so the consumer's
// span joins the trace. For facts that must commit with a state change, use
// the outbox instead.
func (b *Bus) Publish(ctx context.Context, topic string, payload any, meta map[string]string) error {
	ctx, span := b.tracer.Start(ctx, topic+" publish",
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", b.cfg.Kind),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", topic)))
	defer span.End()
	msg, err := NewMessage(ctx, topic, payload, meta)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	span.SetAttributes(attribute.String("messaging.message.id", msg.UUID))
	msg.SetContext(ctx)
	if err := b.backend.publisher().Publish(topic, msg); err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	return nil
}

// Handle registers fn as the handler name for topic. name is the consumer
// group (with Config.ConsumerPrefix): see the package doc before renaming
// one. Register every handler before Run. An error here is also returned by
// Run, so a caller may ignore it.
func (b *Bus) Handle(name, topic string, fn func(ctx context.Context, msg *message.Message) error) error {
	return b.HandleConcurrent(name, topic, 1, fn)
}

// HandleConcurrent is Handle with up to n messages of the topic handled at
// once in this process (n subscribers of the one consumer group): for
// handlers whose per-message work is short and whose order does not
// matter, and that are idempotent on their own (two deliveries of one
// message may run at once, before either is recorded as processed). On
// NATS the messages are shared among the n; the Postgres bus
// delivers a group's messages one at a time in order, so there n is 1.
func (b *Bus) HandleConcurrent(name, topic string, n int, fn func(ctx context.Context, msg *message.Message) error) error {
	return b.HandleWith(name, topic, HandleOptions{Concurrency: n}, fn)
}

// HandleOptions tune a handler (HandleWith).
type HandleOptions struct {
	// Concurrency is HandleConcurrent's n; 0 or 1: one message at a time.
	Concurrency int
	// NoDedupe leaves out the idempotency middleware: no processed_messages
	// row is read or written per message, and a redelivered message is
	// handled again. For handlers whose effect is in memory and harmless
	// to repeat, such as a process's listener for replies to its own
	// requests, which would otherwise write a row per reply forever.
	NoDedupe bool
	// Lease, when set, is how soon a message whose handler's process died
	// goes to another consumer of the group (NATS; the default is
	// Config.AckDeadline). While the handler works, the message's lease is
	// renewed every Lease/3 (JetStream in-progress acks), so that long
	// work is not redelivered while it runs; the group fetches one message
	// at a time. On Postgres a dead process's consumer lock goes with its
	// connection, so a message is handed on at once and Lease is not
	// needed. For command consumers: a worker killed in the middle of a
	// command hands it to another worker of its queue.
	Lease time.Duration
}

// HandleWith is Handle with options.
func (b *Bus) HandleWith(name, topic string, o HandleOptions, fn func(ctx context.Context, msg *message.Message) error) error {
	n := o.Concurrency
	if b.cfg.Kind == KindPostgres || n < 1 {
		n = 1
	}
	var err error
	for i := range n {
		if err = b.handleAs(name, i, topic, o, fn); err != nil {
			break
		}
	}
	if err != nil {
		err = fmt.Errorf("register handler %s on %s: %w", name, topic, err)
		b.mu.Lock()
		b.errs = append(b.errs, err)
		b.mu.Unlock()
	}
	return err
}

// handleAs registers the i-th subscriber of handler name (the router's
// handler "name" for the first, "name#<i+1>" for the others).
func (b *Bus) handleAs(name string, i int, topic string, o HandleOptions, fn func(ctx context.Context, msg *message.Message) error) error {
	if name == "" || topic == "" || fn == nil {
		return errors.New("name, topic and fn are required")
	}
	if strings.ContainsAny(name, " \t\n") {
		return errors.New("name must not contain whitespace")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.closed {
		return errors.New("bus already running or closed: register handlers before Run")
	}
	routerName := name
	if i > 0 {
		routerName = fmt.Sprintf("%s#%d", name, i+1)
	}
	if b.handlers[routerName] {
		return errors.New("a handler with this name is already registered")
	}
	group := b.cfg.ConsumerPrefix + name
	sub, err := b.backend.subscriber(group, topic, o)
	if err != nil {
		return err
	}
	h := b.router.AddConsumerHandler(routerName, topic, sub, func(msg *message.Message) error {
		return fn(msg.Context(), msg)
	})
	h.AddMiddleware(b.chain(group, topic, o)...)
	b.handlers[routerName] = true
	b.subs = append(b.subs, sub)
	return nil
}

// chain is the middleware every handler runs in, outermost first.
func (b *Bus) chain(group, topic string, o HandleOptions) []message.HandlerMiddleware {
	ms := []message.HandlerMiddleware{
		tracing(b.tracer, b.cfg.Propagator, group, topic),
		metering(b.metrics, group, topic),
		correlation(b.cfg.Logger, group, topic),
	}
	if !o.NoDedupe {
		ms = append(ms, idempotency(b.pool, group))
	}
	if topic == events.TopicPoison {
		// Poisoned messages carry whatever payload and schema they came
		// with, and a failure here must not loop back into the poison topic.
		ms = append(ms, poison(b.pool, nil, group, topic))
	} else {
		ms = append(ms, poison(b.pool, b.backend.publisher(), group, topic), schemaCheck)
	}
	return append(ms, retry(b.cfg.Retry, b.logger), recoverer)
}

// Run consumes with every registered handler until ctx is done or Close is
// called, then waits (up to Config.CloseTimeout) for handlers in flight.
func (b *Bus) Run(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return errors.New("run bus: closed")
	}
	if b.started {
		b.mu.Unlock()
		return errors.New("run bus: already running")
	}
	b.started = true
	errs := errors.Join(b.errs...)
	b.mu.Unlock()
	if errs != nil {
		return fmt.Errorf("run bus: %w", errs)
	}
	stop := context.AfterFunc(ctx, func() { _ = b.router.Close() })
	defer stop()
	if err := b.router.Run(ctx); err != nil {
		return fmt.Errorf("run bus: %w", err)
	}
	return nil
}

// Running is closed once Run has subscribed every handler.
func (b *Bus) Running() chan struct{} { return b.router.Running() }

// Close stops the handlers (waiting for those in flight) and closes the
// publisher and subscribers. It is safe to call more than once.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := b.subs
	b.mu.Unlock()
	errs := []error{b.router.Close()}
	for _, s := range subs {
		errs = append(errs, s.Close())
	}
	errs = append(errs, b.backend.close(), b.metrics.close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close bus: %w", err)
	}
	return nil
}
