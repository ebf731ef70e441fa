package ground

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/bus"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
)

// projectionDB is a fresh database with every migration applied.
func projectionDB(t *testing.T) *pgxpool.Pool { return store.NewTestPool(t) }

// factsRun is a run's train.completed fact with two final checkpoints.
func factsRun() events.TrainCompleted {
	run, ck1, ck2 := uuid.NewString(), uuid.NewString(), uuid.NewString()
	return events.TrainCompleted{RunID: run, Checkpoints: map[string]string{"stage1": ck1, "stage2": ck2},
		Run: &events.RunFacts{Backend: "gomlx", ModelConfig: json.RawMessage(`{"dim": 8}`), ModelConfigSHA256: "cfg", TokenizerKey: "tok/" + run,
			Checkpoints: []events.CheckpointRef{
				{ID: ck1, Stage: "stage1", Step: 3, BlobKey: "ck/" + ck1, SHA256: "s1"},
				{ID: ck2, Stage: "stage2", Step: 5, BlobKey: "ck/" + ck2, SHA256: "s2"},
			}}}
}

// TestServesFromTrainFactsAlone: services/ground on a real (Postgres) bus,
// in a database whose services/train tables stay empty, learns its models
// from train's facts alone: a checkpoint.saved before its run's
// train.completed is known but not servable (model_not_found, pending,
// saying the run's facts have not arrived); train.completed (delivered
// twice, as two messages) makes it and the run's final checkpoints
// servable and the newest run the latest model; model.exported makes an
// export servable; a train.completed without the run's facts is skipped,
// not poisoned.
func TestServesFromTrainFactsAlone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool := projectionDB(t)
	logger := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	b, err := bus.New(ctx, bus.Config{Kind: bus.KindPostgres, PollInterval: 20 * time.Millisecond, Logger: logger}, pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Project(b, ProjectionConfig{Pool: pool, Logger: logger}); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		_ = b.Close()
		<-done
	})
	select {
	case <-b.Running():
	case <-time.After(30 * time.Second):
		t.Fatal("bus did not start")
	}
	cat := NewPGCatalog(pool)
	publish := func(topic string, v any) {
		t.Helper()
		if err := b.Publish(ctx, topic, v, nil); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}

	if _, err := cat.Latest(ctx); CodeOf(err) != CodeNoModel {
		t.Fatalf("Latest before any fact: %v", err)
	}
	older, run := factsRun(), factsRun()
	// An intermediate checkpoint of run, saved before the run completes.
	mid := events.CheckpointSaved{CheckpointID: uuid.NewString(), RunID: run.RunID, Stage: "stage1", Step: 1, BlobKey: "ck/mid", SHA256: "m", ModelConfigSHA256: "cfg"}
	publish(events.TopicCheckpointSaved, mid)
	var pending error
	waitFor("the checkpoint.saved fact", func() bool {
		_, pending = cat.Checkpoint(ctx, mid.CheckpointID)
		return !strings.HasPrefix(pending.Error(), "no checkpoint")
	})
	var ge *Error
	if CodeOf(pending) != CodeModelNotFound || !asError(pending, &ge) || !ge.Pending() || !strings.Contains(pending.Error(), "have not reached the grounding service yet") {
		t.Fatalf("a checkpoint whose run's facts have not arrived: %v", pending)
	}
	if _, err := cat.Checkpoint(ctx, uuid.NewString()); CodeOf(err) != CodeModelNotFound || !asError(err, &ge) || !ge.Pending() {
		t.Fatalf("an unknown checkpoint: %v", err)
	}

	publish(events.TopicTrainCompleted, older)
	waitFor("the older run's facts", func() bool { _, err := cat.Checkpoint(ctx, older.Run.Checkpoints[1].ID); return err == nil })
	for range 2 { // a duplicate fact: a second message with the same payload
		publish(events.TopicTrainCompleted, run)
	}
	// A train service older than RunFacts answers without them.
	publish(events.TopicTrainCompleted, events.TrainCompleted{RunID: uuid.NewString(), Checkpoints: map[string]string{"stage3": uuid.NewString()}})
	final := run.Run.Checkpoints[1]
	waitFor("the run's facts", func() bool { _, err := cat.Checkpoint(ctx, mid.CheckpointID); return err == nil })
	m, err := cat.Checkpoint(ctx, final.ID)
	if err != nil || m.RunID != run.RunID || m.Stage != "stage2" || m.Step != 5 || m.BlobKey != final.BlobKey || m.Backend != "gomlx" ||
		m.TokenizerKey != run.Run.TokenizerKey || !json.Valid(m.ModelConfig) {
		t.Fatalf("the run's final checkpoint: %+v, %v", m, err)
	}
	waitFor("the duplicate and the fact without facts consumed", func() bool {
		return count(t, pool, `SELECT count(*) FROM processed_messages WHERE consumer LIKE '%ground-models-train-completed'`) >= 4
	})
	if l, err := cat.Latest(ctx); err != nil || l.CheckpointID != final.ID {
		t.Fatalf("Latest: %+v, %v; want the newest run's last stage %s", l, err, final.ID)
	}

	x := events.ExportCompleted{ExportID: uuid.NewString(), CheckpointID: final.ID, RunID: run.RunID, Format: "gguf", Dtype: "q8_0",
		BlobKey: "exports/x.gguf", SHA256: "xs", ModelConfigSHA256: "cfg"}
	if _, err := cat.Export(ctx, final.ID, "gguf", "q8_0"); CodeOf(err) != CodeExportNotFound || !strings.Contains(err.Error(), "groundmesh export "+final.ID) {
		t.Fatalf("an export not made: %v", err)
	}
	publish(events.TopicModelExported, x)
	waitFor("the export's fact", func() bool { _, err := cat.Export(ctx, final.ID, "gguf", "q8_0"); return err == nil })
	if got, err := cat.Export(ctx, final.ID, "gguf", "q8_0"); err != nil || got.ID != x.ExportID || got.BlobKey != x.BlobKey || got.SHA256 != x.SHA256 {
		t.Fatalf("export %+v, %v", got, err)
	}

	for _, table := range []string{"runs", "checkpoints", "model_exports", "poison_messages"} {
		if n := count(t, pool, `SELECT count(*) FROM `+table); n != 0 {
			t.Errorf("%s holds %d rows: ground served from facts alone, and none was poisoned", table, n)
		}
	}
}

// TestDuplicateFactsAreHarmless: recording the same facts again, later and
// in another order, changes nothing a catalog answers: the run keeps the
// time it first completed (so the latest model stays the latest), a
// checkpoint keeps the hashes one fact gave and another lacks.
func TestDuplicateFactsAreHarmless(t *testing.T) {
	ctx := context.Background()
	pool := projectionDB(t)
	p, err := NewProjection(ProjectionConfig{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	cat := NewPGCatalog(pool)
	a, b := factsRun(), factsRun()
	t0 := time.Now().Add(-time.Hour)
	ck := a.Run.Checkpoints[1]
	steps := []func() error{
		func() error { return p.RecordRun(ctx, a, t0) },
		func() error { return p.RecordRun(ctx, b, t0.Add(time.Minute)) },
		// a's facts again, much later: a must not become the newest.
		func() error { return p.RecordRun(ctx, a, time.Now()) },
		func() error {
			return p.RecordCheckpoint(ctx, events.CheckpointSaved{CheckpointID: ck.ID, RunID: a.RunID, Stage: ck.Stage, Step: ck.Step, BlobKey: ck.BlobKey, SHA256: ck.SHA256, ModelConfigSHA256: "cfg"})
		},
		func() error { return p.RecordRun(ctx, a, time.Now()) }, // its checkpoints carry no config hash
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if l, err := cat.Latest(ctx); err != nil || l.RunID != b.RunID {
		t.Fatalf("Latest: run %s, %v; want %s, the run that completed last", l.RunID, err, b.RunID)
	}
	var sha, cfg string
	if err := pool.QueryRow(ctx, `SELECT sha256, model_config_sha256 FROM ground_checkpoints WHERE checkpoint_id = $1`, ck.ID).Scan(&sha, &cfg); err != nil || sha != ck.SHA256 || cfg != "cfg" {
		t.Fatalf("checkpoint hashes %q %q (%v)", sha, cfg, err)
	}
	if n := count(t, pool, `SELECT count(*) FROM ground_checkpoints`); n != 4 {
		t.Fatalf("%d checkpoints recorded, want 4", n)
	}
	x := events.ExportCompleted{ExportID: uuid.NewString(), CheckpointID: ck.ID, RunID: a.RunID, Format: "gguf", Dtype: "float32", BlobKey: "x1", SHA256: "h1"}
	for range 2 {
		if err := p.RecordExport(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	// services/train writes an export again when its file is gone: the
	// new one serves.
	x.ExportID, x.BlobKey, x.SHA256 = uuid.NewString(), "x2", "h2"
	if err := p.RecordExport(ctx, x); err != nil {
		t.Fatal(err)
	}
	if got, err := cat.Export(ctx, ck.ID, "gguf", "float32"); err != nil || got.BlobKey != "x2" || got.ID != x.ExportID {
		t.Fatalf("export after its rewrite: %+v, %v", got, err)
	}
	// A fact without its run's facts is skipped, not an error (nothing to
	// serve it with); one without a run id is poison.
	if err := p.RecordRun(ctx, events.TrainCompleted{RunID: uuid.NewString()}, time.Now()); err != nil {
		t.Fatalf("train.completed without facts: %v", err)
	}
	if err := p.RecordRun(ctx, events.TrainCompleted{}, time.Now()); !bus.IsPermanent(err) {
		t.Fatalf("train.completed without a run id: %v, want a permanent error", err)
	}
}

func asError(err error, target **Error) bool {
	e, ok := err.(*Error)
	if ok {
		*target = e
	}
	return ok
}

func count(t *testing.T, pool *pgxpool.Pool, query string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}
