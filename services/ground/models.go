package ground

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/outbox"
	"github.com/groundmesh/groundmesh/internal/store"
)

// ModelRef is a servable checkpoint and what loading it needs.
type ModelRef struct {
	CheckpointID string
	RunID        string
	Stage        string
	Step         int
	// BlobKey is the checkpoint file's blob key.
	BlobKey string
	// Backend is the compute backend the run trained with.
	Backend string
	// ModelConfig is the run's model.Config (JSON) and TokenizerKey the
	// blob key of its tokenizer.
	ModelConfig  []byte
	TokenizerKey string
}

// Catalog finds servable checkpoints. The default reads services/train's
// tables (NewPGCatalog); tests may supply their own.
type Catalog interface {
	// Checkpoint returns the named checkpoint; an *Error with
	// CodeModelNotFound when there is none.
	Checkpoint(ctx context.Context, id string) (ModelRef, error)
	// Latest returns the model a request without checkpoint_id gets: the
	// checkpoint promoted to DefaultAlias, else the newest checkpoint of
	// the most recently completed run (its last stage); an *Error with
	// CodeNoModel when there is none.
	Latest(ctx context.Context) (ModelRef, error)
}

// Promoter records promotions (PGCatalog is one).
type Promoter interface {
	// Promote points alias at a checkpoint and publishes model.promoted.
	Promote(ctx context.Context, alias, checkpointID string) (events.ModelPromoted, error)
}

// DefaultAlias is the alias that serves requests naming no checkpoint.
const DefaultAlias = "production"

var aliasPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// PGCatalog answers Catalog from the runs and checkpoints tables that
// services/train owns.
type PGCatalog struct {
	pool *pgxpool.Pool
}

var _ Catalog = (*PGCatalog)(nil)

// NewPGCatalog returns a catalog over pool.
func NewPGCatalog(pool *pgxpool.Pool) *PGCatalog { return &PGCatalog{pool: pool} }

const refColumns = `c.id::text, c.run_id::text, c.stage, c.step, c.blob_key, r.backend,
	coalesce(r.model_config::text, ''), coalesce(r.tokenizer_key, '')`

func scanRef(row pgx.Row) (ModelRef, error) {
	var m ModelRef
	var mc string
	if err := row.Scan(&m.CheckpointID, &m.RunID, &m.Stage, &m.Step, &m.BlobKey, &m.Backend, &mc, &m.TokenizerKey); err != nil {
		return ModelRef{}, err
	}
	m.ModelConfig = []byte(mc)
	return m, nil
}

// Checkpoint implements Catalog.
func (c *PGCatalog) Checkpoint(ctx context.Context, id string) (ModelRef, error) {
	ctx, span := tracer.Start(ctx, "ground.catalog.Checkpoint")
	defer span.End()
	m, err := scanRef(c.pool.QueryRow(ctx, `SELECT `+refColumns+`
		FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE c.id::text = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return ModelRef{}, newError(CodeModelNotFound, "no checkpoint %q", id)
	}
	if err != nil {
		return ModelRef{}, fmt.Errorf("look up checkpoint %s: %w", id, err)
	}
	return m, nil
}

// Latest implements Catalog.
func (c *PGCatalog) Latest(ctx context.Context) (ModelRef, error) {
	ctx, span := tracer.Start(ctx, "ground.catalog.Latest")
	defer span.End()
	m, err := scanRef(c.pool.QueryRow(ctx, `SELECT `+refColumns+`
		FROM model_aliases a JOIN checkpoints c ON c.id = a.checkpoint_id JOIN runs r ON r.id = c.run_id
		WHERE a.alias = $1`, DefaultAlias))
	if err == nil {
		return m, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return ModelRef{}, fmt.Errorf("look up the %s model: %w", DefaultAlias, err)
	}
	m, err = scanRef(c.pool.QueryRow(ctx, `SELECT `+refColumns+`
		FROM checkpoints c JOIN runs r ON r.id = c.run_id
		WHERE r.status = 'completed' AND r.model_config IS NOT NULL
		ORDER BY r.updated_at DESC, c.stage DESC, c.step DESC, c.created_at DESC LIMIT 1`))
	if errors.Is(err, pgx.ErrNoRows) {
		return ModelRef{}, newError(CodeNoModel, "no trained model yet: run a pipeline (POST /api/pipelines) or name a checkpoint_id")
	}
	if err != nil {
		return ModelRef{}, fmt.Errorf("look up the newest model: %w", err)
	}
	return m, nil
}

var _ Promoter = (*PGCatalog)(nil)

// Promote implements Promoter: the alias row and the model.promoted fact
// commit together.
func (c *PGCatalog) Promote(ctx context.Context, alias, checkpointID string) (events.ModelPromoted, error) {
	ctx, span := tracer.Start(ctx, "ground.catalog.Promote")
	defer span.End()
	if !aliasPattern.MatchString(alias) {
		return events.ModelPromoted{}, newError(CodeBadRequest, "alias %q: want lower-case letters, digits, '.', '_' or '-', at most 63", alias)
	}
	ref, err := c.Checkpoint(ctx, checkpointID)
	if err != nil {
		return events.ModelPromoted{}, err
	}
	if len(ref.ModelConfig) == 0 || ref.TokenizerKey == "" {
		return events.ModelPromoted{}, newError(CodeBadRequest, "checkpoint %s: its run records no model config or tokenizer", checkpointID)
	}
	p := events.ModelPromoted{Alias: alias, CheckpointID: ref.CheckpointID, RunID: ref.RunID, Stage: ref.Stage, Step: ref.Step}
	err = store.WithTx(ctx, c.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `
			INSERT INTO model_aliases (alias, checkpoint_id) VALUES ($1, $2)
			ON CONFLICT (alias) DO UPDATE SET checkpoint_id = excluded.checkpoint_id, promoted_at = now()
			RETURNING promoted_at`, alias, ref.CheckpointID).Scan(&p.PromotedAt); err != nil {
			return fmt.Errorf("promote %s to %s: %w", ref.CheckpointID, alias, err)
		}
		return outbox.Add(ctx, tx, events.TopicModelPromoted, p, nil)
	})
	if err != nil {
		return events.ModelPromoted{}, err
	}
	return p, nil
}
