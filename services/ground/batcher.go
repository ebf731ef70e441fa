package ground

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// BatchConfig configures how concurrent requests for one model share
// plugin calls.
type BatchConfig struct {
	// MaxBatch is the most requests one Generate call answers; default 16.
	MaxBatch int
	// MaxDelay is how long a batch may wait for more requests once the
	// first is taken; default 2ms. It waits only until it is as large as
	// the model's previous batch (at first, MaxBatch): a lone caller is not
	// kept waiting for company that never comes, while concurrent callers
	// keep sharing calls. Requests that arrive while a call runs join the
	// next batch without waiting.
	MaxDelay time.Duration
	// MaxQueue is how many requests may wait per model; one more is
	// refused with CodeOverloaded; default 256.
	MaxQueue int
	// MaxModels is how many checkpoints stay loaded; a request for another
	// retires the least recently used one, which answers the requests it
	// holds and unloads; default 2 (a swap keeps the old model warm).
	MaxModels int
	// IdleUnload unloads a model that had no request for this long;
	// default 10 minutes.
	IdleUnload time.Duration
}

// WithDefaults fills zero fields.
func (c BatchConfig) WithDefaults() BatchConfig {
	if c.MaxBatch == 0 {
		c.MaxBatch = 16
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = 2 * time.Millisecond
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = 256
	}
	if c.MaxModels == 0 {
		c.MaxModels = 2
	}
	if c.IdleUnload == 0 {
		c.IdleUnload = 10 * time.Minute
	}
	return c
}

// Validate refuses nonsense.
func (c BatchConfig) Validate() error {
	if c.MaxBatch < 1 || c.MaxQueue < 1 || c.MaxModels < 1 || c.MaxDelay < 0 || c.IdleUnload <= 0 {
		return fmt.Errorf("ground batching: max batch %d, max queue %d and max models %d must be at least 1, max delay %s not negative, idle unload %s positive",
			c.MaxBatch, c.MaxQueue, c.MaxModels, c.MaxDelay, c.IdleUnload)
	}
	return nil
}

// opener loads a checkpoint for serving.
type opener func(ctx context.Context, ref ModelRef) (*infer.Session, error)

type job struct {
	ctx       context.Context
	prompt    model.Prompt
	attention bool
	queued    time.Time
	done      chan jobResult // buffered: the worker never blocks on it
}

type jobResult struct {
	gen model.Generation
	err error
}

// batcher runs one worker per loaded model. A worker takes a request, the
// others already waiting (up to MaxBatch, waiting MaxDelay at most for
// more), answers them with one Generate call, and repeats; requests that
// arrive during a call form the next batch.
type batcher struct {
	cfg      BatchConfig
	open     opener
	decoding infer.Decoding
	logger   *slog.Logger
	// calls counts Generate calls, for tests and the batching benchmark.
	calls atomic.Int64
	// crashRetries counts batches asked again after their plugin crashed.
	crashRetries atomic.Int64
	// observe, when set, is told the size of every Generate call.
	observe func(n int)
	// waited, when set, is told how long each request of a batch waited
	// in its queue before the batch started.
	waited func(d time.Duration)

	mu      sync.Mutex
	workers map[string]*worker
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

type worker struct {
	ref   ModelRef
	queue chan *job
	// retire, closed, asks the worker to unload and exit once its queue is
	// empty; it is no longer in the map then, so nothing more is queued.
	retire chan struct{}
	// last is when a request was last queued (under batcher.mu).
	last time.Time
	// lastSize is the size of the previous batch (the worker's own).
	lastSize int
}

func newBatcher(cfg BatchConfig, open opener, d infer.Decoding, logger *slog.Logger) *batcher {
	return &batcher{cfg: cfg, open: open, decoding: d, logger: logger, workers: map[string]*worker{}, stop: make(chan struct{})}
}

var errShutdown = errors.New("ground is shutting down")

// submit queues a prompt for ref's model and waits for its answer or ctx.
func (b *batcher) submit(ctx context.Context, ref ModelRef, p model.Prompt, attention bool) (model.Generation, error) {
	j := &job{ctx: ctx, prompt: p, attention: attention, queued: time.Now(), done: make(chan jobResult, 1)}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return model.Generation{}, &Error{Code: CodeBackendUnavailable, Msg: errShutdown.Error(), Err: errShutdown}
	}
	w, ok := b.workers[ref.key()]
	if !ok {
		if len(b.workers) >= b.cfg.MaxModels {
			b.retireLRU()
		}
		w = &worker{ref: ref, queue: make(chan *job, b.cfg.MaxQueue), retire: make(chan struct{}), lastSize: b.cfg.MaxBatch}
		b.workers[ref.key()] = w
		b.wg.Add(1)
		go b.run(w)
	}
	w.last = time.Now()
	// Enqueued under the lock, so that an idle worker that checks its
	// queue under the same lock never leaves a job behind.
	select {
	case w.queue <- j:
	default:
		b.mu.Unlock()
		return model.Generation{}, newError(CodeOverloaded, "%d requests already wait for model %s (the queue's limit); retry later", b.cfg.MaxQueue, ref.Version())
	}
	b.mu.Unlock()
	select {
	case r := <-j.done:
		return r.gen, r.err
	case <-ctx.Done():
		return model.Generation{}, ctx.Err()
	}
}

// retireLRU retires the least recently used worker: it answers what it
// holds and unloads, while requests for its checkpoint go to a new worker.
// A model swap thus fails nothing; for its length one more model is
// loaded than MaxModels. Called with b.mu held.
func (b *batcher) retireLRU() {
	var lru *worker
	for _, w := range b.workers {
		if lru == nil || w.last.Before(lru.last) {
			lru = w
		}
	}
	if lru != nil {
		delete(b.workers, lru.ref.key())
		close(lru.retire)
	}
}

func (b *batcher) run(w *worker) {
	defer b.wg.Done()
	var sess *infer.Session
	defer func() {
		if sess != nil {
			if err := sess.Close(context.Background()); err != nil {
				b.logger.Warn("unload model", "model_version", w.ref.Version(), "err", err)
			}
		}
	}()
	idle := time.NewTimer(b.cfg.IdleUnload)
	defer idle.Stop()
	for {
		var first *job
		select {
		case first = <-w.queue:
		case <-w.retire:
			// Out of the map before retire closed: nothing more is queued;
			// what was queued is answered first.
			select {
			case first = <-w.queue:
			default:
				return
			}
		case <-idle.C:
			b.mu.Lock()
			if len(w.queue) == 0 {
				if b.workers[w.ref.key()] == w { // not retired and replaced
					delete(b.workers, w.ref.key())
				}
				b.mu.Unlock()
				return
			}
			b.mu.Unlock()
			idle.Reset(b.cfg.IdleUnload)
			continue
		case <-b.stop:
			for {
				select {
				case j := <-w.queue:
					j.done <- jobResult{err: &Error{Code: CodeBackendUnavailable, Msg: errShutdown.Error(), Err: errShutdown}}
				default:
					return
				}
			}
		}
		batch := b.collect(w, first)
		w.lastSize = len(batch)
		sess = b.exec(w, sess, batch)
		idle.Reset(b.cfg.IdleUnload)
	}
}

// collect takes the jobs waiting behind first, then waits up to MaxDelay
// for more while the batch is smaller than the previous one.
func (b *batcher) collect(w *worker, first *job) []*job {
	batch := []*job{first}
	for len(batch) < b.cfg.MaxBatch {
		select {
		case j := <-w.queue:
			batch = append(batch, j)
			continue
		default:
		}
		break
	}
	want := min(b.cfg.MaxBatch, max(w.lastSize, 1))
	if len(batch) >= want || b.cfg.MaxDelay <= 0 {
		return batch
	}
	timer := time.NewTimer(b.cfg.MaxDelay)
	defer timer.Stop()
	for len(batch) < want {
		select {
		case j := <-w.queue:
			batch = append(batch, j)
		case <-timer.C:
			return batch
		}
	}
	return batch
}

// exec answers a batch with the worker's session (loaded on first use, and
// again after a failed call: the plugin may have restarted without it) and
// returns the session to keep.
func (b *batcher) exec(w *worker, sess *infer.Session, batch []*job) *infer.Session {
	live := batch[:0]
	for _, j := range batch {
		if err := j.ctx.Err(); err != nil {
			j.done <- jobResult{err: err} // the caller has gone: no work for it
			continue
		}
		live = append(live, j)
	}
	if len(live) == 0 {
		return sess
	}
	if b.waited != nil {
		now := time.Now()
		for _, j := range live {
			b.waited(now.Sub(j.queued))
		}
	}
	// The batch's span continues the first request's trace and links the
	// others; the call is cancelled once every caller has gone.
	links := make([]trace.Link, 0, len(live))
	for _, j := range live {
		links = append(links, trace.Link{SpanContext: trace.SpanContextFromContext(j.ctx)})
	}
	ctx, cancel := context.WithCancel(trace.ContextWithSpanContext(context.Background(), trace.SpanContextFromContext(live[0].ctx)))
	defer cancel()
	remaining := int64(len(live))
	for _, j := range live {
		stop := context.AfterFunc(j.ctx, func() {
			if atomic.AddInt64(&remaining, -1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	ctx, span := tracer.Start(ctx, "ground.batch", trace.WithLinks(links...), trace.WithAttributes(
		attribute.Int("batch.size", len(live)), attribute.String("model_version", w.ref.Version())))
	defer span.End()
	fail := func(err error) {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		for _, j := range live {
			j.done <- jobResult{err: err}
		}
	}
	if sess == nil {
		var err error
		if sess, err = b.open(ctx, w.ref); err != nil {
			fail(err)
			return nil
		}
	}
	// At most two calls: with and without attention maps.
	for _, att := range []bool{false, true} {
		var jobs []*job
		for _, j := range live {
			if j.attention == att {
				jobs = append(jobs, j)
			}
		}
		if len(jobs) == 0 {
			continue
		}
		d := b.decoding
		d.Attention = att && sess.CanAttention
		if err := b.generate(ctx, &sess, w.ref, jobs, d.Options(infer.Ground, 0)); err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
			b.logger.WarnContext(ctx, "generate failed; the model reloads on the next request", "model_version", w.ref.Version(), "err", err)
			if cerr := sess.Close(context.WithoutCancel(ctx)); cerr != nil {
				b.logger.WarnContext(ctx, "unload model", "model_version", w.ref.Version(), "err", cerr)
			}
			return nil
		}
	}
	return sess
}

// generate answers jobs with one Generate call. A prompt too long for the
// model fails alone: the batch is then answered one prompt at a time. A
// plugin that crashed during the call (its host starts a new process,
// which holds no model) is asked once more, on the model loaded again into
// *sess: inference has no effects, so its callers get a slower answer
// rather than an error. Any other failure fails every job not yet answered
// and is returned (the session is suspect).
func (b *batcher) generate(ctx context.Context, sess **infer.Session, ref ModelRef, jobs []*job, opts model.GenerateOptions) error {
	prompts := make([]model.Prompt, len(jobs))
	for i, j := range jobs {
		prompts[i] = j.prompt
	}
	call := func() ([]model.Generation, error) {
		b.calls.Add(1)
		if b.observe != nil {
			b.observe(len(prompts))
		}
		gens, err := (*sess).Generator.Generate(ctx, prompts, opts)
		if err == nil && len(gens) != len(jobs) {
			err = fmt.Errorf("generate: %d answers for %d prompts", len(gens), len(jobs))
		}
		return gens, err
	}
	gens, err := call()
	if errors.Is(err, compute.ErrPluginCrashed) && ctx.Err() == nil {
		b.logger.WarnContext(ctx, "the plugin crashed during a batch; loading the model again and asking once more", "model_version", ref.Version(), "batch", len(jobs), "err", err)
		b.crashRetries.Add(1)
		_ = (*sess).Close(context.WithoutCancel(ctx)) // its process is gone
		fresh, oerr := b.open(ctx, ref)
		if oerr != nil {
			err = errors.Join(err, oerr)
		} else {
			*sess = fresh
			gens, err = call()
		}
	}
	if errors.Is(err, model.ErrTooLong) {
		if len(jobs) == 1 {
			jobs[0].done <- jobResult{err: &Error{Code: CodeExpressionTooLong, Msg: fmt.Sprintf("the question does not fit the model's context of %d tokens with its image: %v", (*sess).Config.MaxSeq, err), Err: err}}
			return nil
		}
		for i, j := range jobs {
			if err := b.generate(ctx, sess, ref, []*job{j}, opts); err != nil {
				for _, rest := range jobs[i+1:] {
					rest.done <- jobResult{err: err}
				}
				return err
			}
		}
		return nil
	}
	if err != nil {
		code := CodeBackendUnavailable
		if ctx.Err() != nil {
			code = CodeDeadlineExceeded
		}
		e := &Error{Code: code, Msg: "generate: " + err.Error(), Err: err}
		for _, j := range jobs {
			j.done <- jobResult{err: e}
		}
		return e
	}
	for i, j := range jobs {
		j.done <- jobResult{gen: gens[i]}
	}
	return nil
}

// queued is how many requests wait, over every worker.
func (b *batcher) queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, w := range b.workers {
		n += len(w.queue)
	}
	return n
}

// close stops the workers; queued requests fail, and loaded models unload.
func (b *batcher) close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	close(b.stop)
	b.mu.Unlock()
	b.wg.Wait()
}
