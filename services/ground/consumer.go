package ground

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/codes"

	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/events"
)

// Registrar is the part of internal/bus the consumer and the client need.
type Registrar interface {
	Handle(name, topic string, fn func(ctx context.Context, msg *message.Message) error) error
	Publish(ctx context.Context, topic string, payload any, meta map[string]string) error
}

// optionsRegistrar is a Registrar that takes handler options
// (internal/bus): several messages at once on NATS, and no idempotency
// rows for the client's reply listeners.
type optionsRegistrar interface {
	HandleWith(name, topic string, o bus.HandleOptions, fn func(ctx context.Context, msg *message.Message) error) error
}

// handle registers fn with options where r takes them.
func handle(r Registrar, name, topic string, o bus.HandleOptions, fn func(ctx context.Context, msg *message.Message) error) error {
	if or, ok := r.(optionsRegistrar); ok {
		return or.HandleWith(name, topic, o, fn)
	}
	return r.Handle(name, topic, fn)
}

// DefaultConcurrency is how many messages a consumer or a client's answer
// consumer takes at once by default: each spends most of its time in
// round trips (the claim and idempotency rows, the broker's ack), so that
// one at a time would cap the requests per second far below what a
// batched plugin call answers.
const DefaultConcurrency = 8

// DefaultReplyTopic is the answer topics' prefix when a request names none.
const DefaultReplyTopic = "ground"

// ConsumerConfig configures the ground.requested consumer.
type ConsumerConfig struct {
	// Handler names the consumer group (default "ground-service"): renaming
	// it starts a new group from the topic's oldest message.
	Handler string
	// Pool holds ground_requests, which makes a duplicate request (same
	// correlation id, new message id) answered once. Required.
	Pool   *pgxpool.Pool
	Logger *slog.Logger
	// Concurrency is how many requests are taken off the bus at once
	// (where the bus can: NATS); default DefaultConcurrency.
	Concurrency int
}

// Consumer serves ground.requested. A request is taken off the bus at once
// and answered when its batch is done, so that concurrent requests share
// plugin calls: a request in flight when the process dies is not answered,
// and its caller's deadline tells it so.
type Consumer struct {
	cfg  ConsumerConfig
	svc  *Service
	pub  Registrar
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
	// claims counts claimed requests, to prune ground_requests now and then.
	claims atomic.Int64
}

// Serve registers the consumer of ground.requested on r.
func Serve(r Registrar, cfg ConsumerConfig, svc *Service) (*Consumer, error) {
	if cfg.Handler == "" {
		cfg.Handler = "ground-service"
	}
	if cfg.Pool == nil {
		return nil, errors.New("ground consumer: Pool is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	ctx, stop := context.WithCancel(context.Background())
	c := &Consumer{cfg: cfg, svc: svc, pub: r, ctx: ctx, stop: stop}
	if err := handle(r, cfg.Handler, events.TopicGroundRequested, bus.HandleOptions{Concurrency: cfg.Concurrency}, c.handle); err != nil {
		stop()
		return nil, err
	}
	return c, nil
}

// Close cancels the requests in flight and waits for their answers to be
// published (as failures).
func (c *Consumer) Close() {
	c.stop()
	c.wg.Wait()
}

func (c *Consumer) handle(ctx context.Context, msg *message.Message) error {
	corr := msg.Metadata.Get(events.MetaCorrelationID)
	var req events.GroundRequested
	decodeErr := bus.DecodeStrict(msg.Payload, &req)
	if req.CorrelationID == "" {
		req.CorrelationID = corr
	}
	if req.CorrelationID == "" {
		return bus.Permanent(errors.New("ground.requested without correlation id: nobody to answer"))
	}
	reply := req.ReplyTopic
	if reply == "" {
		reply = DefaultReplyTopic
	}
	if decodeErr != nil {
		c.answer(ctx, req.CorrelationID, reply, events.GroundCompleted{}, newError(CodeBadRequest, "ground.requested payload: %v", decodeErr))
		return nil
	}
	first, err := c.claim(ctx, req.CorrelationID, msg.UUID)
	if err != nil {
		return err // retried by the bus
	}
	if !first {
		bus.Logger(ctx).InfoContext(ctx, "duplicate ground.requested dropped: this correlation id was answered or is in flight", "correlation_id", req.CorrelationID)
		return nil
	}
	// The answer's work outlives the handler (it waits for its batch);
	// the handler's span is its parent.
	work := context.WithoutCancel(ctx)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		wctx, cancel := context.WithCancel(work)
		defer cancel()
		stop := context.AfterFunc(c.ctx, cancel)
		defer stop()
		res, err := c.svc.Ground(wctx, req)
		c.answer(work, req.CorrelationID, reply, res, err)
	}()
	return nil
}

// claim records a correlation id; it reports false when another message
// already claimed it (a redelivery of the same message claims again).
func (c *Consumer) claim(ctx context.Context, corr, msgID string) (bool, error) {
	var owner string
	err := c.cfg.Pool.QueryRow(ctx, `
		INSERT INTO ground_requests (correlation_id, message_id) VALUES ($1, $2)
		ON CONFLICT (correlation_id) DO NOTHING RETURNING message_id`, corr, msgID).Scan(&owner)
	if errors.Is(err, pgx.ErrNoRows) {
		err = c.cfg.Pool.QueryRow(ctx, `SELECT message_id FROM ground_requests WHERE correlation_id = $1`, corr).Scan(&owner)
	}
	if err != nil {
		return false, fmt.Errorf("claim ground request %s: %w", corr, err)
	}
	if c.claims.Add(1)%1000 == 1 {
		// Now and then, forget ids older than any deadline worth keeping.
		if _, err := c.cfg.Pool.Exec(ctx, `DELETE FROM ground_requests WHERE received_at < now() - interval '1 day'`); err != nil {
			c.cfg.Logger.WarnContext(ctx, "prune ground_requests", "err", err)
		}
	}
	return owner == msgID, nil
}

func (c *Consumer) answer(ctx context.Context, corr, reply string, res events.GroundCompleted, err error) {
	meta := map[string]string{events.MetaCorrelationID: corr}
	logger := c.cfg.Logger
	if err != nil {
		f := events.Failed{CorrelationID: corr, Service: "ground", Reason: err.Error(), Code: CodeOf(err), Retryable: !BadInput(err)}
		logger.WarnContext(ctx, "ground request failed", "correlation_id", corr, "code", f.Code, "err", err)
		if perr := c.pub.Publish(ctx, reply+".failed", f, meta); perr != nil {
			logger.ErrorContext(ctx, "publish ground answer", "topic", reply+".failed", "correlation_id", corr, "err", perr)
		}
		return
	}
	res.CorrelationID = corr
	logger.InfoContext(ctx, "ground request answered", "correlation_id", corr, "model_version", res.ModelVersion, "latency_ms", res.LatencyMS)
	if perr := c.pub.Publish(ctx, reply+".completed", res, meta); perr != nil {
		logger.ErrorContext(ctx, "publish ground answer", "topic", reply+".completed", "correlation_id", corr, "err", perr)
	}
}

// Client asks ground over the bus and waits for the answer: it publishes
// ground.requested and matches ground.completed / ground.failed by
// correlation id. One Client per process; register it before the bus runs.
type Client struct {
	pub        Registrar
	maxPending int
	mu         sync.Mutex
	pending    map[string]chan clientReply
}

type clientReply struct {
	res events.GroundCompleted
	err error
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// Handler prefixes the client's consumer groups ("<Handler>-completed",
	// "<Handler>-failed"); every process needs its own, since each must see
	// every answer. Required.
	Handler string
	// MaxPending bounds requests waiting for answers; one more is refused
	// with CodeOverloaded before anything is published; default 1024.
	MaxPending int
	// Concurrency is how many answers are taken off the bus at once (where
	// the bus can: NATS); default DefaultConcurrency.
	Concurrency int
}

// NewClient registers the answer consumers on r and returns the client.
func NewClient(r Registrar, cfg ClientConfig) (*Client, error) {
	if cfg.Handler == "" {
		return nil, errors.New("ground client: Handler is required")
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = 1024
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	c := &Client{pub: r, maxPending: cfg.MaxPending, pending: map[string]chan clientReply{}}
	// A reply delivered twice finds nobody waiting the second time: the
	// listeners keep no idempotency rows.
	opts := bus.HandleOptions{Concurrency: cfg.Concurrency, NoDedupe: true}
	err := errors.Join(
		handle(r, cfg.Handler+"-completed", events.TopicGroundCompleted, opts, func(ctx context.Context, msg *message.Message) error {
			var res events.GroundCompleted
			if err := json.Unmarshal(msg.Payload, &res); err != nil {
				return bus.Permanent(fmt.Errorf("ground.completed payload: %w", err))
			}
			c.deliver(res.CorrelationID, clientReply{res: res})
			return nil
		}),
		handle(r, cfg.Handler+"-failed", events.TopicGroundFailed, opts, func(ctx context.Context, msg *message.Message) error {
			var f events.Failed
			if err := json.Unmarshal(msg.Payload, &f); err != nil {
				return bus.Permanent(fmt.Errorf("ground.failed payload: %w", err))
			}
			code := f.Code
			if code == "" {
				code = CodeInternal
			}
			c.deliver(f.CorrelationID, clientReply{err: &Error{Code: code, Msg: f.Reason}})
			return nil
		}),
	)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Client) deliver(corr string, r clientReply) {
	c.mu.Lock()
	ch, ok := c.pending[corr]
	delete(c.pending, corr)
	c.mu.Unlock()
	if ok {
		ch <- r
	}
}

// Ground publishes req (with a fresh correlation id when it has none, and
// ctx's deadline when it names none) and waits for its answer. The answer
// topics are the default ones.
func (c *Client) Ground(ctx context.Context, req events.GroundRequested) (_ events.GroundCompleted, err error) {
	ctx, span := tracer.Start(ctx, "ground.Client.Ground")
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	if req.CorrelationID == "" {
		req.CorrelationID = newCorrelationID()
	}
	if req.ReplyTopic != "" && req.ReplyTopic != DefaultReplyTopic {
		return events.GroundCompleted{}, newError(CodeBadRequest, "a Client waits on the default answer topics; publish ground.requested yourself to use reply topic %q", req.ReplyTopic)
	}
	if dl, ok := ctx.Deadline(); ok && req.Deadline.IsZero() {
		req.Deadline = dl
	}
	ch := make(chan clientReply, 1)
	c.mu.Lock()
	if len(c.pending) >= c.maxPending {
		c.mu.Unlock()
		return events.GroundCompleted{}, newError(CodeOverloaded, "%d grounding requests already wait for answers (the limit); retry later", c.maxPending)
	}
	if _, dup := c.pending[req.CorrelationID]; dup {
		c.mu.Unlock()
		return events.GroundCompleted{}, newError(CodeBadRequest, "correlation id %q is already waiting for an answer", req.CorrelationID)
	}
	c.pending[req.CorrelationID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, req.CorrelationID)
		c.mu.Unlock()
	}()
	if err := c.pub.Publish(ctx, events.TopicGroundRequested, req, map[string]string{events.MetaCorrelationID: req.CorrelationID}); err != nil {
		return events.GroundCompleted{}, fmt.Errorf("publish ground.requested: %w", err)
	}
	select {
	case r := <-ch:
		return r.res, r.err
	case <-ctx.Done():
		return events.GroundCompleted{}, &Error{Code: CodeDeadlineExceeded, Msg: "no answer before the deadline: " + ctx.Err().Error(), Err: ctx.Err()}
	}
}
