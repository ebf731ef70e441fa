-- services/ground: model aliases. A request that names no checkpoint is
-- served by the checkpoint promoted to "production" (or, before any
-- promotion, the newest checkpoint of the most recently completed run).
-- A promotion writes its fact, model.promoted, through the outbox in the
-- same transaction. checkpoint_id is services/train's id (no foreign key:
-- owners migrate independently).

-- +goose Up
CREATE TABLE IF NOT EXISTS model_aliases (
    alias         text        PRIMARY KEY,
    checkpoint_id uuid        NOT NULL,
    promoted_at   timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE IF EXISTS model_aliases;
