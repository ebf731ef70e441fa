package eval

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PGCatalog answers Catalog questions from the Postgres tables that
// services/train (runs, checkpoints, train_metrics), services/synth
// (synth_sets) and services/ingest (datasets) own.
type PGCatalog struct {
	pool *pgxpool.Pool
}

var _ Catalog = (*PGCatalog)(nil)

// NewPGCatalog returns a catalog over pool.
func NewPGCatalog(pool *pgxpool.Pool) *PGCatalog { return &PGCatalog{pool: pool} }

// Run implements Catalog. The synth set's manifest and the dataset's root
// come from services/synth's and services/ingest's tables.
func (c *PGCatalog) Run(ctx context.Context, runID string) (RunInfo, error) {
	ctx, span := tracer.Start(ctx, "eval.catalog.Run")
	defer span.End()
	info := RunInfo{RunID: runID}
	var mc string
	// One statement over the three owners' tables (all migrated together);
	// a missing synth set or dataset version leaves its fields empty.
	err := c.pool.QueryRow(ctx, `
		SELECT r.synth_set_id::text, coalesce(r.model_config::text, ''), coalesce(r.tokenizer_key, ''),
		       coalesce(s.manifest_key, ''), coalesce(s.dataset_id::text, ''), coalesce(d.root, '')
		FROM runs r
		LEFT JOIN synth_sets s ON s.id = r.synth_set_id
		LEFT JOIN dataset_versions d ON d.id = s.dataset_id
		WHERE r.id = $1`, runID).Scan(&info.SynthSetID, &mc, &info.TokenizerKey, &info.ManifestKey, &info.DatasetID, &info.DatasetRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		return RunInfo{}, fmt.Errorf("run %s: not found", runID)
	}
	if err != nil {
		return RunInfo{}, fmt.Errorf("look up run %s: %w", runID, err)
	}
	if mc != "" {
		info.ModelConfig = []byte(mc)
	}
	return info, nil
}

// Checkpoints implements Catalog.
func (c *PGCatalog) Checkpoints(ctx context.Context, runID string, ids []string) ([]Checkpoint, error) {
	ctx, span := tracer.Start(ctx, "eval.catalog.Checkpoints")
	defer span.End()
	var rows pgx.Rows
	var err error
	if len(ids) > 0 {
		rows, err = c.pool.Query(ctx, `
			SELECT id::text, run_id::text, stage, step, blob_key FROM checkpoints
			WHERE run_id = $1 AND id = ANY($2::uuid[]) ORDER BY stage, step`, runID, ids)
	} else {
		rows, err = c.pool.Query(ctx, `
			SELECT DISTINCT ON (stage) id::text, run_id::text, stage, step, blob_key FROM checkpoints
			WHERE run_id = $1 ORDER BY stage, step DESC, created_at DESC`, runID)
	}
	if err != nil {
		return nil, fmt.Errorf("look up checkpoints of run %s: %w", runID, err)
	}
	cks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Checkpoint, error) {
		var ck Checkpoint
		err := r.Scan(&ck.ID, &ck.RunID, &ck.Stage, &ck.Step, &ck.BlobKey)
		return ck, err
	})
	if err != nil {
		return nil, fmt.Errorf("read checkpoints of run %s: %w", runID, err)
	}
	if len(ids) > 0 && len(cks) != len(ids) {
		return nil, fmt.Errorf("checkpoints of run %s: found %d of %d requested", runID, len(cks), len(ids))
	}
	return cks, nil
}

// Losses implements Catalog.
func (c *PGCatalog) Losses(ctx context.Context, runID string) (map[string][]LossPoint, error) {
	ctx, span := tracer.Start(ctx, "eval.catalog.Losses")
	defer span.End()
	rows, err := c.pool.Query(ctx, `SELECT stage, step, loss FROM train_metrics WHERE run_id = $1 ORDER BY stage, step`, runID)
	if err != nil {
		return nil, fmt.Errorf("look up losses of run %s: %w", runID, err)
	}
	defer rows.Close()
	out := map[string][]LossPoint{}
	for rows.Next() {
		var stage string
		var p LossPoint
		if err := rows.Scan(&stage, &p.Step, &p.Loss); err != nil {
			return nil, fmt.Errorf("read losses of run %s: %w", runID, err)
		}
		out[stage] = append(out[stage], p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read losses of run %s: %w", runID, err)
	}
	return out, nil
}
