package ground

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"

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
	// Export, when set, is the export of the checkpoint that is served
	// instead of the checkpoint file (BlobKey).
	Export *ExportRef
	// ServeBackend is the backend asked for (by the request or the
	// alias); "" for the default. Service.Ground sets it to the backend
	// that serves.
	ServeBackend string
}

// Version is what serves: the checkpoint id, or
// "<checkpoint>@<format>-<dtype>" for an export.
func (r ModelRef) Version() string {
	if r.Export == nil {
		return r.CheckpointID
	}
	return events.ModelVersion(r.CheckpointID, r.Export.Format, r.Export.Dtype)
}

// Spec is the ModelSpec r serves.
func (r ModelRef) Spec() ModelSpec {
	m := ModelSpec{CheckpointID: r.CheckpointID, Backend: r.ServeBackend}
	if r.Export != nil {
		m.Format, m.Dtype = r.Export.Format, r.Export.Dtype
	}
	return m
}

// key is the batcher's key: one loaded model per version and backend.
func (r ModelRef) key() string { return r.Version() + " on " + r.ServeBackend }

// Catalog finds servable checkpoints and their exports. The default reads
// the service's own record of train's facts (NewPGCatalog); tests may
// supply their own.
type Catalog interface {
	// Checkpoint returns the named checkpoint; an *Error with
	// CodeModelNotFound when there is none.
	Checkpoint(ctx context.Context, id string) (ModelRef, error)
	// Latest returns the model a request without checkpoint_id gets: the
	// checkpoint promoted to DefaultAlias, else the newest checkpoint of
	// the most recently completed run (its last stage); an *Error with
	// CodeNoModel when there is none.
	// The alias may name an export of its checkpoint (ModelRef.Export,
	// and ServeBackend the backend promoted with it).
	Latest(ctx context.Context) (ModelRef, error)
	// Export returns the export of a checkpoint in a format and dtype as
	// services/train recorded it; an *Error with CodeExportNotFound, saying
	// how to make it, when there is none.
	Export(ctx context.Context, checkpointID, format, dtype string) (ExportRef, error)
}

// Promoter records promotions (PGCatalog and Service are ones).
type Promoter interface {
	// PromoteModel points alias at a checkpoint, or at its export in
	// m.Format and m.Dtype (which must exist), served on m.Backend ("" for
	// the default), and publishes model.promoted.
	PromoteModel(ctx context.Context, alias string, m ModelSpec) (events.ModelPromoted, error)
}

// DefaultAlias is the alias that serves requests naming no checkpoint.
const DefaultAlias = "production"

var aliasPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// PGCatalog answers Catalog from the grounding service's own record of
// servable models (ground_runs, ground_checkpoints, ground_exports), which
// its Projection fills from services/train's facts on the bus: it reads no
// table of another service.
type PGCatalog struct {
	pool *pgxpool.Pool
}

var _ Catalog = (*PGCatalog)(nil)

// NewPGCatalog returns a catalog over pool.
func NewPGCatalog(pool *pgxpool.Pool) *PGCatalog { return &PGCatalog{pool: pool} }

// refColumns leave the run's columns NULL-safe: a checkpoint whose run's
// facts have not arrived has no run row (runKnown false).
const refColumns = `c.checkpoint_id, c.run_id, c.stage, c.step, c.blob_key, coalesce(r.backend, ''),
	coalesce(r.model_config::text, ''), coalesce(r.tokenizer_key, ''), r.run_id IS NOT NULL`

func scanRef(row pgx.Row, extra ...any) (ModelRef, bool, error) {
	var m ModelRef
	var mc string
	var runKnown bool
	if err := row.Scan(append([]any{&m.CheckpointID, &m.RunID, &m.Stage, &m.Step, &m.BlobKey, &m.Backend, &mc, &m.TokenizerKey, &runKnown}, extra...)...); err != nil {
		return ModelRef{}, false, err
	}
	m.ModelConfig = []byte(mc)
	return m, runKnown, nil
}

// errRunPending is the answer for a checkpoint whose run's facts
// (train.completed) the service has not consumed yet.
func errRunPending(ref ModelRef) *Error {
	e := newError(CodeModelNotFound, "checkpoint %s: the facts of its run %s (train.completed) have not reached the grounding service yet; retry shortly", ref.CheckpointID, ref.RunID)
	e.pending = true
	return e
}

// errUnknownCheckpoint is the answer for a checkpoint the service has
// heard nothing of: a wrong id, or one whose facts are still on their way
// (pending, for callers that know it must exist, like the Pipeline's
// promotion).
func errUnknownCheckpoint(id string) *Error {
	e := newError(CodeModelNotFound, "no checkpoint %q known to the grounding service (it learns of checkpoints from services/train's checkpoint.saved and train.completed)", id)
	e.pending = true
	return e
}

// withExport sets ref's export to the one in format and dtype ("" for
// none), looked up in ground_exports.
func (c *PGCatalog) withExport(ctx context.Context, ref ModelRef, format, dtype string) (ModelRef, error) {
	if format == "" {
		return ref, nil
	}
	x, err := c.Export(ctx, ref.CheckpointID, format, dtype)
	if err != nil {
		return ModelRef{}, err
	}
	ref.Export = &x
	return ref, nil
}

// Checkpoint implements Catalog.
func (c *PGCatalog) Checkpoint(ctx context.Context, id string) (ModelRef, error) {
	ctx, span := tracer.Start(ctx, "ground.catalog.Checkpoint")
	defer span.End()
	m, runKnown, err := scanRef(c.pool.QueryRow(ctx, `SELECT `+refColumns+`
		FROM ground_checkpoints c LEFT JOIN ground_runs r ON r.run_id = c.run_id WHERE c.checkpoint_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return ModelRef{}, errUnknownCheckpoint(id)
	}
	if err != nil {
		return ModelRef{}, fmt.Errorf("look up checkpoint %s: %w", id, err)
	}
	if !runKnown {
		return ModelRef{}, errRunPending(m)
	}
	return m, nil
}

// Latest implements Catalog.
func (c *PGCatalog) Latest(ctx context.Context) (ModelRef, error) {
	ctx, span := tracer.Start(ctx, "ground.catalog.Latest")
	defer span.End()
	var format, dtype, backend string
	m, runKnown, err := scanRef(c.pool.QueryRow(ctx, `SELECT `+refColumns+`, a.format, a.dtype, a.backend
		FROM model_aliases a JOIN ground_checkpoints c ON c.checkpoint_id = a.checkpoint_id::text
		LEFT JOIN ground_runs r ON r.run_id = c.run_id
		WHERE a.alias = $1`, DefaultAlias), &format, &dtype, &backend)
	if err == nil {
		if !runKnown { // a promotion checks the run: only a lost run row gets here
			return ModelRef{}, errRunPending(m)
		}
		m.ServeBackend = backend
		return c.withExport(ctx, m, format, dtype)
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return ModelRef{}, fmt.Errorf("look up the %s model: %w", DefaultAlias, err)
	}
	m, _, err = scanRef(c.pool.QueryRow(ctx, `SELECT `+refColumns+`
		FROM ground_checkpoints c JOIN ground_runs r ON r.run_id = c.run_id
		WHERE r.completed_at IS NOT NULL
		ORDER BY r.completed_at DESC, c.stage DESC, c.step DESC, c.recorded_at DESC LIMIT 1`))
	if errors.Is(err, pgx.ErrNoRows) {
		return ModelRef{}, newError(CodeNoModel, "no trained model yet: run a pipeline (POST /api/pipelines) or name a checkpoint_id")
	}
	if err != nil {
		return ModelRef{}, fmt.Errorf("look up the newest model: %w", err)
	}
	return m, nil
}

var _ Promoter = (*PGCatalog)(nil)

// Promote points alias at a model version: a checkpoint id or
// "<checkpoint>@<format>-<dtype>" (ParseModel), on its default backend
// (the Pipeline's promotion and workflows.Promoter call this).
func (c *PGCatalog) Promote(ctx context.Context, alias, model string) (events.ModelPromoted, error) {
	m, err := ParseModel(model)
	if err != nil {
		return events.ModelPromoted{}, err
	}
	return c.PromoteModel(ctx, alias, m)
}

// PromoteModel implements Promoter: the alias row and the model.promoted
// fact commit together. An export must exist (services/train's
// model.exported reached this service) when it is promoted, so that the
// alias never points at nothing.
func (c *PGCatalog) PromoteModel(ctx context.Context, alias string, m ModelSpec) (events.ModelPromoted, error) {
	ctx, span := tracer.Start(ctx, "ground.catalog.Promote")
	defer span.End()
	span.SetAttributes(attribute.String("alias", alias), attribute.String("model_version", m.String()), attribute.String("backend", m.Backend))
	if !aliasPattern.MatchString(alias) {
		return events.ModelPromoted{}, newError(CodeBadRequest, "alias %q: want lower-case letters, digits, '.', '_' or '-', at most 63", alias)
	}
	if (m.Format == "") != (m.Dtype == "") {
		return events.ModelPromoted{}, newError(CodeBadRequest, "model %s: an export needs both its format and its dtype (got format %q, dtype %q)", m, m.Format, m.Dtype)
	}
	ref, err := c.Checkpoint(ctx, m.CheckpointID)
	if err != nil {
		return events.ModelPromoted{}, err
	}
	if len(ref.ModelConfig) == 0 || ref.TokenizerKey == "" {
		return events.ModelPromoted{}, newError(CodeBadRequest, "checkpoint %s: its run records no model config or tokenizer", m.CheckpointID)
	}
	if ref, err = c.withExport(ctx, ref, m.Format, m.Dtype); err != nil {
		return events.ModelPromoted{}, err
	}
	p := events.ModelPromoted{Alias: alias, CheckpointID: ref.CheckpointID, ModelVersion: ref.Version(), RunID: ref.RunID,
		Stage: ref.Stage, Step: ref.Step, Backend: m.Backend}
	if x := ref.Export; x != nil {
		p.Format, p.Dtype, p.ExportBlobKey, p.ExportSHA256 = x.Format, x.Dtype, x.BlobKey, x.SHA256
	}
	err = store.WithTx(ctx, c.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `
			INSERT INTO model_aliases (alias, checkpoint_id, format, dtype, backend) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (alias) DO UPDATE SET checkpoint_id = excluded.checkpoint_id, format = excluded.format,
				dtype = excluded.dtype, backend = excluded.backend, promoted_at = now()
			RETURNING promoted_at`, alias, ref.CheckpointID, p.Format, p.Dtype, p.Backend).Scan(&p.PromotedAt); err != nil {
			return fmt.Errorf("promote %s to %s: %w", p.ModelVersion, alias, err)
		}
		return outbox.Add(ctx, tx, events.TopicModelPromoted, p, nil)
	})
	if err != nil {
		return events.ModelPromoted{}, err
	}
	return p, nil
}
