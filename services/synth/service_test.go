package synth_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

type fakeLoader struct {
	sets  map[string]*dataset.Dataset
	calls atomic.Int32
}

func (f *fakeLoader) Load(_ context.Context, id string) (*dataset.Dataset, error) {
	f.calls.Add(1)
	ds, ok := f.sets[id]
	if !ok {
		return nil, fmt.Errorf("dataset %s: not found", id)
	}
	return ds, nil
}

func (f *fakeLoader) Root(_ context.Context, id string) (string, error) {
	ds, ok := f.sets[id]
	if !ok {
		return "", fmt.Errorf("dataset %s: not found", id)
	}
	return ds.Root, nil
}

func newService(t *testing.T) (*synth.Service, *pgxpool.Pool, *fakeLoader, *blob.Local, string, string) {
	t.Helper()
	ctx := context.Background()
	pool, err := store.Open(ctx, store.NewTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	dir := t.TempDir()
	ds, err := synthtest.World(filepath.Join(dir, "world"), synthtest.Options{Seed: 8, Images: 24, Size: 96})
	if err != nil {
		t.Fatal(err)
	}
	good, empty := uuid.NewString(), uuid.NewString()
	loader := &fakeLoader{sets: map[string]*dataset.Dataset{good: ds, empty: {Name: "empty"}}}
	b, err := blob.NewLocal(filepath.Join(dir, "blob"))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := synth.New(synth.Config{DataDir: filepath.Join(dir, "data"), Blob: b}, pool, loader)
	if err != nil {
		t.Fatal(err)
	}
	return svc, pool, loader, b, good, empty
}

func TestSynthesizeRecordsAndReuses(t *testing.T) {
	svc, pool, loader, b, dsID, _ := newService(t)
	ctx := context.Background()
	var last [2]int64
	req := events.SynthRequested{CorrelationID: "c1", DatasetID: dsID, Seed: 5, Samples: 800}
	res, err := svc.Synthesize(ctx, req, func(done, total int64, _ string) { last = [2]int64{done, total} })
	if err != nil {
		t.Fatal(err)
	}
	if res.Reused || res.CorrelationID != "c1" || res.DatasetID != dsID || res.ContentHash == "" {
		t.Fatalf("result %+v", res)
	}
	if _, err := uuid.Parse(res.SynthSetID); err != nil {
		t.Fatalf("set id %q: %v", res.SynthSetID, err)
	}
	if res.ManifestKey != "synth/sets/"+res.SynthSetID+"/manifest.json" || res.Counts["total"] < 700 || res.Counts["direction/I->C"] == 0 {
		t.Fatalf("manifest key %q counts %v", res.ManifestKey, res.Counts)
	}
	if last[0] != res.Counts["total"] || last[1] != 800 {
		t.Fatalf("last progress %v, want (%d, 800)", last, res.Counts["total"])
	}

	var status, hash, key string
	var seed int64
	var total int64
	err = pool.QueryRow(ctx, `SELECT status, content_hash, manifest_key, seed, (counts->>'total')::bigint FROM synth_sets WHERE id = $1`, res.SynthSetID).
		Scan(&status, &hash, &key, &seed, &total)
	if err != nil {
		t.Fatal(err)
	}
	if status != "ready" || hash != res.ContentHash || key != res.ManifestKey || seed != 5 || total != res.Counts["total"] {
		t.Fatalf("row: %s %s %s %d %d", status, hash, key, seed, total)
	}
	var edges int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM lineage_edges WHERE src_kind = 'dataset' AND src_id = $1 AND dst_kind = 'synth_set' AND dst_id = $2`,
		dsID, res.SynthSetID).Scan(&edges); err != nil || edges != 1 {
		t.Fatalf("lineage edges %d, %v", edges, err)
	}

	m, recs, err := synth.OpenShards(ctx, b, res.ManifestKey)
	if err != nil {
		t.Fatal(err)
	}
	n := int64(0)
	for r, err := range recs {
		if err != nil {
			t.Fatal(err)
		}
		if r.Lineage.DatasetID != dsID {
			t.Fatalf("%s: lineage dataset %q", r.ID, r.Lineage.DatasetID)
		}
		n++
	}
	if n != m.Total || m.ContentHash != res.ContentHash {
		t.Fatalf("read %d of %d records", n, m.Total)
	}

	// Same inputs: the recorded set, without loading the dataset again.
	again, err := svc.Synthesize(ctx, events.SynthRequested{CorrelationID: "c2", DatasetID: dsID, Seed: 5, Samples: 800}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Reused || again.SynthSetID != res.SynthSetID || again.ContentHash != res.ContentHash || again.CorrelationID != "c2" || loader.calls.Load() != 1 {
		t.Fatalf("second request %+v (loads %d): want the same set reused", again, loader.calls.Load())
	}
	// Another seed: another set.
	other, err := svc.Synthesize(ctx, events.SynthRequested{DatasetID: dsID, Seed: 6, Samples: 800}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if other.Reused || other.SynthSetID == res.SynthSetID || other.ContentHash == res.ContentHash {
		t.Fatalf("another seed gave %+v", other)
	}

	// Every answer carries the dataset's root; synth.describe answers the
	// same facts for the set's id alone, without loading the dataset.
	root := loader.sets[dsID].Root
	if root == "" || res.DatasetRoot != root || again.DatasetRoot != root {
		t.Fatalf("dataset roots %q (built), %q (reused), want %q", res.DatasetRoot, again.DatasetRoot, root)
	}
	d, err := svc.Describe(ctx, events.SynthDescribeRequested{CorrelationID: "d1", SynthSetID: res.SynthSetID})
	if err != nil {
		t.Fatal(err)
	}
	if *d.Facts() != *res.Facts() || d.CorrelationID != "d1" || d.ContentHash != res.ContentHash || loader.calls.Load() != 2 {
		t.Fatalf("describe %+v (loads %d), want the facts of %+v", d, loader.calls.Load(), res)
	}
	for _, id := range []string{"not-a-uuid", uuid.NewString()} {
		if _, err := svc.Describe(ctx, events.SynthDescribeRequested{SynthSetID: id}); !errors.Is(err, synth.ErrBadInput) {
			t.Fatalf("describe %q: %v, want ErrBadInput", id, err)
		}
	}
}

func TestSynthesizeBadInputAndFailures(t *testing.T) {
	svc, pool, _, _, dsID, emptyID := newService(t)
	ctx := context.Background()
	for _, req := range []events.SynthRequested{
		{DatasetID: ""},
		{DatasetID: "not-a-uuid"},
		{DatasetID: dsID, Stages: []string{"stage9"}},
		{DatasetID: dsID, Samples: -5},
		{DatasetID: dsID, RewriteURL: "not a url"},
	} {
		if _, err := svc.Synthesize(ctx, req, nil); !errors.Is(err, synth.ErrBadInput) {
			t.Fatalf("request %+v: err %v, want ErrBadInput", req, err)
		}
	}
	// Unknown dataset: the loader's error, not bad input of ours.
	if _, err := svc.Synthesize(ctx, events.SynthRequested{DatasetID: uuid.NewString()}, nil); err == nil || errors.Is(err, synth.ErrBadInput) {
		t.Fatalf("unknown dataset: %v", err)
	}
	// A dataset that cannot be built leaves a failed row with the reason.
	if _, err := svc.Synthesize(ctx, events.SynthRequested{DatasetID: emptyID, Samples: 100}, nil); err == nil {
		t.Fatal("empty dataset synthesized")
	}
	var status, reason string
	if err := pool.QueryRow(ctx, `SELECT status, error FROM synth_sets WHERE dataset_id = $1`, emptyID).Scan(&status, &reason); err != nil {
		t.Fatal(err)
	}
	if status != "failed" || reason == "" {
		t.Fatalf("row status %q error %q", status, reason)
	}
	for _, cfg := range []synth.Config{{}, {DataDir: "x"}} {
		if _, err := synth.New(cfg, pool, &fakeLoader{}); err == nil {
			t.Fatalf("config %+v accepted", cfg)
		}
	}
}
