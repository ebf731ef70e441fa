package workflows

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PGTokens is the Postgres TokenStore (table activity_bridge).
type PGTokens struct {
	Pool *pgxpool.Pool
}

var _ TokenStore = (*PGTokens)(nil)

// Save records a pending activity; saving the same correlation id again
// (an activity retried at the same attempt) replaces its token.
func (s *PGTokens) Save(ctx context.Context, p Pending) error {
	_, err := s.Pool.Exec(ctx, `
INSERT INTO activity_bridge (correlation_id, task_token, workflow_id, run_id, activity_id, topic)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (correlation_id) DO UPDATE SET task_token = EXCLUDED.task_token, completed_at = NULL`,
		p.CorrelationID, p.TaskToken, p.WorkflowID, p.RunID, p.ActivityID, p.Topic)
	if err != nil {
		return fmt.Errorf("insert activity_bridge: %w", err)
	}
	return nil
}

// Lookup returns the pending activity of a correlation id; ok is false when
// it is unknown or already completed.
func (s *PGTokens) Lookup(ctx context.Context, corr string) (Pending, bool, error) {
	p := Pending{CorrelationID: corr}
	err := s.Pool.QueryRow(ctx, `
SELECT task_token, workflow_id, run_id, activity_id, topic FROM activity_bridge
WHERE correlation_id = $1 AND completed_at IS NULL`, corr).Scan(&p.TaskToken, &p.WorkflowID, &p.RunID, &p.ActivityID, &p.Topic)
	if errors.Is(err, pgx.ErrNoRows) {
		return Pending{}, false, nil
	}
	if err != nil {
		return Pending{}, false, fmt.Errorf("select activity_bridge: %w", err)
	}
	return p, true, nil
}

// MarkDone marks a correlation id completed.
func (s *PGTokens) MarkDone(ctx context.Context, corr string) error {
	if _, err := s.Pool.Exec(ctx, `UPDATE activity_bridge SET completed_at = now() WHERE correlation_id = $1`, corr); err != nil {
		return fmt.Errorf("update activity_bridge: %w", err)
	}
	return nil
}

// Attempts returns the other pending attempts of p's activity.
func (s *PGTokens) Attempts(ctx context.Context, p Pending) ([]Pending, error) {
	if p.WorkflowID == "" || p.ActivityID == "" {
		return nil, nil
	}
	rows, err := s.Pool.Query(ctx, `
SELECT correlation_id, task_token, workflow_id, run_id, activity_id, topic FROM activity_bridge
WHERE workflow_id = $1 AND run_id = $2 AND activity_id = $3 AND correlation_id <> $4 AND completed_at IS NULL
ORDER BY correlation_id`, p.WorkflowID, p.RunID, p.ActivityID, p.CorrelationID)
	if err != nil {
		return nil, fmt.Errorf("select activity_bridge: %w", err)
	}
	defer rows.Close()
	var out []Pending
	for rows.Next() {
		var o Pending
		if err := rows.Scan(&o.CorrelationID, &o.TaskToken, &o.WorkflowID, &o.RunID, &o.ActivityID, &o.Topic); err != nil {
			return nil, fmt.Errorf("read activity_bridge: %w", err)
		}
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read activity_bridge: %w", err)
	}
	return out, nil
}
