package eval

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/outbox"
	"github.com/groundmesh/groundmesh/internal/store"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// querier runs queries: a *pgxpool.Pool or a pgx.Tx, so that a report can
// be rendered inside the transaction that records the evaluation.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// insertEvaluations records evaluations, their metrics and lineage edges.
func insertEvaluations(ctx context.Context, tx pgx.Tx, req events.EvalRequested, run RunInfo, evals []evaluation) error {
	for _, e := range evals {
		_, err := tx.Exec(ctx, `
			INSERT INTO evaluations (id, run_id, checkpoint_id, stage, synth_set_id, dataset_id, split, benchmark,
			                         predictions_key, predictions_sha256, samples, correlation_id)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
			e.ID, req.RunID, nullable(e.CheckpointID), e.Stage, nullable(run.SynthSetID), nullable(run.DatasetID),
			e.Split, e.Bench, e.PredictionsKey, e.SHA256, e.Samples, req.CorrelationID)
		if err != nil {
			return fmt.Errorf("insert evaluation %s/%s/%s: %w", e.Stage, e.Bench, e.Split, err)
		}
		b := &pgx.Batch{}
		for name, v := range e.Metrics {
			b.Queue(`INSERT INTO eval_metrics (evaluation_id, name, value) VALUES ($1, $2, $3)`, e.ID, name, v)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("insert metrics of evaluation %s: %w", e.ID, err)
		}
		edges := [][3]string{{"run", req.RunID, "evaluated"}}
		if e.CheckpointID != "" {
			edges = append(edges, [3]string{"checkpoint", e.CheckpointID, "evaluated"})
		}
		if run.SynthSetID != "" {
			edges = append(edges, [3]string{"synth_set", run.SynthSetID, "evaluated_on"})
		}
		if run.DatasetID != "" {
			edges = append(edges, [3]string{"dataset", run.DatasetID, "evaluated_on"})
		}
		edges = append(edges, [3]string{"blob", e.PredictionsKey, "predictions"})
		for _, ed := range edges {
			src, dst, rel := ed[0], "evaluation", ed[2]
			srcID, dstID := ed[1], e.ID
			if src == "blob" {
				// Predictions derive from the evaluation.
				src, srcID, dst, dstID = "evaluation", e.ID, "blob", ed[1]
			}
			if err := store.AddLineage(ctx, tx, src, srcID, dst, dstID, rel); err != nil {
				return err
			}
		}
	}
	return nil
}

// saveRunFacts keeps the run's facts as req carried them (the newest
// request's win), for reports rendered later.
func saveRunFacts(ctx context.Context, tx pgx.Tx, req events.EvalRequested) error {
	b, err := json.Marshal(req.Run)
	if err != nil {
		return fmt.Errorf("encode facts of run %s: %w", req.RunID, err)
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO eval_runs (run_id, facts, correlation_id) VALUES ($1, $2, $3)
		ON CONFLICT (run_id) DO UPDATE SET facts = excluded.facts, correlation_id = excluded.correlation_id, updated_at = now()`,
		req.RunID, b, req.CorrelationID); err != nil {
		return fmt.Errorf("record facts of run %s: %w", req.RunID, err)
	}
	return nil
}

// errNoFacts: no evaluation of the run has recorded its facts.
var errNoFacts = errors.New("no evaluation request recorded the run's facts")

// runFacts returns the facts recorded for a run (errNoFacts when none).
func runFacts(ctx context.Context, q querier, runID string) (events.RunFacts, error) {
	var b []byte
	err := q.QueryRow(ctx, `SELECT facts FROM eval_runs WHERE run_id = $1`, runID).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return events.RunFacts{}, fmt.Errorf("run %s: %w", runID, errNoFacts)
	}
	if err != nil {
		return events.RunFacts{}, fmt.Errorf("read facts of run %s: %w", runID, err)
	}
	var f events.RunFacts
	if err := json.Unmarshal(b, &f); err != nil {
		return events.RunFacts{}, fmt.Errorf("decode facts of run %s: %w", runID, err)
	}
	return f, nil
}

// EvaluationRow is one stored evaluation with its metrics.
type EvaluationRow struct {
	ID             string
	RunID          string
	CheckpointID   string
	Stage          string
	SynthSetID     string
	DatasetID      string
	Split          string
	Benchmark      string
	PredictionsKey string
	Samples        int
	CreatedAt      time.Time
	Metrics        map[string]float64
}

// latestEvaluations returns, for each (stage, benchmark, split) of a run,
// its most recent evaluation with metrics.
func latestEvaluations(ctx context.Context, q querier, runID string) ([]EvaluationRow, error) {
	rows, err := q.Query(ctx, `
		SELECT DISTINCT ON (stage, benchmark, split)
		       id::text, run_id::text, coalesce(checkpoint_id::text, ''), stage,
		       coalesce(synth_set_id::text, ''), coalesce(dataset_id::text, ''),
		       split, benchmark, predictions_key, samples, created_at
		FROM evaluations WHERE run_id = $1
		ORDER BY stage, benchmark, split, created_at DESC, id`, runID)
	if err != nil {
		return nil, fmt.Errorf("query evaluations of run %s: %w", runID, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (EvaluationRow, error) {
		var e EvaluationRow
		err := r.Scan(&e.ID, &e.RunID, &e.CheckpointID, &e.Stage, &e.SynthSetID, &e.DatasetID,
			&e.Split, &e.Benchmark, &e.PredictionsKey, &e.Samples, &e.CreatedAt)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("read evaluations of run %s: %w", runID, err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	idx := map[string]int{}
	ids := make([]string, len(out))
	for i := range out {
		idx[out[i].ID] = i
		ids[i] = out[i].ID
		out[i].Metrics = map[string]float64{}
	}
	mrows, err := q.Query(ctx, `SELECT evaluation_id::text, name, value FROM eval_metrics WHERE evaluation_id = ANY($1::uuid[])`, ids)
	if err != nil {
		return nil, fmt.Errorf("query metrics of run %s: %w", runID, err)
	}
	defer mrows.Close()
	for mrows.Next() {
		var id, name string
		var v float64
		if err := mrows.Scan(&id, &name, &v); err != nil {
			return nil, fmt.Errorf("read metrics of run %s: %w", runID, err)
		}
		out[idx[id]].Metrics[name] = v
	}
	if err := mrows.Err(); err != nil {
		return nil, fmt.Errorf("read metrics of run %s: %w", runID, err)
	}
	return out, nil
}

// addOutbox publishes a fact through the transactional outbox; a variable
// so that a test can make it fail and check that nothing commits.
var addOutbox = outbox.Add

// recordedAnswer is the answer of an evaluation already recorded under
// req's correlation id (ok false when none is): its evaluations and their
// metrics, read back from the tables. A request delivered again after its
// effects committed (its processed_messages row lost in a crash, or a
// retried attempt of the same command) is answered from what the first
// delivery recorded instead of recording a second set.
func recordedAnswer(ctx context.Context, q querier, req events.EvalRequested) (out events.EvaluationCompleted, ok bool, err error) {
	if req.CorrelationID == "" {
		return out, false, nil
	}
	rows, err := q.Query(ctx, `
		SELECT e.id, e.stage, e.benchmark, e.split, m.name, m.value
		FROM evaluations e LEFT JOIN eval_metrics m ON m.evaluation_id = e.id
		WHERE e.correlation_id = $1 AND e.run_id = $2
		ORDER BY e.created_at, e.id, m.name`, req.CorrelationID, req.RunID)
	if err != nil {
		return out, false, fmt.Errorf("look up evaluations of %s: %w", req.CorrelationID, err)
	}
	defer rows.Close()
	out = events.EvaluationCompleted{CorrelationID: req.CorrelationID, RunID: req.RunID, Metrics: map[string]float64{}}
	for rows.Next() {
		var id, stage, bench, split string
		var name *string
		var value *float64
		if err := rows.Scan(&id, &stage, &bench, &split, &name, &value); err != nil {
			return out, false, fmt.Errorf("read evaluations of %s: %w", req.CorrelationID, err)
		}
		if n := len(out.EvaluationIDs); n == 0 || out.EvaluationIDs[n-1] != id {
			out.EvaluationIDs = append(out.EvaluationIDs, id)
		}
		if name != nil && value != nil {
			out.Metrics[metricKey(stage, bench, split, *name)] = *value
		}
	}
	if err := rows.Err(); err != nil {
		return out, false, fmt.Errorf("read evaluations of %s: %w", req.CorrelationID, err)
	}
	if len(out.EvaluationIDs) == 0 {
		return events.EvaluationCompleted{}, false, nil
	}
	if req.Report {
		out.ReportKey = ReportKey(req.RunID)
	}
	return out, true, nil
}
