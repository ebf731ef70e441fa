package eval

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/groundmesh/groundmesh/internal/store"
)

// TestPGCatalog reads the tables services/train writes (migration 00030),
// on a real database.
func TestPGCatalog(t *testing.T) {
	ctx := context.Background()
	pool, err := store.Open(ctx, store.NewTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	run, synth := uuid.NewString(), uuid.NewString()
	mustExec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	mustExec(`INSERT INTO runs (id, synth_set_id, backend, spec, model_config, tokenizer_key) VALUES ($1, $2, 'gomlx', '{}', '{"version":"tinygrounder/v1"}', 'runs/x/tokenizer.json')`, run, synth)
	ids := map[string]string{}
	for _, c := range []struct {
		stage string
		step  int
	}{{"stage1", 50}, {"stage1", 100}, {"stage2", 80}, {"stage3", 40}, {"stage3", 120}} {
		id := uuid.NewString()
		ids[c.stage+"/"+string(rune('0'+c.step/10%10))+string(rune('0'+c.step%10))] = id
		mustExec(`INSERT INTO checkpoints (id, run_id, stage, step, loss, blob_key, sha256, bytes) VALUES ($1, $2, $3, $4, 1, $5, 'x', 1)`,
			id, run, c.stage, c.step, "ck/"+id)
	}
	for step := range 5 {
		mustExec(`INSERT INTO train_metrics (run_id, stage, step, loss, lr, tokens_per_sec) VALUES ($1, 'stage2', $2, $3, 0.001, 1)`, run, step*10, 5-float64(step))
	}
	cat := NewPGCatalog(pool)
	info, err := cat.Run(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if info.SynthSetID != synth || info.TokenizerKey != "runs/x/tokenizer.json" || len(info.ModelConfig) == 0 {
		t.Fatalf("run info %+v", info)
	}
	if _, err := cat.Run(ctx, uuid.NewString()); err == nil {
		t.Fatal("unknown run found")
	}
	finals, err := cat.Checkpoints(ctx, run, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(finals) != 3 || finals[0].Stage != "stage1" || finals[0].Step != 100 || finals[2].Step != 120 || finals[1].BlobKey != "ck/"+finals[1].ID {
		t.Fatalf("final checkpoints %+v", finals)
	}
	one, err := cat.Checkpoints(ctx, run, []string{ids["stage1/50"]})
	if err != nil || len(one) != 1 || one[0].Step != 50 {
		t.Fatalf("named checkpoint %+v %v", one, err)
	}
	if _, err := cat.Checkpoints(ctx, run, []string{uuid.NewString()}); err == nil {
		t.Fatal("unknown checkpoint found")
	}
	losses, err := cat.Losses(ctx, run)
	if err != nil || len(losses["stage2"]) != 5 || losses["stage2"][4].Loss != 1 || losses["stage2"][4].Step != 40 {
		t.Fatalf("losses %+v %v", losses, err)
	}
}
