-- services/train: a checkpoint written in a deployment format (GGUF), in
-- the blob store, so that eval and ground can load "this checkpoint as
-- q8_0 GGUF". One row per (checkpoint, format, dtype): exporting again
-- answers the row.

-- +goose Up
CREATE TABLE IF NOT EXISTS model_exports (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    checkpoint_id uuid        NOT NULL REFERENCES checkpoints (id) ON DELETE CASCADE,
    run_id        uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    format        text        NOT NULL CHECK (format IN ('gguf')),
    dtype         text        NOT NULL CHECK (dtype IN ('float32', 'float16', 'q8_0', 'q4_0')),
    blob_key      text        NOT NULL,
    sha256        text        NOT NULL,
    bytes         bigint      NOT NULL CHECK (bytes > 0),
    model_config_sha256 text  NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (checkpoint_id, format, dtype)
);

-- +goose Down
DROP TABLE IF EXISTS model_exports;
