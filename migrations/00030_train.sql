-- services/train: runs, their stages, checkpoints and the loss curve.
-- No foreign key to synth_sets: migrations of different owners apply in any
-- order, and a run outlives nothing it points at by design.

-- +goose Up
CREATE TABLE IF NOT EXISTS runs (
    id            uuid        PRIMARY KEY,
    synth_set_id  uuid        NOT NULL,
    backend       text        NOT NULL,
    -- The run spec with every default filled in: a resumed run uses it, not
    -- the spec of the request that resumed it.
    spec          jsonb       NOT NULL,
    -- The model architecture (JSON of internal/model.Config) and the blob key
    -- of the tokenizer, known once the data is prepared.
    model_config  jsonb,
    tokenizer_key text,
    status        text        NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'completed', 'failed')),
    current_stage text,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS runs_synth_set_idx ON runs (synth_set_id);

CREATE TABLE IF NOT EXISTS run_stages (
    run_id      uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stage       text        NOT NULL,
    status      text        NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'completed', 'failed')),
    steps       integer     NOT NULL,
    -- step is the last step recorded (a loss point or a checkpoint).
    step        integer     NOT NULL DEFAULT 0,
    first_loss  double precision,
    last_loss   double precision,
    attempts    integer     NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (run_id, stage)
);

CREATE TABLE IF NOT EXISTS checkpoints (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    run_id     uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stage      text        NOT NULL,
    step       integer     NOT NULL,
    loss       double precision NOT NULL,
    blob_key   text        NOT NULL,
    sha256     text        NOT NULL,
    bytes      bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- A resumed run reports a step again at most: it must not add a row.
    UNIQUE (run_id, stage, step)
);

CREATE TABLE IF NOT EXISTS train_metrics (
    run_id         uuid             NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stage          text             NOT NULL,
    step           integer          NOT NULL,
    loss           double precision NOT NULL,
    lr             double precision NOT NULL,
    tokens_per_sec double precision NOT NULL,
    recorded_at    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, stage, step)
);

-- +goose Down
DROP TABLE IF EXISTS train_metrics;
DROP TABLE IF EXISTS checkpoints;
DROP TABLE IF EXISTS run_stages;
DROP TABLE IF EXISTS runs;
