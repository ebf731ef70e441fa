-- Evaluations (services/eval): one row per (checkpoint, benchmark, split)
-- scored, its metric values, and the blob key of the per-sample predictions
-- that every number can be audited against. Run, checkpoint, synth set and
-- dataset ids are the other services' ids; they are not foreign keys because
-- those tables belong to other owners and migrate independently.

-- +goose Up
CREATE TABLE IF NOT EXISTS evaluations (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    run_id             uuid        NOT NULL,
    -- NULL for baselines, which depend on no checkpoint.
    checkpoint_id      uuid,
    -- stage1, stage2, stage3; "baseline" for fixed-box baselines.
    stage              text        NOT NULL,
    synth_set_id       uuid,
    dataset_id         uuid,
    split              text        NOT NULL,
    benchmark          text        NOT NULL,
    predictions_key    text        NOT NULL,
    predictions_sha256 text        NOT NULL DEFAULT '',
    samples            integer     NOT NULL DEFAULT 0,
    correlation_id     text        NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS evaluations_run_idx
    ON evaluations (run_id, stage, benchmark, split, created_at DESC);
CREATE INDEX IF NOT EXISTS evaluations_checkpoint_idx ON evaluations (checkpoint_id);

CREATE TABLE IF NOT EXISTS eval_metrics (
    evaluation_id uuid             NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    name          text             NOT NULL,
    value         double precision NOT NULL,
    PRIMARY KEY (evaluation_id, name)
);

-- +goose Down
DROP TABLE IF EXISTS eval_metrics;
DROP TABLE IF EXISTS evaluations;
