package synth

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/store"
)

// Lineage names written by synth.
const (
	LineageDataset  = "dataset"   // src: a dataset version id
	LineageSynthSet = "synth_set" // dst: a synth set id
	LineageRelation = "synthesized_from"
)

// setRow is a synth_sets row.
type setRow struct {
	ID          string
	Status      string
	ContentHash string
	ManifestKey string
	Counts      map[string]int64
}

// repo is the synth_sets repository.
type repo struct{ pool *pgxpool.Pool }

func (r repo) find(ctx context.Context, datasetID, paramsHash string) (setRow, bool, error) {
	var row setRow
	err := r.pool.QueryRow(ctx, `
		SELECT id::text, status, content_hash, manifest_key, counts
		FROM synth_sets WHERE dataset_id = $1 AND params_hash = $2`, datasetID, paramsHash).
		Scan(&row.ID, &row.Status, &row.ContentHash, &row.ManifestKey, &row.Counts)
	if errors.Is(err, pgx.ErrNoRows) {
		return setRow{}, false, nil
	}
	if err != nil {
		return setRow{}, false, fmt.Errorf("look up synth set: %w", err)
	}
	return row, true, nil
}

// get reads a set by id, with its dataset id.
func (r repo) get(ctx context.Context, id string) (setRow, string, bool, error) {
	var row setRow
	var datasetID string
	err := r.pool.QueryRow(ctx, `
		SELECT id::text, status, content_hash, manifest_key, counts, dataset_id::text
		FROM synth_sets WHERE id = $1`, id).
		Scan(&row.ID, &row.Status, &row.ContentHash, &row.ManifestKey, &row.Counts, &datasetID)
	if errors.Is(err, pgx.ErrNoRows) {
		return setRow{}, "", false, nil
	}
	if err != nil {
		return setRow{}, "", false, fmt.Errorf("read synth set %s: %w", id, err)
	}
	return row, datasetID, true, nil
}

// begin creates the row in status 'building', or takes over an existing
// row that is not ready (a failed or interrupted build), and returns its id.
func (r repo) begin(ctx context.Context, datasetID string, seed int64, params []byte, paramsHash, correlationID string) (string, error) {
	var id string
	err := r.pool.QueryRow(ctx, `
		INSERT INTO synth_sets (dataset_id, seed, params, params_hash, correlation_id)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (dataset_id, params_hash) DO UPDATE
			SET status = CASE WHEN synth_sets.status = 'ready' THEN 'ready' ELSE 'building' END,
			    error = '', correlation_id = EXCLUDED.correlation_id, updated_at = now()
		RETURNING id::text`, datasetID, seed, params, paramsHash, correlationID).Scan(&id)
	if err != nil {
		return "", fmt.Errorf("record synth set: %w", err)
	}
	return id, nil
}

// complete marks the set ready and records its lineage, in one transaction.
func (r repo) complete(ctx context.Context, id, datasetID string, m Manifest) error {
	return store.WithTx(ctx, r.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			UPDATE synth_sets SET status = 'ready', content_hash = $2, manifest_key = $3, counts = $4, error = '', updated_at = now()
			WHERE id = $1`, id, m.ContentHash, m.Key, m.Counts.Flat(m.Total)); err != nil {
			return fmt.Errorf("complete synth set %s: %w", id, err)
		}
		return store.AddLineage(ctx, tx, LineageDataset, datasetID, LineageSynthSet, id, LineageRelation)
	})
}

// fail records why a build failed (the row stays for the next attempt).
func (r repo) fail(ctx context.Context, id string, cause error) error {
	if _, err := r.pool.Exec(ctx, `
		UPDATE synth_sets SET status = 'failed', error = $2, updated_at = now()
		WHERE id = $1 AND status <> 'ready'`, id, truncateStr(cause.Error(), 2000)); err != nil {
		return fmt.Errorf("mark synth set %s failed: %w", id, err)
	}
	return nil
}
