package train

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/outbox"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/onnx"
)

// exportLayout is a format's file layout version and the blob key's
// suffix.
func exportLayout(format string) (version int, suffix string) {
	if format == "onnx" {
		// A tar of the manifest, the tokenizer and one ONNX model per
		// graph (model/onnx).
		return onnx.FormatVersion, "onnx.tar"
	}
	return model.GGUFFormatVersion, "gguf"
}

// Export writes a checkpoint in a deployment format to the blob store and
// records it (model_exports): a GGUF file (model.ExportGGUF) or an ONNX
// bundle (onnx.ExportModel) holding the run's architecture config and
// tokenizer, the weights in req.Dtype, and the checkpoint it came from. The checkpoint's bytes are checked against
// its recorded sha256 first. The same checkpoint, format and dtype again
// answer the recorded export (Reused) when its blob is still intact and
// of this build's layout of the format.
func (s *Service) Export(ctx context.Context, req events.ExportRequested) (out events.ExportCompleted, err error) {
	ctx, span := tracer.Start(ctx, "train.Export", trace.WithAttributes(
		attribute.String("checkpoint_id", req.CheckpointID), attribute.String("format", req.Format), attribute.String("dtype", req.Dtype)))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	out.CorrelationID = req.CorrelationID
	if req.Dtype == "" {
		req.Dtype = model.DtypeF32
	}
	switch {
	case events.ExportDtypes[req.Format] == nil:
		return out, fmt.Errorf("export: format %q: the formats are gguf and onnx: %w", req.Format, ErrInvalidRequest)
	case !slices.Contains(events.ExportDtypes[req.Format], req.Dtype):
		return out, fmt.Errorf("export: dtype %q: an export as %s is one of %v: %w", req.Dtype, req.Format, events.ExportDtypes[req.Format], ErrInvalidRequest)
	}
	if _, err := uuid.Parse(req.CheckpointID); err != nil {
		return out, fmt.Errorf("export: checkpoint id %q is not a uuid: %w", req.CheckpointID, ErrInvalidRequest)
	}
	ck, runID, err := s.store.checkpoint(ctx, req.CheckpointID)
	if err != nil {
		return out, err
	}
	// The key names the file layout's version: an export written by a
	// build with another layout is written again, not reused.
	version, suffix := exportLayout(req.Format)
	key := fmt.Sprintf("exports/%s/%s.v%d.%s", req.CheckpointID, req.Dtype, version, suffix)
	if prev, ok, err := s.store.export(ctx, req.CheckpointID, req.Format, req.Dtype); err != nil {
		return out, err
	} else if ok && prev.BlobKey == key && s.blobIntact(prev.BlobKey, prev.SHA256) {
		prev.CorrelationID, prev.Reused = req.CorrelationID, true
		return prev, nil
	}
	run, err := s.store.run(ctx, runID)
	if err != nil {
		return out, err
	}
	cfg, err := model.ParseConfig(run.ModelConfig)
	if err != nil {
		return out, fmt.Errorf("export: run %s's model config: %w", runID, err)
	}
	tokFile, err := s.cfg.Blob.Open(run.TokenizerKey)
	if err != nil {
		return out, fmt.Errorf("export: run %s's tokenizer: %w", runID, err)
	}
	tok, err := model.LoadTokenizer(tokFile)
	tokFile.Close()
	if err != nil {
		return out, fmt.Errorf("export: run %s's tokenizer: %w", runID, err)
	}
	path, err := s.cfg.Blob.LocalPath(ck.BlobKey)
	if err != nil {
		return out, err
	}
	if sum, _, err := blob.FileSHA256(path); err != nil {
		return out, fmt.Errorf("export: checkpoint %s: %w", ck.ID, err)
	} else if sum != ck.SHA256 {
		return out, fmt.Errorf("export: checkpoint %s: its blob %s hashes to %s, recorded %s: %w", ck.ID, ck.BlobKey, sum, ck.SHA256, ErrInvalidRequest)
	}
	ts, _, err := model.ReadSafetensorsFile(path)
	if err != nil {
		return out, fmt.Errorf("export: checkpoint %s: %w", ck.ID, err)
	}
	weights := map[string][]float32{}
	for _, t := range ts {
		if t.DType == "F32" {
			w, err := model.Dequantize(model.DtypeF32, t.Data, len(t.Data)/4)
			if err != nil {
				return out, fmt.Errorf("export: checkpoint %s: tensor %s: %w", ck.ID, t.Name, err)
			}
			weights[t.Name] = w
		}
	}
	name := fmt.Sprintf("tinygrounder run %s %s step %d", runID, ck.Stage, ck.Step)
	var buf bytes.Buffer
	switch req.Format {
	case "onnx":
		b, _, err := onnx.ExportModel(cfg, weights, req.Dtype, tok, map[string]string{
			"name": name, "checkpoint_id": ck.ID, "checkpoint_sha256": ck.SHA256, "run_id": runID,
		})
		if err != nil {
			return out, fmt.Errorf("export: checkpoint %s: %w: %w", ck.ID, err, ErrInvalidRequest)
		}
		buf.Write(b)
	default:
		g, err := model.ExportGGUF(cfg, weights, req.Dtype, tok, map[string]any{
			"general.name":                 name,
			"groundmesh.checkpoint_id":     ck.ID,
			"groundmesh.checkpoint_sha256": ck.SHA256,
			"groundmesh.run_id":            runID,
		})
		if err != nil {
			return out, fmt.Errorf("export: checkpoint %s: %w: %w", ck.ID, err, ErrInvalidRequest)
		}
		if _, err := model.WriteGGUF(&buf, g); err != nil {
			return out, err
		}
	}
	sum, n, err := s.cfg.Blob.Put(key, &buf)
	if err != nil {
		return out, fmt.Errorf("export: %w", err)
	}
	out = events.ExportCompleted{CorrelationID: req.CorrelationID, CheckpointID: ck.ID, CheckpointSHA256: ck.SHA256, RunID: runID,
		Format: req.Format, Dtype: req.Dtype, BlobKey: key, SHA256: sum, Bytes: n, ModelConfigSHA256: cfg.SHA256()}
	if out.ExportID, out.CreatedAt, err = s.store.recordExport(ctx, out); err != nil {
		return out, err
	}
	s.log.InfoContext(ctx, "exported", "checkpoint", ck.ID, "format", req.Format, "dtype", req.Dtype, "bytes", n, "blob", key)
	return out, nil
}

// blobIntact reports whether key holds bytes hashing to sum.
func (s *Service) blobIntact(key, sum string) bool {
	path, err := s.cfg.Blob.LocalPath(key)
	if err != nil {
		return false
	}
	got, _, err := blob.FileSHA256(path)
	return err == nil && got == sum
}

// checkpoint reads a checkpoint and its run id.
func (s *pgStore) checkpoint(ctx context.Context, id string) (checkpointRow, string, error) {
	var c checkpointRow
	var runID string
	err := s.pool.QueryRow(ctx, `
		SELECT id::text, run_id::text, stage, step, loss, blob_key, sha256, bytes
		FROM checkpoints WHERE id = $1`, id).Scan(&c.ID, &runID, &c.Stage, &c.Step, &c.Loss, &c.BlobKey, &c.SHA256, &c.Bytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, "", fmt.Errorf("checkpoint %s: not found: %w", id, ErrInvalidRequest)
	}
	if err != nil {
		return c, "", fmt.Errorf("read checkpoint %s: %w", id, err)
	}
	return c, runID, nil
}

// export reads the recorded export of a checkpoint in a format and dtype.
func (s *pgStore) export(ctx context.Context, checkpointID, format, dtype string) (events.ExportCompleted, bool, error) {
	var e events.ExportCompleted
	err := s.pool.QueryRow(ctx, `
		SELECT x.id::text, x.checkpoint_id::text, c.sha256, x.run_id::text, x.format, x.dtype, x.blob_key, x.sha256, x.bytes,
		       x.model_config_sha256, x.created_at
		FROM model_exports x JOIN checkpoints c ON c.id = x.checkpoint_id
		WHERE x.checkpoint_id = $1 AND x.format = $2 AND x.dtype = $3`, checkpointID, format, dtype).Scan(
		&e.ExportID, &e.CheckpointID, &e.CheckpointSHA256, &e.RunID, &e.Format, &e.Dtype, &e.BlobKey, &e.SHA256, &e.Bytes,
		&e.ModelConfigSHA256, &e.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return e, false, nil
	}
	if err != nil {
		return e, false, fmt.Errorf("read export of %s: %w", checkpointID, err)
	}
	return e, true, nil
}

// recordExport records (or, for the same checkpoint, format and dtype,
// replaces) an export and returns its id and time. The model.exported fact
// commits with the row: the services that serve exports (services/ground)
// learn of every export from it, also of one made outside a train.export
// command (`groundmesh export`), whose answer nobody publishes.
func (s *pgStore) recordExport(ctx context.Context, e events.ExportCompleted) (string, time.Time, error) {
	var id string
	var at time.Time
	err := store.WithTx(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			INSERT INTO model_exports (checkpoint_id, run_id, format, dtype, blob_key, sha256, bytes, model_config_sha256)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (checkpoint_id, format, dtype) DO UPDATE
			SET blob_key = excluded.blob_key, sha256 = excluded.sha256, bytes = excluded.bytes,
			    model_config_sha256 = excluded.model_config_sha256, created_at = now()
			RETURNING id::text, created_at`,
			e.CheckpointID, e.RunID, e.Format, e.Dtype, e.BlobKey, e.SHA256, e.Bytes, e.ModelConfigSHA256).Scan(&id, &at)
		if err != nil {
			return fmt.Errorf("record export of %s: %w", e.CheckpointID, err)
		}
		fact := e
		fact.ExportID, fact.CreatedAt = id, at
		return outbox.Add(ctx, tx, events.TopicModelExported, fact, nil)
	})
	return id, at, err
}
