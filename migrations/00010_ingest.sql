-- services/ingest: datasets, their content-addressed versions, the files
-- each version was made of, and the records validation rejected.
-- A version row is written in one transaction with its files, rejects,
-- lineage edge and the dataset.ingested outbox message: a version that
-- exists is complete, so status only ever reads 'ready' today.

-- +goose Up
CREATE TABLE IF NOT EXISTS datasets (
    name       text        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS dataset_versions (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    dataset_name   text        NOT NULL REFERENCES datasets (name),
    -- sha256 (hex) of the canonical manifest: same files, same version.
    version        text        NOT NULL UNIQUE,
    format         text        NOT NULL,
    root           text        NOT NULL,
    -- the path that was ingested (a directory or an annotation file under root)
    source_path    text        NOT NULL,
    status         text        NOT NULL DEFAULT 'ready' CHECK (status IN ('ready')),
    -- images, objects, refs, relations, regions, rejected, clipped
    counts         jsonb       NOT NULL,
    -- images per split
    splits         jsonb       NOT NULL,
    -- manifest header (schema, name, format, root, source path, validation
    -- options, file count and bytes); the file list is dataset_files
    manifest       jsonb       NOT NULL,
    -- validation summary: bad fraction, threshold, rejects per reason
    report         jsonb       NOT NULL,
    correlation_id text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dataset_versions_name_idx ON dataset_versions (dataset_name, created_at);

CREATE TABLE IF NOT EXISTS dataset_files (
    version_id uuid   NOT NULL REFERENCES dataset_versions (id) ON DELETE CASCADE,
    -- slash-separated, relative to the version's root
    path       text   NOT NULL,
    kind       text   NOT NULL CHECK (kind IN ('annotation', 'image')),
    sha256     text   NOT NULL,
    bytes      bigint NOT NULL,
    PRIMARY KEY (version_id, path)
);

CREATE TABLE IF NOT EXISTS dataset_rejects (
    version_id uuid    NOT NULL REFERENCES dataset_versions (id) ON DELETE CASCADE,
    seq        integer NOT NULL,
    kind       text    NOT NULL,
    record_id  text    NOT NULL,
    file       text    NOT NULL DEFAULT '',
    reason     text    NOT NULL,
    PRIMARY KEY (version_id, seq)
);

-- +goose Down
DROP TABLE IF EXISTS dataset_rejects;
DROP TABLE IF EXISTS dataset_files;
DROP TABLE IF EXISTS dataset_versions;
DROP TABLE IF EXISTS datasets;
