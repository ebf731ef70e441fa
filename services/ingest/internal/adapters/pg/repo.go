// Package pg is the Postgres adapter of the ingest repository port
// (tables in migrations/00010_ingest.sql).
package pg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/outbox"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/services/ingest/internal/app"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
)

// Lineage kinds and relations this adapter writes.
const (
	LineageDataset      = "dataset"     // dst: a dataset version id
	LineageSourcePath   = "source_path" // src: the ingested path
	LineageIngestedFrom = "ingested_from"
)

// Repo implements app.Repository.
type Repo struct {
	pool *pgxpool.Pool
}

var _ app.Repository = (*Repo)(nil)

// New returns a repository over pool.
func New(pool *pgxpool.Pool) (*Repo, error) {
	if pool == nil {
		return nil, errors.New("ingest repository: pool is nil")
	}
	return &Repo{pool: pool}, nil
}

const versionColumns = `id::text, dataset_name, version, format, root, source_path, correlation_id,
	counts, splits, manifest, report, created_at`

func scanVersion(row pgx.Row) (*app.Version, error) {
	var v app.Version
	var counts, splits, manifest, report []byte
	if err := row.Scan(&v.ID, &v.Name, &v.Version, &v.Format, &v.Root, &v.SourcePath, &v.CorrelationID,
		&counts, &splits, &manifest, &report, &v.CreatedAt); err != nil {
		return nil, err
	}
	for _, x := range []struct {
		b []byte
		v any
	}{{counts, &v.Counts}, {splits, &v.Splits}, {manifest, &v.Manifest}, {report, &v.Report}} {
		if err := json.Unmarshal(x.b, x.v); err != nil {
			return nil, fmt.Errorf("decode dataset version %s: %w", v.ID, err)
		}
	}
	return &v, nil
}

// Find returns the version with this manifest hash, or nil.
func (r *Repo) Find(ctx context.Context, version string) (*app.Version, error) {
	v, err := scanVersion(r.pool.QueryRow(ctx, `SELECT `+versionColumns+` FROM dataset_versions WHERE version = $1`, version))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find dataset version %s: %w", version, err)
	}
	return v, nil
}

// Get returns a version and its files.
func (r *Repo) Get(ctx context.Context, id string) (*app.Version, []app.FileEntry, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, nil, fmt.Errorf("%w: dataset id %q is not a uuid", app.ErrBadInput, id)
	}
	v, err := scanVersion(r.pool.QueryRow(ctx, `SELECT `+versionColumns+` FROM dataset_versions WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, fmt.Errorf("%w: %s", app.ErrNotFound, id)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("get dataset version %s: %w", id, err)
	}
	rows, err := r.pool.Query(ctx, `SELECT path, kind, sha256, bytes FROM dataset_files WHERE version_id = $1 ORDER BY path`, id)
	if err != nil {
		return nil, nil, fmt.Errorf("get files of dataset version %s: %w", id, err)
	}
	files, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (app.FileEntry, error) {
		var f app.FileEntry
		err := row.Scan(&f.Path, &f.Kind, &f.SHA256, &f.Bytes)
		return f, err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("get files of dataset version %s: %w", id, err)
	}
	return v, files, nil
}

// Rejects lists a version's rejected records in the order recorded. The
// file column holds "file:line" where a line is known.
func (r *Repo) Rejects(ctx context.Context, id string) ([]readers.Reject, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, fmt.Errorf("%w: dataset id %q is not a uuid", app.ErrBadInput, id)
	}
	rows, err := r.pool.Query(ctx, `SELECT kind, record_id, file, reason FROM dataset_rejects WHERE version_id = $1 ORDER BY seq`, id)
	if err != nil {
		return nil, fmt.Errorf("get rejects of dataset version %s: %w", id, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (readers.Reject, error) {
		var rj readers.Reject
		err := row.Scan(&rj.Kind, &rj.ID, &rj.File, &rj.Reason)
		if i := strings.LastIndexByte(rj.File, ':'); i > 0 {
			if n, perr := strconv.Atoi(rj.File[i+1:]); perr == nil && n > 0 {
				rj.File, rj.Line = rj.File[:i], n
			}
		}
		return rj, err
	})
	if err != nil {
		return nil, fmt.Errorf("get rejects of dataset version %s: %w", id, err)
	}
	return out, nil
}

// Create records a version, its files, rejects, lineage and fact in one
// transaction; an existing version (same manifest hash) wins.
func (r *Repo) Create(ctx context.Context, v *app.Version, files []app.FileEntry, rejects []readers.Reject, fact events.DatasetIngested) (*app.Version, bool, error) {
	js := func(x any) ([]byte, error) { return json.Marshal(x) }
	counts, err := js(v.Counts)
	if err != nil {
		return nil, false, fmt.Errorf("encode counts: %w", err)
	}
	splits, err := js(v.Splits)
	if err != nil {
		return nil, false, fmt.Errorf("encode splits: %w", err)
	}
	manifest, err := js(v.Manifest)
	if err != nil {
		return nil, false, fmt.Errorf("encode manifest: %w", err)
	}
	report, err := js(v.Report)
	if err != nil {
		return nil, false, fmt.Errorf("encode report: %w", err)
	}
	var id string
	existed := false
	err = store.WithTx(ctx, r.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO datasets (name) VALUES ($1) ON CONFLICT (name) DO NOTHING`, v.Name); err != nil {
			return fmt.Errorf("insert dataset %s: %w", v.Name, err)
		}
		err := tx.QueryRow(ctx, `
			INSERT INTO dataset_versions (dataset_name, version, format, root, source_path, correlation_id,
				counts, splits, manifest, report)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
			ON CONFLICT (version) DO NOTHING
			RETURNING id::text`,
			v.Name, v.Version, v.Format, v.Root, v.SourcePath, clean(v.CorrelationID),
			counts, splits, manifest, report).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			existed = true // a concurrent ingest of the same files committed first
			return nil
		}
		if err != nil {
			return fmt.Errorf("insert dataset version: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"dataset_files"},
			[]string{"version_id", "path", "kind", "sha256", "bytes"},
			pgx.CopyFromSlice(len(files), func(i int) ([]any, error) {
				f := files[i]
				return []any{id, f.Path, f.Kind, f.SHA256, f.Bytes}, nil
			})); err != nil {
			return fmt.Errorf("insert dataset files: %w", err)
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"dataset_rejects"},
			[]string{"version_id", "seq", "kind", "record_id", "file", "reason"},
			pgx.CopyFromSlice(len(rejects), func(i int) ([]any, error) {
				rj := rejects[i]
				return []any{id, int32(i), clean(rj.Kind), clean(rj.ID), clean(rj.Where()), clean(rj.Reason)}, nil
			})); err != nil {
			return fmt.Errorf("insert dataset rejects: %w", err)
		}
		if err := store.AddLineage(ctx, tx, LineageSourcePath, v.SourcePath, LineageDataset, id, LineageIngestedFrom); err != nil {
			return err
		}
		fact.DatasetID = id
		if err := outbox.Add(ctx, tx, events.TopicDatasetIngested, fact, nil); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	if existed {
		found, err := r.Find(ctx, v.Version)
		if err != nil {
			return nil, false, err
		}
		if found == nil {
			return nil, false, fmt.Errorf("dataset version %s conflicted but cannot be found", v.Version)
		}
		return found, false, nil
	}
	out := *v
	out.ID = id
	return &out, true, nil
}

// clean makes rejected records' text storable: Postgres text holds valid
// UTF-8 without NUL, and rejects exist precisely because some text was not.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", `\x00`)
	}
	if len(s) > 4096 {
		s = s[:4096]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}
