// Package synth is groundmesh's multi-scale alignment data pipeline: from an
// ingested dataset it synthesizes the training and evaluation records of the
// three stages (object and relation perception; multi-scale local alignment
// between text, coordinates and crops in all six directions; detailed global
// alignment with dense descriptions, conversations and POPE probes), as
// sharded gzip JSONL of model.Record plus the PNG crops they read.
//
// Build is the pure core (dataset in, blobs and manifest out; no database,
// no clock): generators draw every sample from a seed derived from the set
// seed, the image and the task, workers generate images in parallel and a
// single writer emits them in image order, so the same inputs give
// byte-identical shards. Service wraps it as the synth.requested use case:
// it loads the dataset, reuses a set built before from the same inputs, and
// records the set and its lineage in Postgres.
//
// Quality controls run on every record: duplicates (same images, prompt and
// answer) are redrawn then dropped, answers that leak into the prompt and
// boxes outside the image are dropped, and every image a record reads
// (including pick-task candidates) comes from the record's own split. The
// manifest counts what each control removed.
package synth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/events"
)

// ErrBadInput wraps every error that retrying cannot fix (malformed
// request, unknown stage, bad rewriter URL): the workflow must not retry.
var ErrBadInput = errors.New("synth: bad input")

// DatasetLoader returns a validated dataset by id, and the root directory
// of its files (services/ingest's Service implements it).
type DatasetLoader interface {
	Load(ctx context.Context, datasetID string) (*dataset.Dataset, error)
	Root(ctx context.Context, datasetID string) (string, error)
}

// Config configures the service.
type Config struct {
	// DataDir is the service's local data directory; the rewriter's cache
	// lives under <DataDir>/synth/rewrite-cache. Required.
	DataDir string
	// Blob stores shards, crops and manifests. Required.
	Blob blob.Store
	// Logger (default: discard).
	Logger *slog.Logger
	// Workers is the number of generator goroutines (default GOMAXPROCS).
	Workers int
	// SetPrefix is the blob key prefix of sets: a set lives under
	// "<SetPrefix>/<set id>" (default "synth/sets").
	SetPrefix string
	// CropPrefix is the blob key prefix of crops, shared by all sets so that
	// identical crops are stored once (default "synth/crops").
	CropPrefix string
	// RewriteModel is the model name sent to a rewrite endpoint (default
	// "default").
	RewriteModel string
	// RewriteRate limits rewrite requests per second (default 2).
	RewriteRate float64
}

func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("new synth service: empty data dir")
	}
	if c.Blob == nil {
		return errors.New("new synth service: nil blob store")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Workers <= 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.SetPrefix == "" {
		c.SetPrefix = "synth/sets"
	}
	if c.CropPrefix == "" {
		c.CropPrefix = "synth/crops"
	}
	if c.RewriteRate < 0 {
		return fmt.Errorf("new synth service: rewrite rate %v: must not be negative", c.RewriteRate)
	}
	return nil
}

// Service is the synth use case.
type Service struct {
	cfg     Config
	repo    repo
	loader  DatasetLoader
	log     *slog.Logger
	metrics *synthMetrics
}

// New validates cfg and returns the service.
func New(cfg Config, pool *pgxpool.Pool, loader DatasetLoader) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if pool == nil {
		return nil, errors.New("new synth service: nil pool")
	}
	if loader == nil {
		return nil, errors.New("new synth service: nil dataset loader")
	}
	m, err := newSynthMetrics()
	if err != nil {
		return nil, fmt.Errorf("new synth service: metrics: %w", err)
	}
	return &Service{cfg: cfg, repo: repo{pool: pool}, loader: loader, log: cfg.Logger, metrics: m}, nil
}

// Synthesize builds the set req asks for, or returns the set already built
// from the same dataset, seed and parameters (Reused = true). progress (may
// be nil) receives records written and the target.
func (s *Service) Synthesize(ctx context.Context, req events.SynthRequested, progress func(done, total int64, msg string)) (res events.SynthCompleted, err error) {
	ctx, span := tracer.Start(ctx, "synth.Synthesize", trace.WithAttributes(
		attribute.String("synth.dataset_id", req.DatasetID), attribute.Int64("synth.seed", req.Seed),
		attribute.Int("synth.samples", req.Samples), attribute.String("correlation_id", req.CorrelationID)))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	if progress == nil {
		progress = func(int64, int64, string) {}
	}
	log := s.log.With("correlation_id", req.CorrelationID, "dataset_id", req.DatasetID)

	opts, params, paramsHash, err := s.options(req, log)
	if err != nil {
		return events.SynthCompleted{}, err
	}
	row, found, err := s.repo.find(ctx, req.DatasetID, paramsHash)
	if err != nil {
		return events.SynthCompleted{}, err
	}
	if found && row.Status == "ready" {
		if m, err := OpenManifest(s.cfg.Blob, row.ManifestKey); err == nil && m.ContentHash == row.ContentHash {
			root, err := s.loader.Root(ctx, req.DatasetID)
			if err != nil {
				return events.SynthCompleted{}, fmt.Errorf("synth set %s: the root of dataset %s: %w", row.ID, req.DatasetID, err)
			}
			log.Info("synth set reused", "synth_set_id", row.ID, "content_hash", row.ContentHash)
			span.SetAttributes(attribute.Bool("synth.reused", true))
			progress(m.Total, m.Total, "reused")
			return events.SynthCompleted{
				CorrelationID: req.CorrelationID, SynthSetID: row.ID, DatasetID: req.DatasetID,
				ManifestKey: row.ManifestKey, ContentHash: row.ContentHash, Counts: row.Counts, Reused: true,
				DatasetRoot: root,
			}, nil
		}
		log.Warn("synth set recorded but its manifest is missing or changed: rebuilding", "synth_set_id", row.ID)
	}

	ds, err := s.loader.Load(ctx, req.DatasetID)
	if err != nil {
		return events.SynthCompleted{}, fmt.Errorf("load dataset %s: %w", req.DatasetID, err)
	}
	id, err := s.repo.begin(ctx, req.DatasetID, req.Seed, params, paramsHash, req.CorrelationID)
	if err != nil {
		return events.SynthCompleted{}, err
	}
	span.SetAttributes(attribute.String("synth.set_id", id))
	log.Info("synth started", "synth_set_id", id, "samples", opts.Samples, "stages", opts.Stages)
	progress(0, int64(opts.Samples), "synthesizing")
	started := time.Now()
	m, err := Build(ctx, ds, opts, s.cfg.Blob, s.cfg.SetPrefix+"/"+id, func(done, total int64) {
		progress(done, total, "synthesizing")
	})
	if err != nil {
		if ferr := s.repo.fail(context.WithoutCancel(ctx), id, err); ferr != nil {
			log.Error("record synth failure", "err", ferr)
		}
		return events.SynthCompleted{}, err
	}
	if err := s.repo.complete(ctx, id, req.DatasetID, m); err != nil {
		return events.SynthCompleted{}, err
	}
	s.metrics.built(ctx, m.Total, time.Since(started))
	log.Info("synth completed", "synth_set_id", id, "records", m.Total, "content_hash", m.ContentHash, "manifest", m.Key)
	return events.SynthCompleted{
		CorrelationID: req.CorrelationID, SynthSetID: id, DatasetID: req.DatasetID,
		ManifestKey: m.Key, ContentHash: m.ContentHash, Counts: m.Counts.Flat(m.Total),
		DatasetRoot: ds.Root,
	}, nil
}

// Describe answers a ready synth set's facts (the answer Synthesize gave
// when it built the set, with the dataset's root) without building: the
// Train workflow asks it (synth.describe) when a pipeline starts at train
// with only the set's id. A set that does not exist or is not ready wraps
// ErrBadInput.
func (s *Service) Describe(ctx context.Context, req events.SynthDescribeRequested) (res events.SynthCompleted, err error) {
	ctx, span := tracer.Start(ctx, "synth.Describe", trace.WithAttributes(
		attribute.String("synth.set_id", req.SynthSetID), attribute.String("correlation_id", req.CorrelationID)))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	if _, err := uuid.Parse(req.SynthSetID); err != nil {
		return res, fmt.Errorf("%w: describe synth set: id %q is not a uuid", ErrBadInput, req.SynthSetID)
	}
	row, datasetID, found, err := s.repo.get(ctx, req.SynthSetID)
	if err != nil {
		return res, err
	}
	if !found {
		return res, fmt.Errorf("%w: describe synth set %s: not found", ErrBadInput, req.SynthSetID)
	}
	if row.Status != "ready" {
		return res, fmt.Errorf("%w: describe synth set %s: it is %s, not ready", ErrBadInput, req.SynthSetID, row.Status)
	}
	root, err := s.loader.Root(ctx, datasetID)
	if err != nil {
		return res, fmt.Errorf("describe synth set %s: the root of dataset %s: %w", req.SynthSetID, datasetID, err)
	}
	return events.SynthCompleted{
		CorrelationID: req.CorrelationID, SynthSetID: row.ID, DatasetID: datasetID,
		ManifestKey: row.ManifestKey, ContentHash: row.ContentHash, Counts: row.Counts, Reused: true,
		DatasetRoot: root,
	}, nil
}

// options turns a request into normalized build options and their identity.
func (s *Service) options(req events.SynthRequested, log *slog.Logger) (BuildOptions, []byte, string, error) {
	if req.DatasetID == "" {
		return BuildOptions{}, nil, "", fmt.Errorf("%w: empty dataset id", ErrBadInput)
	}
	if _, err := uuid.Parse(req.DatasetID); err != nil {
		return BuildOptions{}, nil, "", fmt.Errorf("%w: dataset id %q: %v", ErrBadInput, req.DatasetID, err)
	}
	opts := BuildOptions{
		DatasetID: req.DatasetID, Seed: req.Seed, Samples: req.Samples, Stages: req.Stages,
		TaskWeights: req.TaskWeights, Mirror: req.Mirror,
		Workers: s.cfg.Workers, Logger: log, CropPrefix: s.cfg.CropPrefix,
	}
	if req.RewriteURL != "" {
		rw, err := NewRewriter(RewriterConfig{
			URL: req.RewriteURL, Model: s.cfg.RewriteModel, RatePerSecond: s.cfg.RewriteRate,
			CacheDir: filepath.Join(s.cfg.DataDir, "synth", "rewrite-cache"), Logger: log,
		})
		if err != nil {
			return BuildOptions{}, nil, "", fmt.Errorf("%w: %v", ErrBadInput, err)
		}
		opts.Rewriter = rw
	}
	if err := opts.normalize(); err != nil {
		return BuildOptions{}, nil, "", fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	params, err := json.Marshal(opts)
	if err != nil {
		return BuildOptions{}, nil, "", fmt.Errorf("encode synth params: %w", err)
	}
	sum := sha256.Sum256(params)
	return opts, params, hex.EncodeToString(sum[:]), nil
}
