package ground

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
)

// ProjectionConfig configures the consumers of services/train's facts.
type ProjectionConfig struct {
	// Handler prefixes the consumer groups (default "ground-models"):
	// "<Handler>-train-completed", "<Handler>-checkpoint-saved" and
	// "<Handler>-model-exported". Renaming it starts new groups from each
	// topic's oldest message (harmless: every fact is recorded
	// idempotently).
	Handler string
	// Pool holds ground_runs, ground_checkpoints and ground_exports.
	// Required.
	Pool   *pgxpool.Pool
	Logger *slog.Logger
}

// Projection records services/train's facts in the grounding service's own
// tables, which PGCatalog reads: the run's backend, model config and
// tokenizer and its final checkpoints (train.completed), every checkpoint
// (checkpoint.saved), every export (model.exported). Each fact is an
// upsert, so that a redelivered or duplicated one changes nothing; facts
// may come in any order (a checkpoint before its run's completion).
type Projection struct {
	cfg ProjectionConfig
}

// NewProjection validates cfg and returns the projection; Project
// registers it on a bus.
func NewProjection(cfg ProjectionConfig) (*Projection, error) {
	if cfg.Pool == nil {
		return nil, errors.New("ground projection: Pool is required")
	}
	if cfg.Handler == "" {
		cfg.Handler = "ground-models"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Projection{cfg: cfg}, nil
}

// Project registers the consumers of train.completed, checkpoint.saved and
// model.exported on r.
func Project(r Registrar, cfg ProjectionConfig) (*Projection, error) {
	p, err := NewProjection(cfg)
	if err != nil {
		return nil, err
	}
	h := p.cfg.Handler
	// One at a time per topic: the facts are small upserts, and the order
	// a topic holds them in is kept.
	opts := bus.HandleOptions{Concurrency: 1}
	err = errors.Join(
		handle(r, h+"-train-completed", events.TopicTrainCompleted, opts, p.handleTrainCompleted),
		handle(r, h+"-checkpoint-saved", events.TopicCheckpointSaved, opts, p.handleCheckpointSaved),
		handle(r, h+"-model-exported", events.TopicModelExported, opts, p.handleModelExported),
	)
	if err != nil {
		return nil, fmt.Errorf("ground projection: %w", err)
	}
	return p, nil
}

// decodeFact reads a fact's payload. Not strictly: train.completed is a
// command's answer, which carries fields of its own ("worker"), and a
// newer producer may add fields that this reader need not know.
func decodeFact(msg *message.Message, v any) error {
	if err := json.Unmarshal(msg.Payload, v); err != nil {
		return bus.Permanent(fmt.Errorf("decode %T payload: %w", v, err))
	}
	return nil
}

// publishedAt is when the fact was published (its metadata), else now.
func publishedAt(msg *message.Message) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(events.MetaPublishedAt)); err == nil {
		return t
	}
	return time.Now()
}

// span starts a handler's span; end records err on it.
func (p *Projection) span(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, func(err error)) {
	ctx, span := tracer.Start(ctx, name, trace.WithAttributes(attrs...))
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

func (p *Projection) handleTrainCompleted(ctx context.Context, msg *message.Message) (err error) {
	var ev events.TrainCompleted
	if err := decodeFact(msg, &ev); err != nil {
		return err
	}
	ctx, end := p.span(ctx, "ground.project.train_completed", attribute.String("run_id", ev.RunID))
	defer func() { end(err) }()
	return p.RecordRun(ctx, ev, publishedAt(msg))
}

func (p *Projection) handleCheckpointSaved(ctx context.Context, msg *message.Message) (err error) {
	var ev events.CheckpointSaved
	if err := decodeFact(msg, &ev); err != nil {
		return err
	}
	ctx, end := p.span(ctx, "ground.project.checkpoint_saved", attribute.String("run_id", ev.RunID), attribute.String("checkpoint_id", ev.CheckpointID))
	defer func() { end(err) }()
	return p.RecordCheckpoint(ctx, ev)
}

func (p *Projection) handleModelExported(ctx context.Context, msg *message.Message) (err error) {
	var ev events.ExportCompleted
	if err := decodeFact(msg, &ev); err != nil {
		return err
	}
	ctx, end := p.span(ctx, "ground.project.model_exported", attribute.String("checkpoint_id", ev.CheckpointID),
		attribute.String("format", ev.Format), attribute.String("dtype", ev.Dtype))
	defer func() { end(err) }()
	return p.RecordExport(ctx, ev)
}

// RecordRun records a completed run's facts (ev.Run) and its final
// checkpoints, completed at completedAt (a duplicate keeps the first
// time). A TrainCompleted without Run (from a train service older than
// RunFacts) says too little to serve the run: it is logged and skipped.
func (p *Projection) RecordRun(ctx context.Context, ev events.TrainCompleted, completedAt time.Time) error {
	log := p.cfg.Logger
	if ev.RunID == "" {
		return bus.Permanent(errors.New("train.completed without run_id"))
	}
	r := ev.Run
	if r == nil {
		log.WarnContext(ctx, "train.completed without the run's facts skipped: its checkpoints cannot be served until a train service that sends them answers for the run",
			"run_id", ev.RunID, "correlation_id", ev.CorrelationID)
		return nil
	}
	if len(r.ModelConfig) == 0 || !json.Valid(r.ModelConfig) || r.TokenizerKey == "" || r.Backend == "" {
		return bus.Permanent(fmt.Errorf("train.completed of run %s: the run's facts lack a model config, a tokenizer or a backend", ev.RunID))
	}
	err := store.WithTx(ctx, p.cfg.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			INSERT INTO ground_runs (run_id, backend, model_config, model_config_sha256, tokenizer_key, completed_at)
			VALUES ($1, $2, $3::jsonb, $4, $5, $6)
			ON CONFLICT (run_id) DO UPDATE SET backend = excluded.backend, model_config = excluded.model_config,
				model_config_sha256 = excluded.model_config_sha256, tokenizer_key = excluded.tokenizer_key,
				completed_at = coalesce(ground_runs.completed_at, excluded.completed_at), updated_at = now()`,
			ev.RunID, r.Backend, string(r.ModelConfig), r.ModelConfigSHA256, r.TokenizerKey, completedAt); err != nil {
			return fmt.Errorf("record run %s: %w", ev.RunID, err)
		}
		for _, c := range r.Checkpoints {
			if err := upsertCheckpoint(ctx, tx, ev.RunID, c.ID, c.Stage, c.Step, c.BlobKey, c.SHA256, r.ModelConfigSHA256); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	log.InfoContext(ctx, "run recorded: its checkpoints can be served", "run_id", ev.RunID, "backend", r.Backend,
		"checkpoints", len(r.Checkpoints), "correlation_id", ev.CorrelationID)
	return nil
}

// RecordCheckpoint records a checkpoint.saved fact.
func (p *Projection) RecordCheckpoint(ctx context.Context, ev events.CheckpointSaved) error {
	if ev.CheckpointID == "" || ev.RunID == "" || ev.BlobKey == "" {
		return bus.Permanent(fmt.Errorf("checkpoint.saved without checkpoint_id, run_id or blob_key: %+v", ev))
	}
	if err := upsertCheckpoint(ctx, p.cfg.Pool, ev.RunID, ev.CheckpointID, ev.Stage, ev.Step, ev.BlobKey, ev.SHA256, ev.ModelConfigSHA256); err != nil {
		return err
	}
	p.cfg.Logger.DebugContext(ctx, "checkpoint recorded", "checkpoint_id", ev.CheckpointID, "run_id", ev.RunID, "stage", ev.Stage, "step", ev.Step)
	return nil
}

// RecordExport records a model.exported fact; a later export of the same
// checkpoint, format and dtype (services/train writes it again when its
// file is gone) replaces it.
func (p *Projection) RecordExport(ctx context.Context, ev events.ExportCompleted) error {
	if ev.CheckpointID == "" || ev.Format == "" || ev.Dtype == "" || ev.BlobKey == "" || ev.ExportID == "" {
		return bus.Permanent(fmt.Errorf("model.exported without checkpoint_id, format, dtype, blob_key or export_id: %+v", ev))
	}
	if _, err := p.cfg.Pool.Exec(ctx, `
		INSERT INTO ground_exports (checkpoint_id, format, dtype, export_id, run_id, blob_key, sha256, model_config_sha256)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (checkpoint_id, format, dtype) DO UPDATE SET export_id = excluded.export_id, run_id = excluded.run_id,
			blob_key = excluded.blob_key, sha256 = excluded.sha256, model_config_sha256 = excluded.model_config_sha256`,
		ev.CheckpointID, ev.Format, ev.Dtype, ev.ExportID, ev.RunID, ev.BlobKey, ev.SHA256, ev.ModelConfigSHA256); err != nil {
		return fmt.Errorf("record the %s-%s export of checkpoint %s: %w", ev.Format, ev.Dtype, ev.CheckpointID, err)
	}
	p.cfg.Logger.InfoContext(ctx, "export recorded", "checkpoint_id", ev.CheckpointID, "format", ev.Format, "dtype", ev.Dtype, "export_id", ev.ExportID)
	return nil
}

// upsertCheckpoint records a checkpoint; a hash one fact lacks (a
// RunFacts checkpoint carries no config hash) does not erase what another
// gave.
func upsertCheckpoint(ctx context.Context, db bus.Execer, runID, id, stage string, step int, blobKey, sha, configSHA string) error {
	if _, err := db.Exec(ctx, `
		INSERT INTO ground_checkpoints (checkpoint_id, run_id, stage, step, blob_key, sha256, model_config_sha256)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (checkpoint_id) DO UPDATE SET run_id = excluded.run_id, stage = excluded.stage, step = excluded.step,
			blob_key = excluded.blob_key, sha256 = coalesce(nullif(excluded.sha256, ''), ground_checkpoints.sha256),
			model_config_sha256 = coalesce(nullif(excluded.model_config_sha256, ''), ground_checkpoints.model_config_sha256)`,
		id, runID, stage, step, blobKey, sha, configSHA); err != nil {
		return fmt.Errorf("record checkpoint %s of run %s: %w", id, runID, err)
	}
	return nil
}
