-- services/ground: an alias may serve an export of its checkpoint (the
-- file services/train recorded in model_exports for that format and
-- dtype) instead of the checkpoint file, on a chosen compute backend.
-- Empty format: the checkpoint itself; empty backend: the default (the
-- run's for a checkpoint, the format's export backend for an export).

-- +goose Up
ALTER TABLE model_aliases ADD COLUMN IF NOT EXISTS format  text NOT NULL DEFAULT '';
ALTER TABLE model_aliases ADD COLUMN IF NOT EXISTS dtype   text NOT NULL DEFAULT '';
ALTER TABLE model_aliases ADD COLUMN IF NOT EXISTS backend text NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE model_aliases DROP COLUMN IF EXISTS backend;
ALTER TABLE model_aliases DROP COLUMN IF EXISTS dtype;
ALTER TABLE model_aliases DROP COLUMN IF EXISTS format;
