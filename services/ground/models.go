package ground

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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
	// Latest returns the newest checkpoint of the most recently completed
	// run (its last stage); an *Error with CodeNoModel when no run has
	// completed.
	Latest(ctx context.Context) (ModelRef, error)
}

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
