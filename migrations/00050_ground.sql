-- services/ground: the grounding requests it has accepted, by correlation
-- id, so that a duplicate ground.requested (the same request published
-- again under a new message id) is answered once. A redelivery of the same
-- message (same message id) is still served: the first delivery may not
-- have been answered. Rows older than a day are deleted by the service.

-- +goose Up
CREATE TABLE IF NOT EXISTS ground_requests (
    correlation_id text        PRIMARY KEY,
    message_id     text        NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ground_requests_received_idx ON ground_requests (received_at);

-- +goose Down
DROP TABLE IF EXISTS ground_requests;
