package ground

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/groundmesh/groundmesh/internal/events"
)

// ModelSpec names what serves a request or an alias: a checkpoint, or its
// export in a deployment format and dtype (both set or both empty), on a
// compute backend ("" for the default).
type ModelSpec struct {
	CheckpointID string
	Format       string
	Dtype        string
	Backend      string
}

// String is the spec's model version, "<checkpoint>" or
// "<checkpoint>@<format>-<dtype>" (events.ModelVersion); the backend is
// not part of it.
func (m ModelSpec) String() string { return events.ModelVersion(m.CheckpointID, m.Format, m.Dtype) }

// modelSuffix is the "@<format>-<dtype>" of a model version: a format is
// letters and digits, a dtype letters, digits and '_' ("q8_0").
var modelSuffix = regexp.MustCompile(`^([a-z][a-z0-9]*)-([a-z0-9_]+)$`)

// ParseModel reads a model version: a checkpoint id, or
// "<checkpoint>@<format>-<dtype>" for its export (e.g.
// "3f2c…@gguf-q8_0", the form eval scores an export under). The format
// and dtype are checked against what exists when the export is looked up.
func ParseModel(s string) (ModelSpec, error) {
	id, suffix, ok := strings.Cut(s, "@")
	if !ok {
		return ModelSpec{CheckpointID: s}, nil
	}
	m := modelSuffix.FindStringSubmatch(suffix)
	if id == "" || m == nil {
		return ModelSpec{}, newError(CodeBadRequest, "model %q: want a checkpoint id, or <checkpoint>@<format>-<dtype> for its export (e.g. <checkpoint>@gguf-q8_0)", s)
	}
	return ModelSpec{CheckpointID: id, Format: m[1], Dtype: m[2]}, nil
}

// requestModel is the model a request names: CheckpointID (a model
// version), Export and Backend together. Export and a model version's
// suffix must agree where both are given.
func requestModel(req events.GroundRequested) (ModelSpec, error) {
	m, err := ParseModel(req.CheckpointID)
	if err != nil {
		return m, err
	}
	m.Backend = req.Backend
	if x := req.Export; x != nil {
		if x.Format == "" || x.Dtype == "" {
			return m, newError(CodeBadRequest, "export: format and dtype are both required (got format %q, dtype %q), e.g. {\"format\": \"gguf\", \"dtype\": \"q8_0\"}", x.Format, x.Dtype)
		}
		if m.Format != "" && (m.Format != x.Format || m.Dtype != x.Dtype) {
			return m, newError(CodeBadRequest, "checkpoint_id %q names the export %s-%s, export names %s-%s: give one", req.CheckpointID, m.Format, m.Dtype, x.Format, x.Dtype)
		}
		m.Format, m.Dtype = x.Format, x.Dtype
	}
	return m, nil
}

// ExportRef is an export of a checkpoint as services/train recorded it
// (its model.exported fact): the file served instead of the checkpoint's.
type ExportRef struct {
	ID     string
	Format string
	Dtype  string
	// BlobKey and SHA256 are the export file's blob key and hash.
	BlobKey string
	SHA256  string
	// ModelConfigSHA256 is the hash of the architecture config the file
	// holds (the run's).
	ModelConfigSHA256 string
}

// checkExportForm refuses, before anything is looked up, an export whose
// format or dtype no export has (events.ExportDtypes, what services/train
// writes).
func checkExportForm(m ModelSpec) error {
	if m.Format == "" {
		return nil
	}
	dtypes, ok := events.ExportDtypes[m.Format]
	if !ok {
		formats := slices.Sorted(maps.Keys(events.ExportDtypes))
		return newError(CodeBadRequest, "model %s: format %q is not an export format (have: %s)", m, m.Format, strings.Join(formats, ", "))
	}
	if !slices.Contains(dtypes, m.Dtype) {
		return newError(CodeBadRequest, "model %s: dtype %q is not one a %s export holds (have: %s)", m, m.Dtype, m.Format, strings.Join(dtypes, ", "))
	}
	return nil
}

// exportHint is how a person makes the export m names.
func exportHint(m ModelSpec) string {
	return fmt.Sprintf("export it first: `groundmesh export %s --format %s --dtype %s` (or the Export workflow with {\"checkpoint_id\": %q, \"format\": %q, \"dtype\": %q})",
		m.CheckpointID, m.Format, m.Dtype, m.CheckpointID, m.Format, m.Dtype)
}

// errExportNotFound is the answer for an export that services/train has
// not recorded (or whose file is gone).
func errExportNotFound(m ModelSpec, why string) *Error {
	return newError(CodeExportNotFound, "checkpoint %s has no %s export in dtype %s%s: %s", m.CheckpointID, m.Format, m.Dtype, why, exportHint(m))
}

// Export implements Catalog from ground_exports (services/train's
// model.exported facts).
func (c *PGCatalog) Export(ctx context.Context, checkpointID, format, dtype string) (ExportRef, error) {
	ctx, span := tracer.Start(ctx, "ground.catalog.Export")
	defer span.End()
	var x ExportRef
	err := c.pool.QueryRow(ctx, `SELECT export_id, format, dtype, blob_key, sha256, model_config_sha256
		FROM ground_exports WHERE checkpoint_id = $1 AND format = $2 AND dtype = $3`, checkpointID, format, dtype).Scan(
		&x.ID, &x.Format, &x.Dtype, &x.BlobKey, &x.SHA256, &x.ModelConfigSHA256)
	if errors.Is(err, pgx.ErrNoRows) {
		return ExportRef{}, errExportNotFound(ModelSpec{CheckpointID: checkpointID, Format: format, Dtype: dtype}, "")
	}
	if err != nil {
		return ExportRef{}, fmt.Errorf("look up the %s-%s export of checkpoint %s: %w", format, dtype, checkpointID, err)
	}
	return x, nil
}
