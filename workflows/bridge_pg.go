package workflows

import (
	"context"
	"fmt"

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

// Waiting returns the pending activity of a correlation id, then the
// other pending attempts of its activity, in one query.
func (s *PGTokens) Waiting(ctx context.Context, corr string) ([]Pending, error) {
	rows, err := s.Pool.Query(ctx, `
SELECT b.correlation_id, b.task_token, b.workflow_id, b.run_id, b.activity_id, b.topic
FROM activity_bridge a JOIN activity_bridge b
  ON b.correlation_id = a.correlation_id
  OR (a.workflow_id <> '' AND a.activity_id <> '' AND b.workflow_id = a.workflow_id
      AND b.run_id = a.run_id AND b.activity_id = a.activity_id)
WHERE a.correlation_id = $1 AND a.completed_at IS NULL AND b.completed_at IS NULL
ORDER BY b.correlation_id <> a.correlation_id, b.correlation_id`, corr)
	if err != nil {
		return nil, fmt.Errorf("select activity_bridge: %w", err)
	}
	defer rows.Close()
	var out []Pending
	for rows.Next() {
		var p Pending
		if err := rows.Scan(&p.CorrelationID, &p.TaskToken, &p.WorkflowID, &p.RunID, &p.ActivityID, &p.Topic); err != nil {
			return nil, fmt.Errorf("read activity_bridge: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read activity_bridge: %w", err)
	}
	return out, nil
}

// MarkDone marks a correlation id completed.
func (s *PGTokens) MarkDone(ctx context.Context, corr string) error {
	if _, err := s.Pool.Exec(ctx, `UPDATE activity_bridge SET completed_at = now() WHERE correlation_id = $1`, corr); err != nil {
		return fmt.Errorf("update activity_bridge: %w", err)
	}
	return nil
}
