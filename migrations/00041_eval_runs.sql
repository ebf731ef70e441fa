-- services/eval: the facts of each run it evaluated, as the eval request
-- carried them (events.RunFacts: checkpoints and their sha256, model
-- config, tokenizer, synth set, dataset, loss curve). Eval reads these, not
-- the tables of services/train, synth or ingest: a report rendered later
-- (groundmesh report) draws its loss curves and images from here.

-- +goose Up
CREATE TABLE IF NOT EXISTS eval_runs (
    run_id         uuid        PRIMARY KEY,
    facts          jsonb       NOT NULL,
    correlation_id text        NOT NULL DEFAULT '',
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE IF EXISTS eval_runs;
