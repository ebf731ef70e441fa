// Package ingest turns annotated image collections into datasets the rest of
// groundmesh trusts: it reads COCO, RefCOCO/+/g, Visual Genome, Flickr30k
// Entities, ODVG, POPE question files, LLaVA-style conversations and the
// built-in scene world (package scenes) through
// package readers, validates every record (bad ones are listed with the
// reason; too many fail the ingest), content-hashes every file, and records
// a dataset version whose id is the hash of its manifest, with the
// dataset.ingested fact in the same Postgres transaction (outbox).
// Re-ingesting the same files returns the existing version.
//
// This file is the service's composition root and public API; the use
// cases live in internal/app, storage in internal/adapters/pg.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/services/ingest/internal/adapters/pg"
	"github.com/groundmesh/groundmesh/services/ingest/internal/app"
	"github.com/groundmesh/groundmesh/services/ingest/internal/validate"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
	"github.com/groundmesh/groundmesh/services/ingest/scenes"
)

// Errors callers tell apart with errors.Is.
var (
	// ErrBadInput wraps every error that retrying cannot fix (unknown
	// format, missing path, unparsable annotation files, more bad records
	// than MaxBadFraction allows): the caller marks it non-retryable.
	ErrBadInput = app.ErrBadInput
	// ErrNotFound: Load of an id that names no dataset version.
	ErrNotFound = app.ErrNotFound
	// ErrChanged: Load found files that no longer hash as recorded.
	ErrChanged = app.ErrChanged
)

// Loaded is a recorded version read back with what dataset.Dataset has no
// field for: POPE questions, LLaVA-style instruction records (model.Record,
// ready to mix with synthesized ones), VG relationship synsets and ODVG
// captions.
type Loaded = app.Loaded

// ReportSummary is a version's validation outcome: records, rejects,
// rejects per reason.
type ReportSummary = app.ReportSummary

// RejectedError is the ErrBadInput returned when too many records are bad;
// errors.As gives the per-record report.
type RejectedError = app.RejectedError

// Config configures the service.
type Config struct {
	// DataDir is where generated scene worlds are written
	// (DataDir/scenes/<seed>/<images>x<size>). Required.
	DataDir string
	// Logger receives the service's logs (default: discarded).
	Logger *slog.Logger
	// MaxBadFraction fails an ingest when more than this share of records
	// is rejected, unless the request sets its own (default 0.05).
	MaxBadFraction float64
	// SkipImageFiles ingests annotations only: image files are neither
	// opened nor hashed, and image sizes must come from the annotations.
	// For annotation-only copies of large datasets and the benchmark.
	SkipImageFiles bool
	// MaxImagePixels rejects images whose header declares more pixels
	// (default 100 megapixels).
	MaxImagePixels int64
	// MaxImageBytes rejects larger image files (default 256 MiB).
	MaxImageBytes int64
	// BoxTolerance is the overshoot (pixels) past the image border that is
	// clipped instead of rejected (0 = default 1; negative = none).
	BoxTolerance float64
	// Workers check and hash image files in parallel (default GOMAXPROCS).
	Workers int
}

// Service ingests and loads datasets.
type Service struct {
	app *app.Service
}

// DryRunResult is what a dry run found.
type DryRunResult struct {
	// Dataset is what Ingest would record (DatasetID empty, Reused false).
	Dataset events.DatasetIngested
	// Records is every record seen, kept or rejected.
	Records int64
	// Rejected lists each rejected record with its reason.
	Rejected []readers.Reject
	// BadFraction is len(Rejected) / Records.
	BadFraction float64
}

// DryRun reads, validates and hashes the dataset req names exactly as
// Ingest does, without Postgres and without recording anything; too many
// bad records are reported in the result rather than failing. It serves
// `groundmesh ingest --dry-run` and the ingest benchmark (bench/ingest).
func DryRun(ctx context.Context, cfg Config, req events.IngestRequested, progress func(done, total int64, msg string)) (DryRunResult, error) {
	a, err := newApp(cfg, nil)
	if err != nil {
		return DryRunResult{}, err
	}
	ds, rep, err := a.DryRun(ctx, req, progress)
	if err != nil {
		return DryRunResult{}, err
	}
	return DryRunResult{Dataset: ds, Records: rep.Records, Rejected: rep.Rejected, BadFraction: rep.BadFraction()}, nil
}

// New builds the service over a Postgres pool whose schema includes
// migrations/00010_ingest.sql and the platform's outbox and lineage tables.
func New(cfg Config, pool *pgxpool.Pool) (*Service, error) {
	repo, err := pg.New(pool)
	if err != nil {
		return nil, fmt.Errorf("new ingest service: %w", err)
	}
	a, err := newApp(cfg, repo)
	if err != nil {
		return nil, err
	}
	return &Service{app: a}, nil
}

func newApp(cfg Config, repo app.Repository) (*app.Service, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("new ingest service: DataDir is required")
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("new ingest service: data dir: %w", err)
	}
	a, err := app.New(app.Config{
		DataDir:        abs,
		MaxBadFraction: cfg.MaxBadFraction,
		Logger:         cfg.Logger,
		Validate: validate.Options{
			SkipImageFiles: cfg.SkipImageFiles, MaxImagePixels: cfg.MaxImagePixels,
			MaxImageBytes: cfg.MaxImageBytes, BoxTolerance: cfg.BoxTolerance, Workers: cfg.Workers,
		},
	}, repo)
	if err != nil {
		return nil, fmt.Errorf("new ingest service: %w", err)
	}
	return a, nil
}

// Ingest reads the dataset req names (format coco, refcoco, vg, flickr30k,
// odvg, pope, llava or scenes; scenes with an empty Path generates the world of
// req.Scenes under DataDir first), validates and hashes it, and records a
// dataset version with the dataset.ingested fact in one transaction. The
// same files ingested again return the existing version with Reused set and
// publish nothing. progress (may be nil) is called, throttled, with the
// phase in msg: "generate scenes", "read <file>", "check images", "record".
func (s *Service) Ingest(ctx context.Context, req events.IngestRequested, progress func(done, total int64, msg string)) (events.DatasetIngested, error) {
	return s.app.Ingest(ctx, req, progress)
}

// Load returns the validated dataset of a recorded version (datasetID is
// DatasetIngested.DatasetID), re-reading its files and verifying every
// recorded hash (ErrChanged when a file changed, ErrNotFound for an unknown
// id). Rejected records are not in it.
func (s *Service) Load(ctx context.Context, datasetID string) (*dataset.Dataset, error) {
	return s.app.Load(ctx, datasetID)
}

// Root returns the root directory of a recorded version: the directory
// its records' image paths are relative to (ErrNotFound for an unknown
// id). It reads the record only; Load verifies the files.
func (s *Service) Root(ctx context.Context, datasetID string) (string, error) {
	return s.app.Root(ctx, datasetID)
}

// LoadAll is Load with the questions, instruction records and extra
// annotations of the version's files.
func (s *Service) LoadAll(ctx context.Context, datasetID string) (*Loaded, error) {
	return s.app.LoadAll(ctx, datasetID)
}

// Rejects returns a recorded version's validation summary and every record
// it rejected, with file, line and reason (`groundmesh ingest --rejects`).
func (s *Service) Rejects(ctx context.Context, datasetID string) (ReportSummary, []readers.Reject, error) {
	return s.app.Rejects(ctx, datasetID)
}

// DefaultName is the dataset name used when a request names none: the
// folder's name (for a file, its folder's).
func DefaultName(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return filepath.Base(path)
	}
	return app.DefaultName(abs)
}

// GenerateScenes writes the built-in scene world of spec into dir (which
// must not exist or be empty), for the CLI's `groundmesh scenes generate`.
// progress (may be nil) is called as images are written.
func GenerateScenes(ctx context.Context, dir string, spec events.ScenesSpec, progress func(done, total int64)) (err error) {
	ctx, span := otel.Tracer("groundmesh/ingest").Start(ctx, "ingest.GenerateScenes")
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	sp := scenes.Spec{Seed: spec.Seed, Images: spec.Images, Size: spec.Size}.WithDefaults()
	span.SetAttributes(attribute.Int64("scenes.seed", sp.Seed), attribute.Int("scenes.images", sp.Images), attribute.Int("scenes.size", sp.Size))
	if err := sp.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	if _, err := scenes.Generate(ctx, dir, sp, progress); err != nil {
		return err
	}
	return nil
}
