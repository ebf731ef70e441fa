-- The worker registry: every `groundmesh worker` (and `up`) process that
-- consumes commands records which services, queues and backends it runs,
-- and refreshes seen_at while it lives. The Command activity reads it to
-- say when a command's queue has no live worker; operators read it to see
-- who serves what.

-- +goose Up
CREATE TABLE IF NOT EXISTS workers (
    worker_id  text        PRIMARY KEY,
    host       text        NOT NULL,
    pid        integer     NOT NULL,
    services   text[]      NOT NULL,
    queues     text[]      NOT NULL,
    backends   text[]      NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE IF EXISTS workers;
