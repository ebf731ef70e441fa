-- services/ground: its own projection of the models it can serve, filled
-- from services/train's facts on the bus (train.completed: a run's
-- backend, model config and tokenizer and the final checkpoint of each
-- stage; checkpoint.saved: every checkpoint; model.exported: every export).
-- Ground owns these tables so that it reads no table of services/train:
-- train may change its schema, move to another database or be down, and
-- ground still serves what it has been told about.
--
-- Ids are services/train's, kept as text: ground does not interpret them
-- (no foreign keys: owners migrate independently). A checkpoint may arrive
-- (checkpoint.saved) before its run's facts (train.completed); until they
-- do it cannot be served, since the model config and tokenizer are the
-- run's.
--
-- The INSERT ... SELECT statements below are a one-time data migration at
-- upgrade, and the only place where ground reads train's tables: a
-- database from before this change holds models that were trained (and
-- whose facts went by on the bus) before ground kept its own record, and
-- they must keep serving. ON CONFLICT DO NOTHING makes them idempotent,
-- and a fact consumed later overwrites nothing it should not.

-- +goose Up
CREATE TABLE IF NOT EXISTS ground_runs (
    run_id              text        PRIMARY KEY,
    backend             text        NOT NULL,
    -- internal/model.Config as JSON, its model.ConfigSHA256 ('' for runs
    -- backfilled at upgrade) and the tokenizer's blob key.
    model_config        jsonb       NOT NULL,
    model_config_sha256 text        NOT NULL DEFAULT '',
    tokenizer_key       text        NOT NULL,
    -- When the run completed (train.completed's published_at); NULL for a
    -- run backfilled before it completed. Latest serves the newest.
    completed_at        timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ground_runs_completed_idx ON ground_runs (completed_at DESC) WHERE completed_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS ground_checkpoints (
    checkpoint_id       text        PRIMARY KEY,
    run_id              text        NOT NULL,
    stage               text        NOT NULL,
    step                integer     NOT NULL,
    blob_key            text        NOT NULL,
    sha256              text        NOT NULL DEFAULT '',
    model_config_sha256 text        NOT NULL DEFAULT '',
    recorded_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ground_checkpoints_run_idx ON ground_checkpoints (run_id, stage, step);

CREATE TABLE IF NOT EXISTS ground_exports (
    checkpoint_id       text        NOT NULL,
    format              text        NOT NULL,
    dtype               text        NOT NULL,
    export_id           text        NOT NULL,
    run_id              text        NOT NULL,
    blob_key            text        NOT NULL,
    sha256              text        NOT NULL,
    model_config_sha256 text        NOT NULL DEFAULT '',
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (checkpoint_id, format, dtype)
);

-- The one-time backfill from services/train's tables (see above).
INSERT INTO ground_runs (run_id, backend, model_config, tokenizer_key, completed_at)
SELECT id::text, backend, model_config, coalesce(tokenizer_key, ''),
       CASE WHEN status = 'completed' THEN updated_at END
FROM runs WHERE model_config IS NOT NULL
ON CONFLICT DO NOTHING;

INSERT INTO ground_checkpoints (checkpoint_id, run_id, stage, step, blob_key, sha256, recorded_at)
SELECT id::text, run_id::text, stage, step, blob_key, sha256, created_at
FROM checkpoints
ON CONFLICT DO NOTHING;

INSERT INTO ground_exports (checkpoint_id, format, dtype, export_id, run_id, blob_key, sha256, model_config_sha256, recorded_at)
SELECT checkpoint_id::text, format, dtype, id::text, run_id::text, blob_key, sha256, model_config_sha256, created_at
FROM model_exports
ON CONFLICT DO NOTHING;

-- +goose Down
DROP TABLE IF EXISTS ground_exports;
DROP TABLE IF EXISTS ground_checkpoints;
DROP TABLE IF EXISTS ground_runs;
