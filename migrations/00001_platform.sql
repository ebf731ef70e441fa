-- Platform tables shared by every service: the transactional outbox, the
-- consumer idempotency record, the poison queue's record, lineage edges and
-- the Temporal activity bridge's correlation table.

-- +goose Up
CREATE TABLE IF NOT EXISTS outbox (
    -- seq orders rows for the relay; id is the message UUID consumers dedupe on.
    seq          bigserial   NOT NULL,
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    topic        text        NOT NULL,
    payload      jsonb       NOT NULL,
    metadata     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS processed_messages (
    consumer     text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS processed_messages_processed_at_idx ON processed_messages (processed_at);

CREATE TABLE IF NOT EXISTS poison_messages (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    topic      text        NOT NULL,
    consumer   text        NOT NULL,
    message_id text        NOT NULL,
    -- bytea: a poisoned payload need not be valid JSON.
    payload    bytea,
    metadata   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    reason     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS poison_messages_topic_idx ON poison_messages (topic, created_at);

CREATE TABLE IF NOT EXISTS lineage_edges (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    src_kind   text        NOT NULL,
    src_id     text        NOT NULL,
    dst_kind   text        NOT NULL,
    dst_id     text        NOT NULL,
    relation   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (src_kind, src_id, dst_kind, dst_id, relation)
);
CREATE INDEX IF NOT EXISTS lineage_edges_dst_idx ON lineage_edges (dst_kind, dst_id);

CREATE TABLE IF NOT EXISTS activity_bridge (
    correlation_id text        PRIMARY KEY,
    task_token     bytea       NOT NULL,
    workflow_id    text,
    run_id         text,
    activity_id    text,
    topic          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz
);

-- +goose Down
DROP TABLE IF EXISTS activity_bridge;
DROP TABLE IF EXISTS lineage_edges;
DROP TABLE IF EXISTS poison_messages;
DROP TABLE IF EXISTS processed_messages;
DROP TABLE IF EXISTS outbox;
