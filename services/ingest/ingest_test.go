package ingest_test

import (
	"context"
	"encoding/json"
	"errors"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/services/ingest"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
	"github.com/groundmesh/groundmesh/services/ingest/scenes"
)

func newService(t *testing.T, cfg ingest.Config) (*ingest.Service, *pgxpool.Pool) {
	t.Helper()
	url := store.NewTestDB(t)
	pool, err := store.Open(context.Background(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	svc, err := ingest.New(cfg, pool)
	if err != nil {
		t.Fatal(err)
	}
	return svc, pool
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// TestScenesEndToEnd: generate -> files -> ingest -> Postgres + outbox ->
// Load returns the same objects, boxes and expressions the generator made.
func TestScenesEndToEnd(t *testing.T) {
	svc, pool := newService(t, ingest.Config{})
	ctx := context.Background()
	spec := &events.ScenesSpec{Seed: 5, Images: 60, Size: 64}
	var phases []string
	res, err := svc.Ingest(ctx, events.IngestRequested{CorrelationID: "c1", Format: "scenes", Scenes: spec},
		func(done, total int64, msg string) {
			if len(phases) == 0 || phases[len(phases)-1] != msg {
				phases = append(phases, msg)
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reused || res.DatasetID == "" || len(res.Version) != 64 || res.Name != "scenes-5-60x64" || res.CorrelationID != "c1" {
		t.Fatalf("result = %+v", res)
	}
	if res.Counts["images"] != 60 || res.Counts["rejected"] != 0 || res.Splits["train"] != 42 || res.Splits["heldout"] != 6 {
		t.Fatalf("counts %v splits %v", res.Counts, res.Splits)
	}
	if phases[0] != "generate scenes" || phases[len(phases)-1] != "record" {
		t.Fatalf("progress phases %v", phases)
	}

	// The generator's own memory of the world, for comparison.
	w, err := scenes.Generate(ctx, filepath.Join(t.TempDir(), "w"), scenes.Spec{Seed: 5, Images: 60, Size: 64}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := svc.Load(ctx, res.DatasetID)
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]dataset.Object{}
	for _, o := range ds.Objects {
		objs[o.ID] = o
	}
	sents := map[string][]string{}
	for _, r := range ds.Refs {
		sents[r.ObjectID] = r.Sentences
	}
	var nObj, nRef int
	for _, sc := range w.Scenes {
		for _, o := range sc.Objects {
			if !reflect.DeepEqual(objs[o.ID], o) {
				t.Fatalf("object %s: loaded %+v, generated %+v", o.ID, objs[o.ID], o)
			}
			nObj++
		}
		for _, r := range sc.Refs {
			if !reflect.DeepEqual(sents[r.ObjectID], r.Sentences) {
				t.Fatalf("ref %s: loaded %v, generated %v", r.ObjectID, sents[r.ObjectID], r.Sentences)
			}
			nRef++
		}
	}
	if nObj != len(ds.Objects) || nRef != len(ds.Refs) || int64(nObj) != res.Counts["objects"] || ds.Name != res.Name {
		t.Fatalf("loaded %d objects %d refs, generated %d %d, counts %v", len(ds.Objects), len(ds.Refs), nObj, nRef, res.Counts)
	}
	for _, im := range ds.Images {
		if len(im.SHA256) != 64 {
			t.Fatalf("image without hash: %+v", im)
		}
	}

	// Rows: version, files (60 images + 4 instances + refs + relationships),
	// lineage, and exactly one outbox message carrying the dataset id.
	if n := count(t, pool, `SELECT count(*) FROM dataset_files WHERE version_id = $1`, res.DatasetID); n != 66 {
		t.Fatalf("dataset_files = %d", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM lineage_edges WHERE dst_id = $1`, res.DatasetID); n != 1 {
		t.Fatalf("lineage edges = %d", n)
	}
	var payload []byte
	if err := pool.QueryRow(ctx, `SELECT payload FROM outbox WHERE topic = $1`, events.TopicDatasetIngested).Scan(&payload); err != nil {
		t.Fatal(err)
	}
	var fact events.DatasetIngested
	if err := json.Unmarshal(payload, &fact); err != nil {
		t.Fatal(err)
	}
	if fact.DatasetID != res.DatasetID || fact.Version != res.Version || fact.Counts["objects"] != res.Counts["objects"] {
		t.Fatalf("fact %+v, result %+v", fact, res)
	}

	// Same request again: the world is reused, the version too, nothing new
	// is published.
	again, err := svc.Ingest(ctx, events.IngestRequested{CorrelationID: "c2", Format: "scenes", Scenes: spec}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Reused || again.DatasetID != res.DatasetID || again.Version != res.Version || again.CorrelationID != "c2" {
		t.Fatalf("re-ingest = %+v", again)
	}
	if n := count(t, pool, `SELECT count(*) FROM outbox`); n != 1 {
		t.Fatalf("outbox rows = %d after a no-op re-ingest", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM dataset_versions`); n != 1 {
		t.Fatalf("versions = %d", n)
	}
}

// cocoWorld writes a small scene world and returns its directory, to be
// ingested as plain COCO.
func cocoWorld(t *testing.T, images int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "coco")
	if err := ingest.GenerateScenes(context.Background(), dir, events.ScenesSpec{Seed: 9, Images: images, Size: 48}, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestChangedFilesMakeNewVersions(t *testing.T) {
	svc, pool := newService(t, ingest.Config{})
	ctx := context.Background()
	dir := cocoWorld(t, 20)
	req := events.IngestRequested{Format: "coco", Path: dir, Name: "shapes"}
	a, err := svc.Ingest(ctx, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.Reused || a.Counts["refs"] != 0 || a.Counts["images"] != 20 {
		t.Fatalf("first = %+v", a)
	}
	// Change one box in the train annotations.
	p := filepath.Join(dir, "annotations", "instances_train.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	ann := doc["annotations"].([]any)[0].(map[string]any)
	bbox := ann["bbox"].([]any)
	bbox[2] = bbox[2].(float64) - 1
	b, _ = json.Marshal(doc)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	bv, err := svc.Ingest(ctx, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bv.Reused || bv.DatasetID == a.DatasetID || bv.Version == a.Version {
		t.Fatalf("changed annotation reused the version: %+v", bv)
	}
	if _, err := svc.Load(ctx, a.DatasetID); !errors.Is(err, ingest.ErrChanged) || !strings.Contains(err.Error(), "instances_train.json") {
		t.Fatalf("load of the old version: %v", err)
	}
	// Change one image (same size, one pixel).
	img := filepath.Join(dir, "images", "train", "000001.png")
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	rgba := image.NewRGBA(decoded.Bounds())
	for y := 0; y < 48; y++ {
		for x := 0; x < 48; x++ {
			rgba.Set(x, y, decoded.At(x, y))
		}
	}
	rgba.Pix[0] ^= 0xff
	out, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := png.Encode(out, rgba); err != nil {
		t.Fatal(err)
	}
	out.Close()
	c, err := svc.Ingest(ctx, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Reused || c.Version == bv.Version {
		t.Fatalf("changed image reused the version: %+v", c)
	}
	if _, err := svc.Load(ctx, bv.DatasetID); !errors.Is(err, ingest.ErrChanged) || !strings.Contains(err.Error(), "000001.png") {
		t.Fatalf("load after image change: %v", err)
	}
	if _, err := svc.Load(ctx, c.DatasetID); err != nil {
		t.Fatalf("load of the current version: %v", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM outbox WHERE topic = $1`, events.TopicDatasetIngested); n != 3 {
		t.Fatalf("facts = %d", n)
	}
	if n := count(t, pool, `SELECT count(DISTINCT dataset_name) FROM dataset_versions`); n != 1 {
		t.Fatalf("dataset names = %d", n)
	}
}

func TestBadInput(t *testing.T) {
	svc, pool := newService(t, ingest.Config{})
	ctx := context.Background()
	for name, req := range map[string]events.IngestRequested{
		"unknown format": {Format: "pascal", Path: t.TempDir()},
		"missing path":   {Format: "coco", Path: filepath.Join(t.TempDir(), "nope")},
		"no path":        {Format: "coco"},
		"empty dir":      {Format: "vg", Path: t.TempDir()},
		"bad spec":       {Format: "scenes", Scenes: &events.ScenesSpec{Images: 5, Size: 4}},
		"bad fraction":   {Format: "scenes", MaxBadFraction: 2},
	} {
		if _, err := svc.Ingest(ctx, req, nil); !errors.Is(err, ingest.ErrBadInput) {
			t.Errorf("%s: %v does not wrap ErrBadInput", name, err)
		}
	}
	if _, err := svc.Load(ctx, "00000000-0000-0000-0000-000000000000"); !errors.Is(err, ingest.ErrNotFound) {
		t.Errorf("load unknown: %v", err)
	}
	if _, err := svc.Load(ctx, "x"); !errors.Is(err, ingest.ErrBadInput) {
		t.Errorf("load malformed id: %v", err)
	}

	// Too many bad records: 3 of 10 images missing, and their objects.
	dir := cocoWorld(t, 10)
	for _, f := range []string{"000001.png", "000002.png", "000003.png"} {
		if err := os.Remove(filepath.Join(dir, "images", "train", f)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := svc.Ingest(ctx, events.IngestRequested{Format: "coco", Path: dir}, nil)
	var rej *ingest.RejectedError
	if !errors.Is(err, ingest.ErrBadInput) || !errors.As(err, &rej) || !strings.Contains(err.Error(), "missing image file") {
		t.Fatalf("too many bad records: %v", err)
	}
	if rej.Report.ByReason()["missing image file"] != 3 || rej.Report.ByReason()["image rejected"] == 0 {
		t.Fatalf("report %v", rej.Report.ByReason())
	}
	if n := count(t, pool, `SELECT count(*) FROM dataset_versions`); n != 0 {
		t.Fatalf("a failed ingest left %d versions", n)
	}
	// A looser threshold keeps the good records and stores the rejects.
	res, err := svc.Ingest(ctx, events.IngestRequested{Format: "coco", Path: dir, MaxBadFraction: 0.9}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts["images"] != 7 || res.Counts["rejected"] == 0 {
		t.Fatalf("counts %v", res.Counts)
	}
	if n := count(t, pool, `SELECT count(*) FROM dataset_rejects WHERE version_id = $1`, res.DatasetID); int64(n) != res.Counts["rejected"] {
		t.Fatalf("reject rows %d, counted %d", n, res.Counts["rejected"])
	}
	if n := count(t, pool, `SELECT count(*) FROM dataset_rejects WHERE version_id = $1 AND reason LIKE 'missing image file%'`, res.DatasetID); n != 3 {
		t.Fatalf("missing-file rows = %d", n)
	}
}

func TestConcurrentIngestsOfTheSameFiles(t *testing.T) {
	svc, pool := newService(t, ingest.Config{})
	dir := cocoWorld(t, 10)
	var wg sync.WaitGroup
	results := make([]events.DatasetIngested, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = svc.Ingest(context.Background(), events.IngestRequested{Format: "coco", Path: dir}, nil)
		}()
	}
	wg.Wait()
	created := 0
	for i, r := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if r.DatasetID != results[0].DatasetID {
			t.Fatalf("ids differ: %s vs %s", r.DatasetID, results[0].DatasetID)
		}
		if !r.Reused {
			created++
		}
	}
	if created != 1 || count(t, pool, `SELECT count(*) FROM outbox`) != 1 {
		t.Fatalf("created %d times, %d facts", created, count(t, pool, `SELECT count(*) FROM outbox`))
	}
}

// TestAnnotationOnly ingests the third-party COCO sample (no images) with
// SkipImageFiles, and the project's own VG test files, whose images are
// absent too: without SkipImageFiles every image is missing and the
// ingest fails as bad input.
func TestAnnotationOnly(t *testing.T) {
	svc, _ := newService(t, ingest.Config{SkipImageFiles: true})
	ctx := context.Background()
	sample := filepath.Join("..", "..", "..", "shared", "fixtures", "coco", "instances_val2017_1img-sample.json")
	if _, err := os.Stat(sample); err == nil {
		res, err := svc.Ingest(ctx, events.IngestRequested{Format: "coco", Path: sample}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Counts["images"] != 1 || res.Counts["objects"] != 16 || res.Splits["val"] != 1 {
			t.Fatalf("coco sample: %+v", res)
		}
		ds, err := svc.Load(ctx, res.DatasetID)
		if err != nil || len(ds.Objects) != 16 {
			t.Fatalf("load: %v", err)
		}
	} else {
		t.Logf("third-party fixtures absent (%s); the readers' own testdata covers COCO", sample)
	}
	odvg := filepath.Join("readers", "testdata", "odvg")
	res, err := svc.Ingest(ctx, events.IngestRequested{Format: "odvg", Path: odvg, MaxBadFraction: 0.5}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts["images"] != 3 || res.Counts["regions"] != 3 || res.Counts["rejected"] != 3 {
		t.Fatalf("odvg: %+v", res)
	}

	strict, _ := newService(t, ingest.Config{})
	if _, err := strict.Ingest(ctx, events.IngestRequested{Format: "odvg", Path: odvg}, nil); !errors.Is(err, ingest.ErrBadInput) {
		t.Fatalf("images missing: %v", err)
	}
	_ = readers.FormatODVG
}
