package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"reflect"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/outbox"
	"github.com/groundmesh/groundmesh/internal/store"
)

// pgStore is the service's Postgres repository (tables of
// migrations/00030_train.sql).
type pgStore struct {
	pool *pgxpool.Pool
}

// lockRun takes a session advisory lock for the run on a connection of
// its own, so that two workers never train one run at once; the lock dies
// with the connection if the worker dies.
func (s *pgStore) lockRun(ctx context.Context, runID string) (release func(), err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("lock run %s: %w", runID, err)
	}
	h := fnv.New64a()
	h.Write([]byte("groundmesh/train/" + runID))
	key := int64(h.Sum64())
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&ok); err != nil {
		conn.Release()
		return nil, fmt.Errorf("lock run %s: %w", runID, err)
	}
	if !ok {
		conn.Release()
		return nil, fmt.Errorf("lock run %s: %w", runID, ErrRunBusy)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, key); err != nil {
			// Closing the connection drops the lock for sure.
			conn.Conn().Close(ctx)
		}
		conn.Release()
	}, nil
}

// runRow is a runs row.
type runRow struct {
	ID           string
	SynthSetID   string
	Backend      string
	Spec         []byte
	ModelConfig  []byte
	TokenizerKey string
	Status       string
	CurrentStage string
	UpdatedAt    time.Time
	// Synth is the synth set's facts the run was requested with; nil for
	// a run recorded before they were (the migration fills them).
	Synth *events.SynthFacts
}

// ensureRun creates the run (with its lineage edge from the synth set)
// unless it exists, and returns the stored row. An existing run that
// recorded no synth set facts gets synth's.
func (s *pgStore) ensureRun(ctx context.Context, runID, synthSetID, backend string, spec []byte, synth events.SynthFacts) (runRow, bool, error) {
	created := false
	facts, err := json.Marshal(synth)
	if err != nil {
		return runRow{}, false, fmt.Errorf("create run %s: encode synth set facts: %w", runID, err)
	}
	err = store.WithTx(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			INSERT INTO runs (id, synth_set_id, backend, spec, synth) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (id) DO NOTHING`, runID, synthSetID, backend, spec, facts)
		if err != nil {
			return fmt.Errorf("insert run: %w", err)
		}
		if created = tag.RowsAffected() == 1; created {
			return store.AddLineage(ctx, tx, "synth_set", synthSetID, "run", runID, "trained_on")
		}
		if _, err := tx.Exec(ctx, `UPDATE runs SET synth = $2 WHERE id = $1 AND synth IS NULL`, runID, facts); err != nil {
			return fmt.Errorf("record the synth set facts of run %s: %w", runID, err)
		}
		return nil
	})
	if err != nil {
		return runRow{}, false, fmt.Errorf("create run %s: %w", runID, err)
	}
	r, err := s.run(ctx, runID)
	return r, created, err
}

var errNoRun = errors.New("run not found")

func (s *pgStore) run(ctx context.Context, runID string) (runRow, error) {
	var r runRow
	err := s.pool.QueryRow(ctx, `
		SELECT id::text, synth_set_id::text, backend, spec, coalesce(model_config::text, ''), coalesce(tokenizer_key, ''),
		       status, coalesce(current_stage, ''), updated_at, synth
		FROM runs WHERE id = $1`, runID).Scan(&r.ID, &r.SynthSetID, &r.Backend, &r.Spec, &r.ModelConfig,
		&r.TokenizerKey, &r.Status, &r.CurrentStage, &r.UpdatedAt, &r.Synth)
	if errors.Is(err, pgx.ErrNoRows) {
		return runRow{}, fmt.Errorf("run %s: %w", runID, errNoRun)
	}
	if err != nil {
		return runRow{}, fmt.Errorf("read run %s: %w", runID, err)
	}
	return r, nil
}

func (s *pgStore) setRunData(ctx context.Context, runID string, modelConfig []byte, tokenizerKey string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE runs SET model_config = $2, tokenizer_key = $3, updated_at = now() WHERE id = $1`,
		runID, modelConfig, tokenizerKey)
	if err != nil {
		return fmt.Errorf("record run %s data: %w", runID, err)
	}
	return nil
}

func (s *pgStore) setRunStatus(ctx context.Context, runID, status, stage, errText string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE runs SET status = $2, current_stage = coalesce(nullif($3, ''), current_stage),
		                error = nullif($4, ''), updated_at = now()
		WHERE id = $1`, runID, status, stage, errText)
	if err != nil {
		return fmt.Errorf("set run %s status %s: %w", runID, status, err)
	}
	return nil
}

// stageRow is a run_stages row.
type stageRow struct {
	Stage     string
	Status    string
	Steps     int
	Step      int
	FirstLoss *float64
	LastLoss  *float64
}

func (s *pgStore) stages(ctx context.Context, runID string) (map[string]stageRow, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT stage, status, steps, step, first_loss, last_loss FROM run_stages WHERE run_id = $1`, runID)
	if err != nil {
		return nil, fmt.Errorf("read stages of run %s: %w", runID, err)
	}
	out := map[string]stageRow{}
	for rows.Next() {
		var r stageRow
		if err := rows.Scan(&r.Stage, &r.Status, &r.Steps, &r.Step, &r.FirstLoss, &r.LastLoss); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read stages of run %s: %w", runID, err)
		}
		out[r.Stage] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read stages of run %s: %w", runID, err)
	}
	return out, nil
}

func (s *pgStore) startStage(ctx context.Context, runID, stage string, steps int) error {
	return store.WithTx(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			INSERT INTO run_stages (run_id, stage, steps, attempts) VALUES ($1, $2, $3, 1)
			ON CONFLICT (run_id, stage) DO UPDATE SET status = 'running', attempts = run_stages.attempts + 1`,
			runID, stage, steps); err != nil {
			return fmt.Errorf("start stage %s: %w", stage, err)
		}
		if _, err := tx.Exec(ctx, `
			UPDATE runs SET status = 'running', current_stage = $2, error = NULL, updated_at = now() WHERE id = $1`,
			runID, stage); err != nil {
			return fmt.Errorf("start stage %s: %w", stage, err)
		}
		return nil
	})
}

// finishStage marks the stage completed, taking its first and last loss
// from the recorded loss curve.
func (s *pgStore) finishStage(ctx context.Context, runID, stage string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE run_stages SET status = 'completed', finished_at = now(),
		    step = greatest(step, coalesce((SELECT max(step) FROM train_metrics WHERE run_id = $1 AND stage = $2), 0)),
		    first_loss = (SELECT loss FROM train_metrics WHERE run_id = $1 AND stage = $2 ORDER BY step LIMIT 1),
		    last_loss = (SELECT loss FROM train_metrics WHERE run_id = $1 AND stage = $2 ORDER BY step DESC LIMIT 1)
		WHERE run_id = $1 AND stage = $2`, runID, stage)
	if err != nil {
		return fmt.Errorf("finish stage %s: %w", stage, err)
	}
	return nil
}

// checkpointRow is a checkpoints row.
type checkpointRow struct {
	ID      string
	Stage   string
	Step    int
	Loss    float64
	BlobKey string
	SHA256  string
	Bytes   int64
}

// lastCheckpoint returns the checkpoint of the highest step of a stage,
// nil if there is none.
func (s *pgStore) lastCheckpoint(ctx context.Context, runID, stage string) (*checkpointRow, error) {
	var c checkpointRow
	err := s.pool.QueryRow(ctx, `
		SELECT id::text, stage, step, loss, blob_key, sha256, bytes FROM checkpoints
		WHERE run_id = $1 AND stage = $2 ORDER BY step DESC LIMIT 1`, runID, stage).
		Scan(&c.ID, &c.Stage, &c.Step, &c.Loss, &c.BlobKey, &c.SHA256, &c.Bytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read last checkpoint of %s: %w", stage, err)
	}
	return &c, nil
}

// lossPoint is one train_metrics row.
type lossPoint struct {
	Step         int
	Loss         float64
	LR           float64
	TokensPerSec float64
}

func addMetrics(ctx context.Context, tx pgx.Tx, runID, stage string, points []lossPoint) error {
	if len(points) == 0 {
		return nil
	}
	batch := &pgx.Batch{}
	maxStep := 0
	for _, p := range points {
		batch.Queue(`
			INSERT INTO train_metrics (run_id, stage, step, loss, lr, tokens_per_sec) VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (run_id, stage, step) DO UPDATE
			SET loss = excluded.loss, lr = excluded.lr, tokens_per_sec = excluded.tokens_per_sec, recorded_at = now()`,
			runID, stage, p.Step, p.Loss, p.LR, p.TokensPerSec)
		maxStep = max(maxStep, p.Step)
	}
	last := points[len(points)-1]
	batch.Queue(`
		UPDATE run_stages SET step = greatest(step, $3), last_loss = $4,
		       first_loss = coalesce(first_loss, $5)
		WHERE run_id = $1 AND stage = $2`, runID, stage, maxStep, last.Loss, points[0].Loss)
	batch.Queue(`UPDATE runs SET updated_at = now() WHERE id = $1`, runID)
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("record %d loss points of %s: %w", len(points), stage, err)
	}
	return nil
}

// recordMetrics writes loss points in a transaction of their own.
func (s *pgStore) recordMetrics(ctx context.Context, runID, stage string, points []lossPoint) error {
	return store.WithTx(ctx, s.pool, func(tx pgx.Tx) error { return addMetrics(ctx, tx, runID, stage, points) })
}

// newCheckpoint is a checkpoint to record.
type newCheckpoint struct {
	RunID, Stage string
	Step         int
	Loss         float64
	BlobKey      string
	SHA256       string
	Bytes        int64
	PrevID       string // checkpoint it continues from; "" for the first of a run
	// ModelConfigSHA256 is the run's model.ConfigSHA256, published
	// with checkpoint.saved.
	ModelConfigSHA256 string
	Points            []lossPoint
	// Store puts the file into the blob store; it runs inside the
	// transaction, only when the row is new.
	Store func() error
}

// recordCheckpoint records a checkpoint, its loss points, lineage and the
// checkpoint.saved fact in one transaction. A step already recorded adds
// no row: the existing one is returned with dup set, and its sha256
// compared.
func (s *pgStore) recordCheckpoint(ctx context.Context, c newCheckpoint) (id string, dup bool, sameBytes bool, err error) {
	err = store.WithTx(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			INSERT INTO checkpoints (run_id, stage, step, loss, blob_key, sha256, bytes)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (run_id, stage, step) DO NOTHING
			RETURNING id::text`, c.RunID, c.Stage, c.Step, c.Loss, c.BlobKey, c.SHA256, c.Bytes).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			dup = true
			var sum string
			if err := tx.QueryRow(ctx, `
				SELECT id::text, sha256 FROM checkpoints WHERE run_id = $1 AND stage = $2 AND step = $3`,
				c.RunID, c.Stage, c.Step).Scan(&id, &sum); err != nil {
				return fmt.Errorf("read recorded checkpoint: %w", err)
			}
			sameBytes = sum == c.SHA256
			return addMetrics(ctx, tx, c.RunID, c.Stage, c.Points)
		}
		if err != nil {
			return fmt.Errorf("insert checkpoint: %w", err)
		}
		sameBytes = true
		if err := addMetrics(ctx, tx, c.RunID, c.Stage, c.Points); err != nil {
			return err
		}
		if err := store.AddLineage(ctx, tx, "run", c.RunID, "checkpoint", id, "produced"); err != nil {
			return err
		}
		if c.PrevID != "" {
			if err := store.AddLineage(ctx, tx, "checkpoint", c.PrevID, "checkpoint", id, "derived_from"); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE run_stages SET step = greatest(step, $3) WHERE run_id = $1 AND stage = $2`,
			c.RunID, c.Stage, c.Step); err != nil {
			return fmt.Errorf("update stage step: %w", err)
		}
		if err := outbox.Add(ctx, tx, events.TopicCheckpointSaved, events.CheckpointSaved{
			CheckpointID: id, RunID: c.RunID, Stage: c.Stage, Step: c.Step, Loss: c.Loss,
			BlobKey: c.BlobKey, SHA256: c.SHA256, ModelConfigSHA256: c.ModelConfigSHA256,
		}, nil); err != nil {
			return err
		}
		if c.Store != nil {
			return c.Store()
		}
		return nil
	})
	if err != nil {
		return "", false, false, fmt.Errorf("record checkpoint %s step %d: %w", c.Stage, c.Step, err)
	}
	return id, dup, sameBytes, nil
}

// latestMetric returns the newest loss point of a stage, if any.
func (s *pgStore) latestMetric(ctx context.Context, runID, stage string) (*lossPoint, error) {
	var p lossPoint
	err := s.pool.QueryRow(ctx, `
		SELECT step, loss, lr, tokens_per_sec FROM train_metrics WHERE run_id = $1 AND stage = $2
		ORDER BY step DESC LIMIT 1`, runID, stage).Scan(&p.Step, &p.Loss, &p.LR, &p.TokensPerSec)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read loss of %s: %w", stage, err)
	}
	return &p, nil
}

// losses returns the logged loss of each stage of a run, in step order,
// thinned to at most events.MaxLossPoints points a stage.
func (s *pgStore) losses(ctx context.Context, runID string) (map[string][]events.LossPoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT stage, step, loss FROM train_metrics WHERE run_id = $1 ORDER BY stage, step`, runID)
	if err != nil {
		return nil, fmt.Errorf("read losses of run %s: %w", runID, err)
	}
	defer rows.Close()
	out := map[string][]events.LossPoint{}
	for rows.Next() {
		var stage string
		var p events.LossPoint
		if err := rows.Scan(&stage, &p.Step, &p.Loss); err != nil {
			return nil, fmt.Errorf("read losses of run %s: %w", runID, err)
		}
		out[stage] = append(out[stage], p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read losses of run %s: %w", runID, err)
	}
	for st, pts := range out {
		out[st] = thinLosses(pts, events.MaxLossPoints)
	}
	return out, nil
}

// thinLosses keeps at most n of pts (n >= 2), evenly spread over their
// indices, the first and the last always among them.
func thinLosses(pts []events.LossPoint, n int) []events.LossPoint {
	if len(pts) <= n {
		return pts
	}
	out := make([]events.LossPoint, n)
	for i := range n {
		out[i] = pts[i*(len(pts)-1)/(n-1)]
	}
	return out
}

// specJSON encodes a spec for the runs row.
// specDiff lists the top-level fields (dotted one level down) in which two
// JSON specs differ in value, whatever their key order and spacing; a
// spec that does not decode counts as differing whole ("*").
func specDiff(a, b []byte) []string {
	var ma, mb map[string]any
	if json.Unmarshal(a, &ma) != nil || json.Unmarshal(b, &mb) != nil {
		return []string{"*"}
	}
	var diff []string
	for _, k := range unionKeys(ma, mb) {
		va, vb := ma[k], mb[k]
		if reflect.DeepEqual(va, vb) {
			continue
		}
		sa, oka := va.(map[string]any)
		sb, okb := vb.(map[string]any)
		if !oka || !okb {
			diff = append(diff, k)
			continue
		}
		for _, kk := range unionKeys(sa, sb) {
			if !reflect.DeepEqual(sa[kk], sb[kk]) {
				diff = append(diff, k+"."+kk)
			}
		}
	}
	return diff
}

// unionKeys are the keys of a and b, sorted.
func unionKeys(a, b map[string]any) []string {
	u := make(map[string]any, len(a)+len(b))
	maps.Copy(u, a)
	maps.Copy(u, b)
	return slices.Sorted(maps.Keys(u))
}

func specJSON(spec RunSpec) ([]byte, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("encode run spec: %w", err)
	}
	return b, nil
}
