-- services/train: the facts of the synth set a run trains on
-- (events.SynthFacts: synth set id, manifest key, dataset id and root), as
-- its train.requested carried them. Train reads the set through them and
-- answers them in its RunFacts, so that it reads no table of
-- services/synth or services/ingest; a resumed or described run finds
-- them here.
--
-- The UPDATE below is a one-time data migration at upgrade, and the only
-- place where train reads synth's and ingest's tables: runs recorded
-- before this change carried no facts, and must still resume and be
-- described. It fills only rows that have none, so it is idempotent.

-- +goose Up
ALTER TABLE runs ADD COLUMN IF NOT EXISTS synth jsonb;

UPDATE runs r SET synth = jsonb_build_object(
        'synth_set_id', s.id::text, 'manifest_key', s.manifest_key,
        'dataset_id', s.dataset_id::text, 'dataset_root', coalesce(d.root, ''))
FROM synth_sets s LEFT JOIN dataset_versions d ON d.id = s.dataset_id
WHERE s.id = r.synth_set_id AND r.synth IS NULL;

-- +goose Down
ALTER TABLE runs DROP COLUMN IF EXISTS synth;
