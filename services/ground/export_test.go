package ground

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/services/train"
)

// exportFixture is a checkpoint recorded as services/train records one
// (in Postgres, with its sha256), services/train to export it, and a
// ground Service over the real GoMLX plugin that finds both through
// PGCatalog.
type exportFixture struct {
	pool  *pgxpool.Pool
	bs    *blob.Local
	ref   ModelRef
	train *train.Service
	loads *loadRecorder
}

// loadRecorder is the plugin host, recording what each Load loaded.
type loadRecorder struct {
	compute.Backend
	mu    sync.Mutex
	paths []string
	names []string // the backend names asked of Config.Backends
}

func (l *loadRecorder) Load(ctx context.Context, req compute.LoadRequest) (compute.LoadResult, error) {
	l.mu.Lock()
	l.paths = append(l.paths, req.Checkpoint)
	l.mu.Unlock()
	return l.Backend.Load(ctx, req)
}

func (l *loadRecorder) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.paths) == 0 {
		return ""
	}
	return l.paths[len(l.paths)-1]
}

// backends serves "gomlx" only, like a worker without the ggml plugin.
func (l *loadRecorder) backends(name string) (compute.Backend, error) {
	l.mu.Lock()
	l.names = append(l.names, name)
	l.mu.Unlock()
	if name != "gomlx" {
		return nil, &Error{Code: CodeBackendUnavailable, Msg: "backend " + name + ": plugin not built in this test"}
	}
	return l, nil
}

func newExportFixture(t *testing.T, host compute.Backend) *exportFixture {
	t.Helper()
	ctx := context.Background()
	pool, err := store.Open(ctx, store.NewTestDB(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	bs, err := blob.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ref := testModel(t, bs, "x")
	insertModel(t, pool, &ref)
	insertTrainRows(t, pool, ref)
	// services/train exports only a checkpoint whose bytes hash to what
	// it recorded.
	p, _ := bs.Path(ref.BlobKey)
	sum, n, err := compute.FileSHA256(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE checkpoints SET sha256 = $2, bytes = $3 WHERE id = $1`, ref.CheckpointID, sum, n); err != nil {
		t.Fatal(err)
	}
	tr, err := train.New(train.Config{
		DataDir: t.TempDir(), Blob: bs,
		Backends: func(string) (compute.Backend, error) { return host, nil },
		Synth:    func(context.Context, events.SynthFacts) (train.SynthSet, error) { return train.SynthSet{}, nil },
	}, pool)
	if err != nil {
		t.Fatal(err)
	}
	return &exportFixture{pool: pool, bs: bs, ref: ref, train: tr, loads: &loadRecorder{Backend: host}}
}

// export asks services/train for a GGUF export of the fixture's
// checkpoint.
func (f *exportFixture) export(t *testing.T, dtype string) events.ExportCompleted {
	t.Helper()
	return f.exportAs(t, "gguf", dtype)
}

// exportAs asks services/train for an export of the fixture's checkpoint.
func (f *exportFixture) exportAs(t *testing.T, format, dtype string) events.ExportCompleted {
	t.Helper()
	x, err := f.train.Export(context.Background(), events.ExportRequested{CheckpointID: f.ref.CheckpointID, Format: format, Dtype: dtype})
	if err != nil {
		t.Fatal(err)
	}
	// What ground's consumer of model.exported does with the fact
	// services/train wrote to its outbox (no bus runs here).
	f.recordExport(t, x)
	return x
}

// recordExport records an export's model.exported fact in ground's tables.
func (f *exportFixture) recordExport(t *testing.T, x events.ExportCompleted) {
	t.Helper()
	p, err := NewProjection(ProjectionConfig{Pool: f.pool})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RecordExport(context.Background(), x); err != nil {
		t.Fatal(err)
	}
}

// service is ground over the fixture.
func (f *exportFixture) service(t *testing.T, exportBackends map[string]string) *Service {
	t.Helper()
	svc, err := New(Config{Catalog: NewPGCatalog(f.pool), Blob: f.bs, Backends: f.loads.backends,
		ExportBackends: exportBackends})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return svc
}

// exportQueries are the images and expressions the export tests ask.
func exportQueries(t *testing.T) []events.GroundRequested {
	return []events.GroundRequested{
		{Image: scene(t, 64, 64, 8, 40, color.RGBA{200, 20, 20, 255}), Expression: "the red square"},
		{Image: scene(t, 96, 64, 60, 4, color.RGBA{20, 180, 40, 255}), Expression: "the green square left of the circle"},
		{Image: scene(t, 48, 80, 20, 24, color.RGBA{30, 30, 220, 255}), Expression: "the blue circle"},
	}
}

// sameBoxes fails unless b's boxes are a's within tol in the normalized
// frame.
func sameBoxes(t *testing.T, what string, a, b events.GroundCompleted, tol float64) {
	t.Helper()
	if len(a.Boxes) != len(b.Boxes) || len(a.Boxes) == 0 {
		t.Fatalf("%s: %d boxes against %d", what, len(b.Boxes), len(a.Boxes))
	}
	for i := range a.Boxes {
		for k := range 4 {
			if d := math.Abs(a.Boxes[i].Norm[k] - b.Boxes[i].Norm[k]); d > tol || math.IsNaN(d) {
				t.Fatalf("%s: box %d = %v, the checkpoint's %v (|diff| %.3g > %g)", what, i, b.Boxes[i].Norm, a.Boxes[i].Norm, d, tol)
			}
		}
	}
}

// TestServeExportSameBoxes: the same images and expressions served from a
// checkpoint and from its float32 GGUF export (written by services/train,
// found through its model.exported fact) on the default backend, GoMLX, give the
// same boxes within 1e-4; the plugin loaded the export's file, not the
// checkpoint's; each answer names what served it. Both spellings of an
// export in a request (the model version and the export field) work.
func TestServeExportSameBoxes(t *testing.T) {
	f := newExportFixture(t, pluginHost(t))
	x := f.export(t, "float32")
	svc := f.service(t, nil)
	ctx := context.Background()
	id := f.ref.CheckpointID
	exportPath, _ := f.bs.Path(x.BlobKey)
	for i, q := range exportQueries(t) {
		a, err := svc.Ground(ctx, q)
		if err != nil {
			t.Fatalf("query %d from the checkpoint: %v", i, err)
		}
		if a.ModelVersion != id || a.CheckpointID != id || a.Format != "" || a.Dtype != "" || a.Backend != "gomlx" {
			t.Fatalf("query %d from the checkpoint: answered by %q (checkpoint %q, format %q, dtype %q, backend %q)", i, a.ModelVersion, a.CheckpointID, a.Format, a.Dtype, a.Backend)
		}
		for _, ask := range []events.GroundRequested{
			{CheckpointID: id + "@gguf-float32"},
			{CheckpointID: id, Export: &events.ExportSpec{Format: "gguf", Dtype: "float32"}},
		} {
			ask.Image, ask.Expression = q.Image, q.Expression
			b, err := svc.Ground(ctx, ask)
			if err != nil {
				t.Fatalf("query %d from the export: %v", i, err)
			}
			if b.ModelVersion != id+"@gguf-float32" || b.CheckpointID != id || b.Format != "gguf" || b.Dtype != "float32" || b.Backend != "gomlx" || b.RunID != f.ref.RunID {
				t.Fatalf("query %d from the export: answered by %q (checkpoint %q, format %q, dtype %q, backend %q, run %q)", i, b.ModelVersion, b.CheckpointID, b.Format, b.Dtype, b.Backend, b.RunID)
			}
			sameBoxes(t, "query "+q.Expression, a, b, 1e-4)
		}
	}
	// The checkpoint and its export are two models, loaded once each, each
	// from its own file.
	ckPath, _ := f.bs.Path(f.ref.BlobKey)
	if got := f.loads.paths; len(got) != 2 || got[0] != ckPath || got[1] != exportPath {
		t.Fatalf("loads %q, want the checkpoint %q then the export %q, once each", got, ckPath, exportPath)
	}
}

// TestExportNotFound: an export that was never made, or whose file is
// gone, is refused with export_not_found (404) and the command that makes
// it; a format or dtype that no export has, or an export without a
// checkpoint, is bad_request; an export's default backend is the
// configured one, and the request may name another.
func TestExportNotFound(t *testing.T) {
	f := newExportFixture(t, pluginHost(t))
	ctx := context.Background()
	id := f.ref.CheckpointID
	svc := f.service(t, nil)
	img := scene(t, 64, 64, 8, 8, color.RGBA{200, 20, 20, 255})
	ask := func(req events.GroundRequested) error {
		req.Image, req.Expression = img, "the red square"
		_, err := svc.Ground(ctx, req)
		return err
	}

	err := ask(events.GroundRequested{CheckpointID: id + "@gguf-q8_0"})
	want := "checkpoint " + id + " has no gguf export in dtype q8_0: export it first: `groundmesh export " + id + " --format gguf --dtype q8_0`"
	if CodeOf(err) != CodeExportNotFound || !strings.Contains(err.Error(), want) || HTTPStatus(CodeOf(err)) != http.StatusNotFound || !BadInput(err) {
		t.Fatalf("an export never made: %v (code %q), want %s with %q", err, CodeOf(err), CodeExportNotFound, want)
	}
	if _, err := svc.Promote(ctx, "", id+"@gguf-q8_0"); CodeOf(err) != CodeExportNotFound || !strings.Contains(err.Error(), want) {
		t.Fatalf("promoting an export never made: %v", err)
	}

	// Made, then its file removed: the same code, saying so.
	x := f.export(t, "q8_0")
	if err := ask(events.GroundRequested{CheckpointID: id + "@gguf-q8_0"}); err != nil {
		t.Fatalf("the q8_0 export on GoMLX (float32 from its file): %v", err)
	}
	svc.Close() // unload it, so that the next request loads it again
	svc = f.service(t, nil)
	p, _ := f.bs.Path(x.BlobKey)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	err = ask(events.GroundRequested{CheckpointID: id + "@gguf-q8_0"})
	if CodeOf(err) != CodeExportNotFound || !strings.Contains(err.Error(), "(its file "+x.BlobKey+" is gone)") || !strings.Contains(err.Error(), "groundmesh export "+id) {
		t.Fatalf("an export whose file is gone: %v (code %q)", err, CodeOf(err))
	}

	for _, c := range []struct {
		req  events.GroundRequested
		code string
		want string
	}{
		{events.GroundRequested{CheckpointID: id + "@tflite-float32"}, CodeBadRequest, `format "tflite" is not an export format (have: gguf`},
		{events.GroundRequested{CheckpointID: id + "@gguf-q9_9"}, CodeBadRequest, `dtype "q9_9" is not one a gguf export holds (have: float32, float16, q8_0, q4_0)`},
		{events.GroundRequested{CheckpointID: id + "@gguf"}, CodeBadRequest, "<checkpoint>@<format>-<dtype>"},
		{events.GroundRequested{Export: &events.ExportSpec{Format: "gguf", Dtype: "float32"}}, CodeBadRequest, "names no checkpoint"},
		{events.GroundRequested{CheckpointID: "00000000-0000-0000-0000-000000000000@gguf-float32"}, CodeModelNotFound, "no checkpoint"},
	} {
		if err := ask(c.req); CodeOf(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v (code %q), want %s with %q", c.req, err, CodeOf(err), c.code, c.want)
		}
	}

	// Over HTTP: 404 with the reason code.
	h, err := NewHTTPHandler(HTTPConfig{Tokens: []string{"k"}}, svc)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"image": "data:image/png;base64," + base64.StdEncoding.EncodeToString(img), "expression": "the red square",
		"checkpoint_id": id, "export": map[string]string{"format": "gguf", "dtype": "float16"}})
	r := httptest.NewRequest("POST", "/v1/ground", strings.NewReader(string(body)))
	r.Header.Set("Authorization", "Bearer k")
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var e ErrorBody
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || w.Code != http.StatusNotFound || e.Code != CodeExportNotFound ||
		!strings.Contains(e.Error, "groundmesh export "+id+" --format gguf --dtype float16") {
		t.Fatalf("POST /v1/ground for a missing export: %d %s", w.Code, w.Body)
	}

	// The configured export backend serves an export by default (here
	// ggml, which this test's Backends does not have); the request may
	// name another.
	f.export(t, "float32")
	svc = f.service(t, map[string]string{"gguf": "ggml"})
	if err := ask(events.GroundRequested{CheckpointID: id + "@gguf-float32"}); CodeOf(err) != CodeBackendUnavailable || !strings.Contains(err.Error(), `backend "ggml" for `+id+"@gguf-float32") {
		t.Fatalf("an export on its configured backend, ggml, not available: %v", err)
	}
	if err := ask(events.GroundRequested{CheckpointID: id + "@gguf-float32", Backend: "gomlx"}); err != nil {
		t.Fatalf("the export on the backend the request names: %v", err)
	}
	if err := ask(events.GroundRequested{CheckpointID: id}); err != nil {
		t.Fatalf("the checkpoint itself stays on its run's backend: %v", err)
	}
}

// TestPromoteExport: promoting an export alias makes requests that name no
// model served from the export (its file loaded, the answers naming it,
// the same boxes as the checkpoint's); the fact carries the export's blob
// and hash; promoting the checkpoint again serves the checkpoint.
func TestPromoteExport(t *testing.T) {
	f := newExportFixture(t, pluginHost(t))
	ctx := context.Background()
	id := f.ref.CheckpointID
	x := f.export(t, "float32")
	svc := f.service(t, nil)
	q := exportQueries(t)[1]

	before, err := svc.Ground(ctx, q)
	if err != nil || before.ModelVersion != id {
		t.Fatalf("before promotion: %q, %v", before.ModelVersion, err)
	}
	p, err := svc.Promote(ctx, "", id+"@gguf-float32")
	if err != nil {
		t.Fatal(err)
	}
	if p.Alias != DefaultAlias || p.CheckpointID != id || p.ModelVersion != id+"@gguf-float32" || p.Format != "gguf" || p.Dtype != "float32" ||
		p.ExportBlobKey != x.BlobKey || p.ExportSHA256 != x.SHA256 || p.Backend != "" || p.RunID != f.ref.RunID {
		t.Fatalf("promotion %+v, export %+v", p, x)
	}
	var fact events.ModelPromoted
	var payload []byte
	if err := f.pool.QueryRow(ctx, `SELECT payload FROM outbox WHERE topic = $1 ORDER BY seq DESC LIMIT 1`, events.TopicModelPromoted).Scan(&payload); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(payload, &fact); err != nil || fact.ModelVersion != p.ModelVersion || fact.ExportBlobKey != x.BlobKey {
		t.Fatalf("model.promoted fact %s (%v)", payload, err)
	}
	if m, err := svc.Model(ctx); err != nil || m.Version() != id+"@gguf-float32" {
		t.Fatalf("Model after promotion: %q, %v", m.Version(), err)
	}
	after, err := svc.Ground(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	exportPath, _ := f.bs.Path(x.BlobKey)
	if after.ModelVersion != id+"@gguf-float32" || after.Format != "gguf" || after.Dtype != "float32" || f.loads.last() != exportPath {
		t.Fatalf("after promoting the export: served by %q (%s %s), last load %q", after.ModelVersion, after.Format, after.Dtype, f.loads.last())
	}
	sameBoxes(t, "the promoted export", before, after, 1e-4)

	// A promotion's backend is kept: one this worker lacks fails the
	// request, and saying so names it.
	if _, err := svc.PromoteModel(ctx, DefaultAlias, ModelSpec{CheckpointID: id, Format: "gguf", Dtype: "float32", Backend: "ggml"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Ground(ctx, q); CodeOf(err) != CodeBackendUnavailable || !strings.Contains(err.Error(), `backend "ggml"`) {
		t.Fatalf("an alias promoted with backend ggml: %v", err)
	}

	if _, err := svc.Promote(ctx, "", id); err != nil {
		t.Fatal(err)
	}
	back, err := svc.Ground(ctx, q)
	if err != nil || back.ModelVersion != id || back.Format != "" || strings.HasSuffix(f.loads.last(), ".gguf") {
		t.Fatalf("after promoting the checkpoint again: %q (%s), %v, last load %q", back.ModelVersion, back.Format, err, f.loads.last())
	}
	var format, dtype, backend string
	if err := f.pool.QueryRow(ctx, `SELECT format, dtype, backend FROM model_aliases WHERE alias = $1`, DefaultAlias).Scan(&format, &dtype, &backend); err != nil ||
		format != "" || dtype != "" || backend != "" {
		t.Fatalf("alias row after promoting the checkpoint: %q %q %q (%v)", format, dtype, backend, err)
	}
}

// dtypeRecorder records the dtype of every Load.
type dtypeRecorder struct {
	compute.Backend
	mu     sync.Mutex
	dtypes []string
}

func (d *dtypeRecorder) Load(ctx context.Context, req compute.LoadRequest) (compute.LoadResult, error) {
	d.mu.Lock()
	d.dtypes = append(d.dtypes, req.Dtype)
	d.mu.Unlock()
	return d.Backend.Load(ctx, req)
}

// serviceOn is ground over the fixture serving format's exports on the
// backend name (b), and everything else on GoMLX.
func (f *exportFixture) serviceOn(t *testing.T, format, name string, b compute.Backend) *Service {
	t.Helper()
	svc, err := New(Config{Catalog: NewPGCatalog(f.pool), Blob: f.bs, ExportBackends: map[string]string{format: name},
		Backends: func(n string) (compute.Backend, error) {
			switch n {
			case "gomlx":
				return f.loads, nil
			case name:
				return b, nil
			}
			return nil, fmt.Errorf("backend %q: not in this test", n)
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return svc
}

// TestServeONNXExport: the checkpoint's float32 ONNX export, written by
// services/train, is served on the onnx plugin (ONNX Runtime running the
// bundle's own graphs) when the request names it, with the checkpoint's
// boxes on GoMLX. make test builds the plugin (make onnx); without it the
// test says so and stops.
func TestServeONNXExport(t *testing.T) {
	dir := os.Getenv("GROUNDMESH_PLUGIN_DIR")
	path := filepath.Join(dir, "groundmesh-onnx")
	if _, err := os.Stat(path); dir == "" || err != nil {
		t.Skipf("the onnx plugin is not built in %q (make onnx)", dir)
	}
	onnxHost, err := compute.NewHost(compute.HostConfig{Path: path})
	if err != nil {
		t.Fatalf("the onnx plugin: %v", err)
	}
	t.Cleanup(func() { _ = onnxHost.Close() })
	f := newExportFixture(t, pluginHost(t))
	f.exportAs(t, "onnx", "float32")
	onnxLoads := &dtypeRecorder{Backend: onnxHost}
	svc := f.serviceOn(t, "onnx", "onnx", onnxLoads)
	ctx := context.Background()
	id := f.ref.CheckpointID
	for i, q := range exportQueries(t) {
		a, err := svc.Ground(ctx, q)
		if err != nil {
			t.Fatalf("query %d from the checkpoint: %v", i, err)
		}
		ask := q
		ask.CheckpointID = id + "@onnx-float32"
		b, err := svc.Ground(ctx, ask)
		if err != nil {
			t.Fatalf("query %d from the onnx export: %v", i, err)
		}
		if b.ModelVersion != id+"@onnx-float32" || b.Format != "onnx" || b.Dtype != "float32" || b.Backend != "onnx" {
			t.Fatalf("query %d: answered by %q (format %q, dtype %q, backend %q)", i, b.ModelVersion, b.Format, b.Dtype, b.Backend)
		}
		sameBoxes(t, "query "+q.Expression, a, b, 1e-4)
	}
	onnxLoads.mu.Lock()
	defer onnxLoads.mu.Unlock()
	if len(onnxLoads.dtypes) != 1 || onnxLoads.dtypes[0] != "float32" {
		t.Fatalf("loads on the onnx plugin, by dtype: %q, want the export once in float32", onnxLoads.dtypes)
	}
}
