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
// are filled in when services/synth's and services/ingest's tables exist
// in this database (their owners migrate independently).
func (c *PGCatalog) Run(ctx context.Context, runID string) (RunInfo, error) {
	ctx, span := tracer.Start(ctx, "eval.catalog.Run")
	defer span.End()
	info := RunInfo{RunID: runID}
	var mc string
	err := c.pool.QueryRow(ctx, `
		SELECT synth_set_id::text, coalesce(model_config::text, ''), coalesce(tokenizer_key, '')
		FROM runs WHERE id = $1`, runID).Scan(&info.SynthSetID, &mc, &info.TokenizerKey)
	if errors.Is(err, pgx.ErrNoRows) {
		return RunInfo{}, fmt.Errorf("run %s: not found", runID)
	}
	if err != nil {
		return RunInfo{}, fmt.Errorf("look up run %s: %w", runID, err)
	}
	if mc != "" {
		info.ModelConfig = []byte(mc)
	}
	var haveSynth, haveDatasets bool
	if err := c.pool.QueryRow(ctx, `SELECT to_regclass('synth_sets') IS NOT NULL, to_regclass('datasets') IS NOT NULL`).
		Scan(&haveSynth, &haveDatasets); err != nil {
		return RunInfo{}, fmt.Errorf("look up run %s: %w", runID, err)
	}
	if haveSynth {
		err := c.pool.QueryRow(ctx, `SELECT coalesce(manifest_key, ''), coalesce(dataset_id::text, '') FROM synth_sets WHERE id = $1`,
			info.SynthSetID).Scan(&info.ManifestKey, &info.DatasetID)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return RunInfo{}, fmt.Errorf("look up synth set %s of run %s: %w", info.SynthSetID, runID, err)
		}
	}
	if haveDatasets && info.DatasetID != "" {
		err := c.pool.QueryRow(ctx, `SELECT coalesce(root, '') FROM dataset_versions WHERE id = $1`, info.DatasetID).Scan(&info.DatasetRoot)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return RunInfo{}, fmt.Errorf("look up dataset %s of run %s: %w", info.DatasetID, runID, err)
		}
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
