package migrations_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/migrations"
)

// TestBackfillsKeepOlderDatabasesServing: a database migrated before
// services owned their projections (up to 00031) holds a dataset, a synth
// set, a completed run with its checkpoint and export, and a run still
// running; the rest of the migrations give train's runs their synth set's
// facts (00032) and ground its record of the runs, checkpoints and exports
// (00054), and applying them again changes nothing.
func TestBackfillsKeepOlderDatabasesServing(t *testing.T) {
	ctx := context.Background()
	url := emptyDB(t)
	pool, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS(), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 31); err != nil {
		t.Fatal(err)
	}
	ds, set, done, running, ck, ck2 := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO datasets (name) VALUES ('d')`, nil},
		{`INSERT INTO dataset_versions (id, dataset_name, version, format, root, source_path, counts, splits, manifest, report)
			VALUES ($1, 'd', 'v1', 'scenes', '/data/d', '/data/d', '{}', '{}', '{}', '{}')`, []any{ds}},
		{`INSERT INTO synth_sets (id, dataset_id, seed, params, params_hash, manifest_key, status)
			VALUES ($1, $2, 1, '{}', 'h', 'synth/m.json', 'ready')`, []any{set, ds}},
		{`INSERT INTO runs (id, synth_set_id, backend, spec, model_config, tokenizer_key, status)
			VALUES ($1, $2, 'gomlx', '{}', '{"dim": 8}', 'tok', 'completed')`, []any{done, set}},
		{`INSERT INTO runs (id, synth_set_id, backend, spec, model_config, tokenizer_key, status)
			VALUES ($1, $2, 'gomlx', '{}', '{"dim": 8}', 'tok2', 'running')`, []any{running, set}},
		{`INSERT INTO checkpoints (id, run_id, stage, step, loss, blob_key, sha256, bytes) VALUES ($1, $2, 'stage3', 9, 0.1, 'ck', 'aa', 1)`, []any{ck, done}},
		{`INSERT INTO checkpoints (id, run_id, stage, step, loss, blob_key, sha256, bytes) VALUES ($1, $2, 'stage1', 2, 0.1, 'ck2', 'bb', 1)`, []any{ck2, running}},
		{`INSERT INTO model_exports (checkpoint_id, run_id, format, dtype, blob_key, sha256, bytes, model_config_sha256)
			VALUES ($1, $2, 'gguf', 'q8_0', 'x.gguf', 'xx', 1, 'cfg')`, []any{ck, done}},
	} {
		if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatalf("%s: %v", q.sql, err)
		}
	}
	for range 2 {
		if err := migrations.ApplyPool(ctx, pool, nil); err != nil {
			t.Fatal(err)
		}
	}
	one := func(what, sql string, args ...any) {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil || n != 1 {
			t.Errorf("%s: %d rows (%v), want 1", what, n, err)
		}
	}
	one("runs.synth of the completed run", `SELECT count(*) FROM runs WHERE id = $1 AND synth->>'synth_set_id' = $2
		AND synth->>'manifest_key' = 'synth/m.json' AND synth->>'dataset_id' = $3 AND synth->>'dataset_root' = '/data/d'`, done, set, ds)
	one("ground_runs: the completed run, completed", `SELECT count(*) FROM ground_runs WHERE run_id = $1 AND completed_at IS NOT NULL
		AND backend = 'gomlx' AND tokenizer_key = 'tok' AND model_config = '{"dim": 8}'`, done)
	one("ground_runs: the running run, not completed", `SELECT count(*) FROM ground_runs WHERE run_id = $1 AND completed_at IS NULL`, running)
	one("ground_checkpoints", `SELECT count(*) FROM ground_checkpoints WHERE checkpoint_id = $1 AND run_id = $2 AND stage = 'stage3' AND step = 9 AND blob_key = 'ck' AND sha256 = 'aa'`, ck, done)
	one("ground_exports", `SELECT count(*) FROM ground_exports WHERE checkpoint_id = $1 AND format = 'gguf' AND dtype = 'q8_0' AND blob_key = 'x.gguf' AND sha256 = 'xx'`, ck)
	one("ground's checkpoints, all", `SELECT count(*) / 2 FROM ground_checkpoints`)
}
