// Package ground is the grounding service: it answers "where is X in this
// image?" from a checkpoint the pipeline trained, or from one of its
// deployment exports (services/train's exports). A request
// (events.GroundRequested: the image inline or by blob key, a referring
// expression, an optional checkpoint, export, backend and deadline) is checked against
// Limits, asked in the phrasing the model was trained on (internal/infer),
// batched with concurrent requests for the same model into one call of the
// compute plugin, and answered with the box in pixels and in the model's
// normalized form, the model version and the latency (events.GroundCompleted),
// or refused with a reason code (Error, CodeOf).
//
// The models it can serve it knows from services/train's facts on the bus
// (Project: train.completed, checkpoint.saved, model.exported), kept in
// its own tables; it reads no table of another service.
//
// Serve makes the service the consumer of ground.requested; Client is the
// caller's side of that exchange over the bus; NewHTTPHandler is the HTTP
// API (POST /v1/ground) that the gateway mounts over a Client.
package ground

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"image"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/infer"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

var tracer = otel.Tracer("groundmesh/ground")

// Config configures the service.
type Config struct {
	// Catalog finds checkpoints. Required (NewPGCatalog in production).
	Catalog Catalog
	// Backends returns the compute backend a run trained with (a plugin
	// host). Required.
	Backends func(name string) (compute.Backend, error)
	// Blob holds checkpoints, tokenizers and images named by key. Required.
	Blob blob.Store
	// Limits bound requests (defaults: Limits.WithDefaults).
	Limits Limits
	// Batch configures batching (defaults: BatchConfig.WithDefaults).
	Batch BatchConfig
	// Device is passed to the backend's Load; "" is its default.
	Device string
	// ExportBackends is the backend that serves an export of each format
	// when neither the request nor the alias names one (eval's
	// export_backend); a format missing here is served on the backend its
	// run trained with, which reads the export's file itself.
	ExportBackends map[string]string

	Logger *slog.Logger
}

// Service answers grounding requests.
type Service struct {
	cfg     Config
	batcher *batcher
	metrics *metrics
}

// New validates cfg and returns a Service. Close it to unload its models.
func New(cfg Config) (*Service, error) {
	switch {
	case cfg.Catalog == nil:
		return nil, errors.New("ground: Catalog is required")
	case cfg.Backends == nil:
		return nil, errors.New("ground: Backends is required")
	case cfg.Blob == nil:
		return nil, errors.New("ground: Blob is required")
	}
	cfg.Limits = cfg.Limits.WithDefaults()
	if err := cfg.Limits.Validate(); err != nil {
		return nil, err
	}
	cfg.Batch = cfg.Batch.WithDefaults()
	if err := cfg.Batch.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg}
	s.metrics = newMetrics(func() float64 { return float64(s.batcher.queued()) })
	s.batcher = newBatcher(cfg.Batch, s.open, infer.Decoding{}, cfg.Logger)
	s.batcher.waited = func(d time.Duration) { s.metrics.queueWait.Observe(d.Seconds()) }
	s.batcher.observe = func(n int) {
		s.metrics.calls.Inc()
		s.metrics.batchSize.Observe(float64(n))
	}
	return s, nil
}

// Limits returns the limits in force (defaults filled).
func (s *Service) Limits() Limits { return s.cfg.Limits }

// Close unloads the models; requests still queued fail.
func (s *Service) Close() { s.batcher.close() }

// GenerateCalls is how many plugin Generate calls the service has made
// (each answers a whole batch).
func (s *Service) GenerateCalls() int64 { return s.batcher.calls.Load() }

// CrashRetries is how many batches were asked again because their plugin
// crashed during the call.
func (s *Service) CrashRetries() int64 { return s.batcher.crashRetries.Load() }

// Model returns the checkpoint a request without checkpoint_id is served
// by; an *Error with CodeNoModel when none is trained.
func (s *Service) Model(ctx context.Context) (ModelRef, error) {
	return s.cfg.Catalog.Latest(ctx)
}

// Checkpoint returns the checkpoint id names as the service knows it; an
// *Error with CodeModelNotFound when it does not (yet: Error.Pending).
func (s *Service) Checkpoint(ctx context.Context, id string) (ModelRef, error) {
	return s.cfg.Catalog.Checkpoint(ctx, id)
}

var _ Promoter = (*Service)(nil)

// Promote points alias at a model version: a checkpoint id, or
// "<checkpoint>@<format>-<dtype>" for its export (ParseModel), served on
// its default backend. See PromoteModel.
func (s *Service) Promote(ctx context.Context, alias, model string) (events.ModelPromoted, error) {
	m, err := ParseModel(model)
	if err != nil {
		return events.ModelPromoted{}, err
	}
	return s.PromoteModel(ctx, alias, m)
}

// PromoteModel points alias at a checkpoint, or at its export (which must
// exist), on m.Backend ("" for the default); the Catalog must be a
// Promoter, as PGCatalog is. Requests that name no checkpoint go to the
// new model from the next one on; those already queued finish on the old
// one, which unloads once idle: nothing fails during the swap.
func (s *Service) PromoteModel(ctx context.Context, alias string, m ModelSpec) (_ events.ModelPromoted, err error) {
	ctx, span := tracer.Start(ctx, "ground.Promote")
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	p, ok := s.cfg.Catalog.(Promoter)
	if !ok {
		return events.ModelPromoted{}, errors.New("ground: this catalog cannot promote")
	}
	if alias == "" {
		alias = DefaultAlias
	}
	if err := checkExportForm(m); err != nil {
		return events.ModelPromoted{}, err
	}
	res, err := p.PromoteModel(ctx, alias, m)
	if err != nil {
		return events.ModelPromoted{}, err
	}
	s.cfg.Logger.InfoContext(ctx, "model promoted", "alias", alias, "model_version", res.ModelVersion, "checkpoint_id", res.CheckpointID,
		"format", res.Format, "dtype", res.Dtype, "backend", res.Backend, "run_id", res.RunID)
	return res, nil
}

// Ground answers one request.
func (s *Service) Ground(ctx context.Context, req events.GroundRequested) (_ events.GroundCompleted, err error) {
	start := time.Now()
	ctx, span := tracer.Start(ctx, "ground.Ground")
	defer func() {
		code := "ok"
		if err != nil {
			code = CodeOf(err)
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
			span.SetAttributes(attribute.String("ground.code", code))
		}
		s.metrics.requests.WithLabelValues(code).Inc()
		s.metrics.latency.Observe(time.Since(start).Seconds())
		span.End()
	}()
	span.SetAttributes(attribute.String("correlation_id", req.CorrelationID))
	if err := s.cfg.Limits.CheckRequest(req); err != nil {
		return events.GroundCompleted{}, err
	}
	if !req.Deadline.IsZero() {
		if time.Until(req.Deadline) <= 0 {
			return events.GroundCompleted{}, newError(CodeDeadlineExceeded, "deadline %s passed before the request was taken up", req.Deadline.UTC().Format(time.RFC3339Nano))
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	ref, err := s.resolve(ctx, req)
	if err != nil {
		return events.GroundCompleted{}, err
	}
	span.SetAttributes(attribute.String("checkpoint_id", ref.CheckpointID), attribute.String("model_version", ref.Version()),
		attribute.String("compute_backend", ref.ServeBackend))
	data := req.Image
	if req.ImageKey != "" {
		if data, err = s.readBlob(req.ImageKey); err != nil {
			return events.GroundCompleted{}, err
		}
	}
	img, _, err := infer.DecodeImage(data, s.cfg.Limits.image())
	if err != nil {
		return events.GroundCompleted{}, imageError(err)
	}
	text, phrase := req.Prompt, req.Expression
	if phrase != "" {
		if text, err = infer.RECPrompt(phrase); err != nil {
			return events.GroundCompleted{}, &Error{Code: CodeBadExpression, Msg: err.Error(), Err: err}
		}
		phrase, _ = infer.CleanExpression(phrase)
	} else {
		if !strings.Contains(text, "<image>") {
			text = infer.ImageTag + text
		}
		phrase = strings.TrimSpace(strings.ReplaceAll(text, "<image>", ""))
	}
	gen, err := s.batcher.submit(ctx, ref, model.Prompt{Text: text, Images: []image.Image{img}}, req.Attention)
	if err != nil {
		if ctx.Err() != nil {
			return events.GroundCompleted{}, &Error{Code: CodeDeadlineExceeded, Msg: "not answered before the deadline: " + ctx.Err().Error(), Err: ctx.Err()}
		}
		return events.GroundCompleted{}, err
	}
	b := img.Bounds()
	ans, err := infer.ReadBox(gen, b.Dx(), b.Dy())
	if err != nil {
		// Under the box grammar this cannot happen; say so if it does.
		return events.GroundCompleted{}, newError(CodeInternal, "the model's answer %q holds no box: %w", gen.Text, err)
	}
	px := [4]float64{ans.Pixel.X1, ans.Pixel.Y1, ans.Pixel.X2, ans.Pixel.Y2}
	out := events.GroundCompleted{
		CorrelationID: req.CorrelationID,
		Text:          ans.Text,
		Box:           px[:],
		Boxes:         []events.GroundBox{{Pixel: px, Norm: ans.Norm, Phrase: phrase, Score: headScore(gen)}},
		ModelVersion:  ref.Version(), CheckpointID: ref.CheckpointID, Backend: ref.ServeBackend,
		RunID: ref.RunID, Stage: ref.Stage, Step: ref.Step,
		Width: b.Dx(), Height: b.Dy(),
		Attention: infer.MeanAttention(gen.Attention),
	}
	if x := ref.Export; x != nil {
		out.Format, out.Dtype = x.Format, x.Dtype
	}
	out.LatencyMS = math.Round(float64(time.Since(start).Microseconds())) / 1000
	return out, nil
}

// resolve finds what serves req: the checkpoint it names (or the
// default model), the export it names of that checkpoint, and the backend
// (ServeBackend set: the request's, else the alias's, else the default).
func (s *Service) resolve(ctx context.Context, req events.GroundRequested) (ModelRef, error) {
	m, err := requestModel(req)
	if err != nil {
		return ModelRef{}, err
	}
	if err := checkExportForm(m); err != nil {
		return ModelRef{}, err
	}
	var ref ModelRef
	switch {
	case m.CheckpointID != "":
		ref, err = s.cfg.Catalog.Checkpoint(ctx, m.CheckpointID)
	case m.Format != "":
		return ModelRef{}, newError(CodeBadRequest, "export %s-%s names no checkpoint: give checkpoint_id (or promote the export and name neither)", m.Format, m.Dtype)
	default:
		ref, err = s.cfg.Catalog.Latest(ctx)
	}
	if err != nil {
		return ModelRef{}, err
	}
	if m.Format != "" {
		x, err := s.cfg.Catalog.Export(ctx, ref.CheckpointID, m.Format, m.Dtype)
		if err != nil {
			return ModelRef{}, err
		}
		ref.Export = &x
	}
	if m.Backend != "" {
		ref.ServeBackend = m.Backend
	}
	if ref.ServeBackend == "" {
		ref.ServeBackend = s.defaultBackend(ref)
	}
	return ref, nil
}

// defaultBackend is the backend that serves ref when nobody named one:
// the run's for a checkpoint; for an export, the format's ExportBackends
// entry, else the run's.
func (s *Service) defaultBackend(ref ModelRef) string {
	if ref.Export != nil {
		if b := s.cfg.ExportBackends[ref.Export.Format]; b != "" {
			return b
		}
	}
	return ref.Backend
}

// readBlob reads an image by blob key, refusing one over the byte limit
// without reading it whole.
func (s *Service) readBlob(key string) ([]byte, error) {
	f, err := s.cfg.Blob.Open(key)
	if errors.Is(err, os.ErrNotExist) {
		return nil, newError(CodeImageNotFound, "no image under blob key %q", key)
	}
	if err != nil {
		return nil, &Error{Code: CodeImageNotFound, Msg: fmt.Sprintf("image blob %q: %v", key, err), Err: err}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, int64(s.cfg.Limits.MaxImageBytes)+1))
	if err != nil {
		return nil, fmt.Errorf("read image blob %q: %w", key, err)
	}
	return data, nil
}

// open loads a checkpoint, or its export, on the backend resolve chose.
func (s *Service) open(ctx context.Context, ref ModelRef) (_ *infer.Session, err error) {
	ctx, span := tracer.Start(ctx, "ground.open", trace.WithAttributes(attribute.String("model_version", ref.Version()),
		attribute.String("compute_backend", ref.ServeBackend)))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	name := cmp.Or(ref.ServeBackend, ref.Backend)
	b, err := s.cfg.Backends(name)
	if err != nil {
		return nil, &Error{Code: CodeBackendUnavailable, Msg: fmt.Sprintf("backend %q for %s: %v", name, ref.Version(), err), Err: err}
	}
	tp, err := s.cfg.Blob.LocalPath(ref.TokenizerKey)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: tokenizer: %w", ref.CheckpointID, err)
	}
	req := infer.OpenRequest{ModelConfig: ref.ModelConfig, TokenizerPath: tp, Device: s.cfg.Device}
	if x := ref.Export; x != nil {
		if req.CheckpointPath, err = s.exportPath(ref); err != nil {
			return nil, err
		}
		// A backend that declares the export's dtype holds the weights
		// in it; another reads the file's weights as float32 (LoadRequest's
		// default).
		desc, err := b.Describe(ctx)
		if err != nil {
			return nil, &Error{Code: CodeBackendUnavailable, Msg: fmt.Sprintf("backend %q for %s: describe: %v", name, ref.Version(), err), Err: err}
		}
		if slices.Contains(desc.Dtypes, x.Dtype) {
			req.Dtype = x.Dtype
		}
	} else if req.CheckpointPath, err = s.cfg.Blob.LocalPath(ref.BlobKey); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", ref.CheckpointID, err)
	}
	// Every plugin call of the session gets its span ("compute.Generate").
	b = compute.WithTracing(b, name)
	sess, err := infer.Open(ctx, b, req)
	if err != nil {
		return nil, &Error{Code: CodeBackendUnavailable, Msg: fmt.Sprintf("load %s on %s: %v", ref.Version(), name, err), Err: err}
	}
	s.cfg.Logger.InfoContext(ctx, "model loaded", "model_version", ref.Version(), "checkpoint_id", ref.CheckpointID, "backend", name,
		"dtype", cmp.Or(req.Dtype, compute.DtypeFloat32), "run_id", ref.RunID, "stage", ref.Stage, "step", ref.Step)
	return sess, nil
}

// exportPath is the local path of ref's export file, checked against the
// sha256 services/train recorded: a file that is gone or changed is
// export_not_found, with how to write it again.
func (s *Service) exportPath(ref ModelRef) (string, error) {
	x, m := ref.Export, ref.Spec()
	p, err := s.cfg.Blob.LocalPath(x.BlobKey)
	if errors.Is(err, os.ErrNotExist) {
		return "", errExportNotFound(m, fmt.Sprintf(" (its file %s is gone)", x.BlobKey))
	}
	if err != nil {
		return "", fmt.Errorf("export %s: %w", ref.Version(), err)
	}
	sum, _, err := compute.FileSHA256(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", errExportNotFound(m, fmt.Sprintf(" (its file %s is gone)", x.BlobKey))
	case err != nil:
		return "", fmt.Errorf("export %s: %w", ref.Version(), err)
	case sum != x.SHA256:
		return "", errExportNotFound(m, fmt.Sprintf(" (its file %s hashes to %s, recorded %s)", x.BlobKey, sum, x.SHA256))
	}
	return p, nil
}

// headScore is the grounding head's probability for the cell whose box
// the answer gives, where the model has a head; nil otherwise (the text
// path has no score to report).
func headScore(g model.Generation) *float64 {
	if g.Head == nil {
		return nil
	}
	v := math.Round(float64(g.Head.Score)*1e4) / 1e4
	return &v
}
