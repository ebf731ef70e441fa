package workflows

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/groundmesh/groundmesh/internal/events"
)

// The bridge lets workflows drive services that only speak events. The
// Command activity stores its task token under a fresh correlation id,
// publishes "<service>.requested" and returns activity.ErrResultPending.
// The Bridge listener consumes the answers: "<service>.progress" becomes an
// activity heartbeat (and, throttled, a progress signal to the workflow),
// "<service>.completed" completes the activity with the payload and
// "<service>.failed" fails it (non-retryable when the service said bad
// input). Temporal keeps its timeouts, retries and history; services stay
// plain message handlers.

// Publisher publishes one event (internal/bus implements it).
type Publisher interface {
	Publish(ctx context.Context, topic string, payload any, meta map[string]string) error
}

// Pending is an activity waiting for a service's answer.
type Pending struct {
	CorrelationID string
	TaskToken     []byte
	WorkflowID    string
	RunID         string
	ActivityID    string
	Topic         string
}

// TokenStore keeps pending activities' task tokens (Postgres in production:
// table activity_bridge).
type TokenStore interface {
	Save(ctx context.Context, p Pending) error
	// Waiting returns the pending activity of a correlation id followed by
	// the other pending attempts of the same activity (same workflow id,
	// run id and activity id; none when it names no activity); empty when
	// the correlation id is unknown or already completed.
	Waiting(ctx context.Context, correlationID string) ([]Pending, error)
	MarkDone(ctx context.Context, correlationID string) error
}

// Activities are the workflows' activities; the worker builds one value
// with its dependencies and registers its methods.
type Activities struct {
	Pub    Publisher
	Tokens TokenStore
	// Promoter points model aliases at checkpoints (services/ground's
	// catalog); nil on a worker that cannot promote.
	Promoter Promoter
	// Workers, when set, tells whether a live worker consumes a command's
	// queue; a command no worker serves is published all the same (a
	// worker may start later) and said so in the log, the activity's
	// heartbeat details (the Temporal UI's pending activity) and its span.
	Workers WorkerDirectory
	// PromoteWait is how long one Promote attempt waits for the grounding
	// service to learn of its checkpoint; 0: DefaultPromoteWait.
	PromoteWait time.Duration
}

// WorkerDirectory knows which live workers consume which command topics
// (internal/stack's worker registry, table workers).
type WorkerDirectory interface {
	// Serving returns the ids of the live workers that run service on
	// queue (events.DefaultQueue for the default one).
	Serving(ctx context.Context, service, queue string) ([]string, error)
}

// Promoter points an alias at a checkpoint and publishes model.promoted.
type Promoter interface {
	Promote(ctx context.Context, alias, checkpointID string) (events.ModelPromoted, error)
}

// DefaultPromoteWait is how long one attempt of the Promote activity waits
// for the grounding service to learn of the checkpoint it promotes.
const DefaultPromoteWait = 30 * time.Second

// Promote is the Pipeline's promotion activity. The grounding service
// learns of a checkpoint from services/train's facts on the bus, which may
// reach it after the pipeline's train stage has completed: a checkpoint it
// does not know yet (PendingError) is asked for again for PromoteWait,
// then failed retryably, so that the workflow's retry policy bounds the
// whole wait; any other refusal is bad input, not retried.
func (a *Activities) Promote(ctx context.Context, req PromoteRequest) (_ events.ModelPromoted, err error) {
	ctx, span := otel.Tracer("groundmesh/workflows").Start(ctx, "workflows.Promote")
	defer span.End()
	span.SetAttributes(attribute.String("alias", req.Alias), attribute.String("checkpoint_id", req.CheckpointID))
	if a.Promoter == nil {
		return events.ModelPromoted{}, temporal.NewNonRetryableApplicationError("promote: this worker has no model catalog (run it with the ground service's database)", ErrTypeBadInput, nil)
	}
	wait := cmp.Or(a.PromoteWait, DefaultPromoteWait)
	deadline := time.Now().Add(wait)
	var p events.ModelPromoted
	for {
		p, err = a.Promoter.Promote(ctx, req.Alias, req.CheckpointID)
		if err == nil || !PendingError(err) || !time.Now().Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return events.ModelPromoted{}, fmt.Errorf("promote: waiting for the grounding service to learn of checkpoint %s: %w (last: %w)", req.CheckpointID, ctx.Err(), err)
		case <-time.After(min(500*time.Millisecond, wait)):
		}
	}
	if err != nil {
		span.RecordError(err)
		if PendingError(err) {
			slog.WarnContext(ctx, "promotion waits for the grounding service to learn of the checkpoint", "alias", req.Alias, "checkpoint_id", req.CheckpointID, "waited", wait, "err", err)
			return events.ModelPromoted{}, fmt.Errorf("promote: not known to the grounding service after %v (retried): %w", wait, err)
		}
		if BadInputError(err) {
			return events.ModelPromoted{}, temporal.NewNonRetryableApplicationError("promote: "+err.Error(), ErrTypeBadInput, err)
		}
		return events.ModelPromoted{}, fmt.Errorf("promote: %w", err)
	}
	slog.InfoContext(ctx, "model promoted by the pipeline", "alias", p.Alias, "checkpoint_id", p.CheckpointID, "run_id", p.RunID)
	return p, nil
}

// PendingError reports whether err says that what it needs has not
// arrived yet (an error with a Pending() bool method returning true, as
// services/ground's do for a checkpoint whose facts it has not consumed).
func PendingError(err error) bool {
	var p interface{ Pending() bool }
	return errors.As(err, &p) && p.Pending()
}

// BadInputError reports whether err says so itself (an error with a
// BadInput() bool method returning true, as services/ground's do).
func BadInputError(err error) bool {
	var b interface{ BadInput() bool }
	return errors.As(err, &b) && b.BadInput()
}

// CommandServices are the services the Command activity drives: each
// consumes "<service>.requested" and answers "<service>.completed" or
// "<service>.failed", with "<service>.progress" on the way.
var CommandServices = []string{"ingest", "synth", "synth.describe", "train", "train.describe", "train.export", "eval"}

// Command publishes a service command and completes asynchronously.
func (a *Activities) Command(ctx context.Context, in CommandInput) (json.RawMessage, error) {
	ctx, span := otel.Tracer("groundmesh/workflows").Start(ctx, "bridge.command "+in.Service)
	defer span.End()
	if !slices.Contains(CommandServices, in.Service) {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("command: unknown service %q", in.Service), ErrTypeBadInput, nil)
	}
	if err := events.ValidQueue(in.Queue); err != nil {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("command %s: %v", in.Service, err), ErrTypeBadInput, nil)
	}
	queue := cmp.Or(in.Queue, events.DefaultQueue)
	span.SetAttributes(attribute.String("groundmesh.queue", queue))
	info := activity.GetInfo(ctx)
	// One correlation id per attempt: a late answer to an earlier attempt
	// cannot complete this one.
	corr := fmt.Sprintf("%s/%s/%d", info.WorkflowExecution.ID, info.ActivityID, info.Attempt)
	span.SetAttributes(attribute.String("groundmesh.correlation_id", corr))
	var payload map[string]any
	if err := json.Unmarshal(in.Payload, &payload); err != nil || payload == nil {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("command %s: payload is not a JSON object", in.Service), ErrTypeBadInput, err)
	}
	payload["correlation_id"] = corr
	topic := events.CommandTopic(in.Service, in.Queue)
	if a.Workers != nil {
		a.checkServed(ctx, in.Service, queue, topic)
	}
	if err := a.Tokens.Save(ctx, Pending{
		CorrelationID: corr, TaskToken: info.TaskToken, WorkflowID: info.WorkflowExecution.ID,
		RunID: info.WorkflowExecution.RunID, ActivityID: info.ActivityID, Topic: topic,
	}); err != nil {
		return nil, fmt.Errorf("save task token: %w", err)
	}
	if err := a.Pub.Publish(ctx, topic, payload, map[string]string{events.MetaCorrelationID: corr}); err != nil {
		return nil, fmt.Errorf("publish %s: %w", topic, err)
	}
	activity.GetLogger(ctx).Info("command published", "topic", topic, "queue", queue, "correlation_id", corr)
	return nil, activity.ErrResultPending
}

// checkServed says, in the log, the span and the activity's heartbeat
// details, when no live worker consumes the command's queue: the command
// then waits on the bus until one starts, or until the activity's
// heartbeat timeout fails the attempt.
func (a *Activities) checkServed(ctx context.Context, service, queue, topic string) {
	span := trace.SpanFromContext(ctx)
	ids, err := a.Workers.Serving(ctx, service, queue)
	if err != nil {
		activity.GetLogger(ctx).Warn("cannot tell which workers serve the command's queue", "topic", topic, "error", err)
		return
	}
	if len(ids) > 0 {
		span.SetAttributes(attribute.StringSlice("groundmesh.queue.workers", ids))
		return
	}
	msg := fmt.Sprintf("no live worker serves %s on queue %q (topic %s): start one with `groundmesh worker --services %s --queue %s`", service, queue, topic, service, queue)
	activity.GetLogger(ctx).Warn(msg, "topic", topic, "queue", queue, "service", service)
	span.AddEvent("no worker serves the queue", trace.WithAttributes(attribute.String("groundmesh.queue", queue)))
	activity.RecordHeartbeat(ctx, events.Progress{Service: service, Phase: "unserved", Message: msg})
}

// ActivityCompleter is the part of the Temporal client the bridge uses.
type ActivityCompleter interface {
	CompleteActivity(ctx context.Context, taskToken []byte, result any, err error) error
	RecordActivityHeartbeat(ctx context.Context, taskToken []byte, details ...any) error
	SignalWorkflow(ctx context.Context, workflowID, runID, signalName string, arg any) error
}

// Bridge turns service answers into activity heartbeats and completions.
type Bridge struct {
	client ActivityCompleter
	tokens TokenStore
	logger *slog.Logger
	// SignalEvery throttles progress signals to a workflow (default 5 s).
	signalEvery time.Duration
	now         func() time.Time

	mu         sync.Mutex
	lastSignal map[string]time.Time
}

// NewBridge builds a Bridge.
func NewBridge(c ActivityCompleter, tokens TokenStore, logger *slog.Logger) *Bridge {
	if logger == nil {
		logger = slog.Default()
	}
	return &Bridge{client: c, tokens: tokens, logger: logger, signalEvery: 5 * time.Second, now: time.Now, lastSignal: map[string]time.Time{}}
}

// HandleProgress heartbeats the activity waiting on p.CorrelationID.
func (b *Bridge) HandleProgress(ctx context.Context, p events.Progress) error {
	ctx, span := otel.Tracer("groundmesh/workflows").Start(ctx, "bridge.progress")
	defer span.End()
	waiting, err := b.tokens.Waiting(ctx, p.CorrelationID)
	if err != nil {
		return fmt.Errorf("look up %s: %w", p.CorrelationID, err)
	}
	if len(waiting) == 0 {
		return nil // not ours (or already completed)
	}
	pend := waiting[0]
	// The work of an earlier attempt is the work a later attempt of the
	// same activity waits for (its request is the same command, queued
	// behind this one on the service's consumer): it hears this
	// progress too, or it would time out while the work goes on.
	for _, w := range waiting {
		if err := b.client.RecordActivityHeartbeat(ctx, w.TaskToken, p); err != nil && !gone(err) {
			return fmt.Errorf("heartbeat %s for %s: %w", w.CorrelationID, p.CorrelationID, err)
		}
	}
	b.mu.Lock()
	last := b.lastSignal[p.CorrelationID]
	due := b.now().Sub(last) >= b.signalEvery || p.Done == p.Total
	if due {
		b.lastSignal[p.CorrelationID] = b.now()
	}
	b.mu.Unlock()
	if due {
		if err := b.client.SignalWorkflow(ctx, pend.WorkflowID, pend.RunID, ProgressSignal, p); err != nil && !gone(err) {
			b.logger.WarnContext(ctx, "progress signal failed", "workflow_id", pend.WorkflowID, "err", err)
		}
	}
	return nil
}

// HandleCompleted completes the activity with the raw answer payload.
func (b *Bridge) HandleCompleted(ctx context.Context, raw json.RawMessage) error {
	ctx, span := otel.Tracer("groundmesh/workflows").Start(ctx, "bridge.completed")
	defer span.End()
	var head struct {
		CorrelationID string `json:"correlation_id"`
		Worker        string `json:"worker"`
	}
	if err := json.Unmarshal(raw, &head); err != nil || head.CorrelationID == "" {
		return fmt.Errorf("completed event without correlation_id: %w", errors.Join(err, errMissingCorrelation))
	}
	span.SetAttributes(attribute.String("groundmesh.correlation_id", head.CorrelationID), attribute.String("groundmesh.worker", head.Worker))
	b.logger.DebugContext(ctx, "command answered", "correlation_id", head.CorrelationID, "worker", head.Worker)
	return b.finish(ctx, head.CorrelationID, raw, nil)
}

// HandleFailed fails the activity; bad input is non-retryable.
func (b *Bridge) HandleFailed(ctx context.Context, f events.Failed) error {
	ctx, span := otel.Tracer("groundmesh/workflows").Start(ctx, "bridge.failed")
	defer span.End()
	span.SetAttributes(attribute.String("groundmesh.correlation_id", f.CorrelationID), attribute.String("groundmesh.worker", f.Worker))
	typ := ErrTypeServiceFailed
	if !f.Retryable {
		typ = ErrTypeBadInput
	}
	reason := fmt.Sprintf("%s: %s", f.Service, f.Reason)
	if f.Worker != "" {
		reason += " (worker " + f.Worker + ")"
	}
	appErr := temporal.NewApplicationErrorWithOptions(reason, typ,
		temporal.ApplicationErrorOptions{NonRetryable: !f.Retryable})
	return b.finish(ctx, f.CorrelationID, nil, appErr)
}

var errMissingCorrelation = errors.New("missing correlation id")

func (b *Bridge) finish(ctx context.Context, corr string, result json.RawMessage, failure error) error {
	waiting, err := b.tokens.Waiting(ctx, corr)
	if err != nil {
		return fmt.Errorf("look up %s: %w", corr, err)
	}
	if len(waiting) == 0 {
		b.logger.DebugContext(ctx, "answer for unknown or finished command", "correlation_id", corr)
		return nil
	}
	var res any
	if failure == nil {
		res = result
	} else {
		// A later attempt's own request runs the work again: a failure
		// finishes only the attempt it answers.
		waiting = waiting[:1]
	}
	// An earlier attempt's answer is also the later attempts': the same
	// command (Temporal retries an activity with its input), done once.
	// Their own requests, answered later from what this one recorded,
	// then find nothing waiting.
	for i, w := range waiting {
		if err := b.client.CompleteActivity(ctx, w.TaskToken, res, failure); err != nil && !gone(err) {
			return fmt.Errorf("complete activity %s with the answer to %s: %w", w.CorrelationID, corr, err)
		}
		b.mu.Lock()
		delete(b.lastSignal, w.CorrelationID)
		b.mu.Unlock()
		if err := b.tokens.MarkDone(ctx, w.CorrelationID); err != nil {
			return fmt.Errorf("mark %s done: %w", w.CorrelationID, err)
		}
		if i > 0 {
			b.logger.InfoContext(ctx, "answer to an earlier attempt completes a later one", "correlation_id", corr, "attempt", w.CorrelationID)
		}
	}
	return nil
}

// gone reports errors meaning the activity no longer waits (timed out,
// cancelled, completed already): the answer is dropped, not retried.
func gone(err error) bool {
	var nf *serviceerror.NotFound
	return errors.As(err, &nf)
}
