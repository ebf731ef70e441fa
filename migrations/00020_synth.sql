-- services/synth: synthesized alignment sets. One row per (dataset version,
-- build parameters): the same request finds its row and reuses the set. A
-- row turns 'ready' in one transaction with its lineage edge (dataset ->
-- synth set); manifest_key then names a complete manifest in the blob store.

-- +goose Up
CREATE TABLE IF NOT EXISTS synth_sets (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- dataset_versions.id of services/ingest (not a foreign key: tables of
    -- other owners migrate independently)
    dataset_id     uuid        NOT NULL,
    seed           bigint      NOT NULL,
    -- normalized build options (synth.BuildOptions as JSON) and their sha256
    params         jsonb       NOT NULL,
    params_hash    text        NOT NULL,
    -- sha256 over the shards (name and digest); '' until ready
    content_hash   text        NOT NULL DEFAULT '',
    manifest_key   text        NOT NULL DEFAULT '',
    -- flat counts: total, stage/*, task/*, direction/*, scale/*, size_bin/*, split/*
    counts         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status         text        NOT NULL DEFAULT 'building' CHECK (status IN ('building', 'ready', 'failed')),
    error          text        NOT NULL DEFAULT '',
    correlation_id text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- the content hash is unique per parameters: same inputs, same set
    UNIQUE (dataset_id, params_hash)
);
CREATE INDEX IF NOT EXISTS synth_sets_content_hash_idx ON synth_sets (content_hash) WHERE content_hash <> '';
CREATE INDEX IF NOT EXISTS synth_sets_dataset_idx ON synth_sets (dataset_id, created_at);

-- +goose Down
DROP TABLE IF EXISTS synth_sets;
