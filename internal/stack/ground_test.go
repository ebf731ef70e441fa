package stack

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.temporal.io/sdk/temporal"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/telemetry"
	"github.com/groundmesh/groundmesh/internal/testutil"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/services/ground"
	"github.com/groundmesh/groundmesh/services/ground/groundtest"
	"github.com/groundmesh/groundmesh/workflows"
)

// pluginDir is GROUNDMESH_PLUGIN_DIR (make test builds the plugin there),
// else a directory holding the GoMLX plugin built for this test.
func pluginDir(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("GROUNDMESH_PLUGIN_DIR"); dir != "" {
		return dir
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "groundmesh-gomlx"), "./plugins/gomlx/cmd/groundmesh-gomlx")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the GoMLX plugin (or set GROUNDMESH_PLUGIN_DIR): %v\n%s", err, out)
	}
	return dir
}

func groundRequest(t *testing.T, url, token string, body any) (int, map[string]any) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest("POST", url+"/v1/ground", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("status %d, body %q: %v", resp.StatusCode, raw, err)
	}
	return resp.StatusCode, out
}

func pngDataURI(t *testing.T) string {
	img := image.NewRGBA(image.Rect(0, 0, 80, 60))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.RGBA{235, 230, 220, 255}), image.Point{}, draw.Src)
	draw.Draw(img, image.Rect(10, 10, 30, 25), image.NewUniform(color.RGBA{220, 40, 40, 255}), image.Point{}, draw.Src)
	var sb strings.Builder
	if err := png.Encode(&sb, img); err != nil {
		t.Fatal(err)
	}
	return "data:image/png;base64," + base64.StdEncoding.EncodeToString([]byte(sb.String()))
}

func getJSON(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// groundToken is TestGroundOverHTTP's API token, and wrongToken one it
// sends that is not accepted: neither may appear in a log line or a span.
const (
	groundToken = "tok-7f3a9c-never-logged"
	wrongToken  = "tok-5d1e0b-refused-never-logged"
)

// TestGroundOverHTTP: the gateway's POST /v1/ground on the embedded stack
// (real Postgres, the Postgres bus, the real GoMLX plugin process): refused
// without a token, no_model before training, then HTTP -> ground.requested
// -> services/ground -> plugin -> ground.completed -> HTTP answer with the
// model version, in one trace; limits refused before the bus; concurrent
// requests all answered; the API tokens, accepted or not, in no log line
// (at debug level) and no span.
func TestGroundOverHTTP(t *testing.T) {
	dir := pluginDir(t)
	logs := &testutil.SyncBuffer{}
	captured := telemetry.NewLogger(io.MultiWriter(logs, testLogSink()), slog.LevelDebug, "groundmesh-test")
	// The process default too: a component that logs through slog's
	// default logger is held to the same rule.
	prev := slog.Default()
	slog.SetDefault(captured)
	t.Cleanup(func() { slog.SetDefault(prev) })
	s, tel, traceFile := testStack(t, func(c *Config) {
		c.Logger = captured
		c.PluginDir = dir
		c.Ground.APITokens = []string{groundToken}
		c.Ground.Limits.MaxPixels = 1 << 20
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	url := s.GatewayURL()
	img := pngDataURI(t)
	req := map[string]any{"image": img, "expression": "the red square"}

	if code, _ := getJSON(t, url+"/healthz"); code != 0 && code != 200 {
		t.Fatalf("healthz %d", code)
	}
	code, ready := getJSON(t, url+"/readyz")
	if code != 200 || ready["bus"] != "postgres" || !strings.HasPrefix(ready["model"].(string), "none") {
		t.Fatalf("readyz before training: %d %v", code, ready)
	}
	if code, out := groundRequest(t, url, "", req); code != 401 || out["code"] != ground.CodeUnauthorized {
		t.Fatalf("without token: %d %v", code, out)
	}
	if code, out := groundRequest(t, url, wrongToken, req); code != 401 || out["code"] != ground.CodeUnauthorized {
		t.Fatalf("wrong token: %d %v", code, out)
	}
	if code, out := groundRequest(t, url, groundToken, req); code != 503 || out["code"] != ground.CodeNoModel {
		t.Fatalf("before training: %d %v", code, out)
	}

	// A trained model: the grounding service learns of it from the
	// train.completed fact alone, as it does from services/train.
	m := groundtest.WriteModel(t, s.Blob.(*blob.Local), "m")
	runID, ckID := uuid.NewString(), uuid.NewString()
	publishRun(t, s, runID, ckID, "stage3", 9, m)
	code, out := groundRequest(t, url, groundToken, req)
	if code != 200 {
		t.Fatalf("ground: %d %v", code, out)
	}
	var res events.GroundCompleted
	raw, _ := json.Marshal(out)
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	if res.ModelVersion != ckID || res.RunID != runID || res.Stage != "stage3" || res.Step != 9 || res.Width != 80 || res.Height != 60 {
		t.Fatalf("answer %+v", res)
	}
	if len(res.Boxes) != 1 || res.Boxes[0].Phrase != "the red square" || !strings.HasPrefix(res.Text, "[") {
		t.Fatalf("boxes %+v text %q", res.Boxes, res.Text)
	}
	for _, v := range res.Boxes[0].Norm {
		if v < 0 || v > 1 {
			t.Fatalf("normalized box %v", res.Boxes[0].Norm)
		}
	}
	if code, ready := getJSON(t, url+"/readyz"); code != 200 || ready["model"] != ckID {
		t.Fatalf("readyz after training: %d %v", code, ready)
	}

	// A limit is refused by the gateway: nothing is published.
	if code, out := groundRequest(t, url, groundToken, map[string]any{"image": img, "expression": strings.Repeat("x", 600)}); code != 400 || out["code"] != ground.CodeExpressionTooLong {
		t.Fatalf("long expression: %d %v", code, out)
	}
	var published int
	if err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM "watermill_ground.requested"`).Scan(&published); err != nil || published != 2 {
		t.Fatalf("ground.requested published %d times (%v), want 2", published, err)
	}

	// Concurrent requests are all answered, with the same answer.
	var wg sync.WaitGroup
	texts := make([]string, 6)
	for i := range texts {
		wg.Go(func() {
			code, out := groundRequest(t, url, groundToken, req)
			if code != 200 {
				t.Errorf("concurrent request %d: %d %v", i, code, out)
				return
			}
			texts[i], _ = out["text"].(string)
		})
	}
	wg.Wait()
	for i, tx := range texts {
		if tx != res.Text {
			t.Errorf("concurrent answer %d %q, want %q", i, tx, res.Text)
		}
	}

	// Promotion through the API: a second model becomes production, and
	// the next answer names it.
	m2 := groundtest.WriteModel(t, s.Blob.(*blob.Local), "m2")
	run2, ck2 := uuid.NewString(), uuid.NewString()
	// services/train exports this one below: its own tables hold it too
	// (the test plays train's recorder there; ground reads none of them).
	if _, err := s.Pool.Exec(ctx, `INSERT INTO runs (id, synth_set_id, backend, spec, model_config, tokenizer_key, status)
		VALUES ($1, $2, 'gomlx', '{}', $3, $4, 'completed')`, run2, uuid.NewString(), string(m2.ModelConfig), m2.TokenizerKey); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pool.Exec(ctx, `INSERT INTO checkpoints (id, run_id, stage, step, loss, blob_key, sha256, bytes)
		VALUES ($1, $2, 'stage2', 4, 0.5, $3, '', 0)`, ck2, run2, m2.CheckpointKey); err != nil {
		t.Fatal(err)
	}
	publishRun(t, s, run2, ck2, "stage2", 4, m2)
	preq, _ := http.NewRequest("POST", url+"/v1/models/promote", strings.NewReader(`{"checkpoint_id":"`+ckID+`"}`))
	preq.Header.Set("Authorization", "Bearer "+groundToken)
	presp, err := http.DefaultClient.Do(preq)
	if err != nil {
		t.Fatal(err)
	}
	presp.Body.Close()
	if presp.StatusCode != 200 {
		t.Fatalf("promote: %d", presp.StatusCode)
	}
	// The newer run would serve without the promotion.
	if code, out := groundRequest(t, url, groundToken, req); code != 200 || out["model_version"] != ckID {
		t.Fatalf("after promoting %s: %d %v", ckID, code, out)
	}

	// The Pipeline's promotion activity, on the real catalog: the second
	// model becomes production. A checkpoint the grounding service has not
	// heard of may be one whose facts are still on the bus: the activity
	// waits for them (here a third run's, published as it starts), and
	// after its wait fails retryably (the workflow's retry policy bounds
	// the rest); a refusal on the request's own merits is bad input, not
	// retried.
	acts := &workflows.Activities{Promoter: ground.NewPGCatalog(s.Pool)}
	if p, err := acts.Promote(ctx, workflows.PromoteRequest{Alias: ground.DefaultAlias, CheckpointID: ck2}); err != nil || p.CheckpointID != ck2 || p.RunID != run2 {
		t.Fatalf("pipeline promotion: %+v %v", p, err)
	}
	if code, out := groundRequest(t, url, groundToken, req); code != 200 || out["model_version"] != ck2 {
		t.Fatalf("after the pipeline promoted %s: %d %v", ck2, code, out)
	}
	run3, ck3 := uuid.NewString(), uuid.NewString()
	if err := s.Bus.Publish(ctx, events.TopicTrainCompleted, runFacts(run3, ck3, "stage3", 2, m2), nil); err != nil {
		t.Fatal(err)
	}
	if p, err := acts.Promote(ctx, workflows.PromoteRequest{Alias: "staging", CheckpointID: ck3}); err != nil || p.CheckpointID != ck3 || p.RunID != run3 {
		t.Fatalf("promoting a checkpoint whose facts were just published: %+v %v", p, err)
	}
	quick := &workflows.Activities{Promoter: ground.NewPGCatalog(s.Pool), PromoteWait: 300 * time.Millisecond}
	_, err = quick.Promote(ctx, workflows.PromoteRequest{Alias: ground.DefaultAlias, CheckpointID: uuid.NewString()})
	var appErr *temporal.ApplicationError
	if err == nil || (errors.As(err, &appErr) && appErr.NonRetryable()) || !workflows.PendingError(err) || !strings.Contains(err.Error(), "not known to the grounding service") {
		t.Fatalf("promoting a checkpoint never heard of: %v, want a retryable error saying the grounding service does not know it", err)
	}
	_, err = quick.Promote(ctx, workflows.PromoteRequest{Alias: "Not An Alias", CheckpointID: ck2})
	if !errors.As(err, &appErr) || !appErr.NonRetryable() || appErr.Type() != workflows.ErrTypeBadInput {
		t.Fatalf("promoting under a malformed alias: %v, want a non-retryable %s", err, workflows.ErrTypeBadInput)
	}

	// An export through the gateway and the bus: services/train writes the
	// float32 GGUF of the production checkpoint (ck2), and a request that
	// names it is served from it (on ggml where that plugin is in the
	// plugin directory, else on the run's GoMLX) with the checkpoint's box
	// and an answer that names it; one never made is export_not_found.
	p2, _ := s.Blob.LocalPath(m2.CheckpointKey)
	sum, n, err := compute.FileSHA256(p2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pool.Exec(ctx, `UPDATE checkpoints SET sha256 = $2, bytes = $3 WHERE id = $1`, ck2, sum, n); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Services.Train.Export(ctx, events.ExportRequested{CheckpointID: ck2, Format: "gguf", Dtype: "float32"}); err != nil {
		t.Fatal(err)
	}
	// The grounding service learns of the export from train's
	// model.exported fact (its outbox, relayed to the bus).
	catalog := ground.NewPGCatalog(s.Pool)
	waitUntil(t, 30*time.Second, "the grounding service to learn of the export (model.exported)", func() bool {
		_, err := catalog.Export(ctx, ck2, "gguf", "float32")
		return err == nil
	})
	_, fromCk := groundRequest(t, url, groundToken, req)
	xreq := map[string]any{"image": img, "expression": "the red square", "checkpoint_id": ck2 + "@gguf-float32"}
	code, fromX := groundRequest(t, url, groundToken, xreq)
	wantBackend := "gomlx"
	if BackendAvailable(dir, "ggml") {
		wantBackend = "ggml"
	}
	if code != 200 || fromX["model_version"] != ck2+"@gguf-float32" || fromX["checkpoint_id"] != ck2 || fromX["format"] != "gguf" ||
		fromX["dtype"] != "float32" || fromX["backend"] != wantBackend {
		t.Fatalf("the export through the gateway: %d %v (want it served on %s)", code, fromX, wantBackend)
	}
	normOf := func(out map[string]any) []any { return out["boxes"].([]any)[0].(map[string]any)["norm"].([]any) }
	for i, v := range normOf(fromX) {
		if d := v.(float64) - normOf(fromCk)[i].(float64); d > 1e-3 || d < -1e-3 {
			t.Fatalf("the export's box %v, the checkpoint's %v", normOf(fromX), normOf(fromCk))
		}
	}
	xreq["checkpoint_id"] = ck2 + "@gguf-q4_0"
	if code, out := groundRequest(t, url, groundToken, xreq); code != 404 || out["code"] != ground.CodeExportNotFound ||
		!strings.Contains(out["error"].(string), "groundmesh export "+ck2+" --format gguf --dtype q4_0") {
		t.Fatalf("an export never made, through the gateway: %d %v", code, out)
	}

	// The service's metrics and the API's document are served.
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(metrics), `groundmesh_ground_requests_total{code="ok"} 11`) {
		t.Errorf("metrics: %d\n%s", resp.StatusCode, metrics)
	}
	if code, doc := getJSON(t, url+"/v1/openapi.json"); code != 200 || doc["openapi"] == nil {
		t.Errorf("openapi.json: %d", code)
	}
	if resp, err := http.Get(url + "/ground"); err != nil || resp.StatusCode != 200 {
		t.Errorf("the page: %v %v", resp, err)
	} else {
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(page), "/v1/ground") {
			t.Errorf("the page does not call the API")
		}
	}

	// One trace from the HTTP request through the bus and the batch to the
	// plugin call.
	want := []string{"ground.Client.Ground", "ground.requested publish", "ground.requested process", "ground.Ground", "ground.batch", "compute.Generate", "ground.completed process"}
	var missing []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err := tel.ForceFlush(ctx); err != nil {
			t.Fatal(err)
		}
		spans, err := telemetry.ReadTraceFile(traceFile)
		if err != nil {
			t.Fatal(err)
		}
		// Of the traces of the gateway's grounding requests, the one with
		// the fewest missing spans (the answered requests have none).
		byTrace := map[string]map[string]bool{}
		for _, sp := range spans {
			if strings.HasPrefix(sp.Name, "POST /v1/ground") {
				byTrace[sp.TraceID] = map[string]bool{}
			}
		}
		for _, sp := range spans {
			if names, ok := byTrace[sp.TraceID]; ok {
				names[sp.Name] = true
			}
		}
		missing = want
		for _, names := range byTrace {
			var m []string
			for _, w := range want {
				if !names[w] {
					m = append(m, w)
				}
			}
			if len(m) < len(missing) {
				missing = m
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(missing) > 0 {
		t.Fatalf("the first grounding request's trace lacks %q", missing)
	}
	spans, err := os.ReadFile(traceFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "ground") {
		t.Fatal("the captured log has no line about grounding: the check below would prove nothing")
	}
	for _, tok := range []string{groundToken, wrongToken} {
		if strings.Contains(logs.String(), tok) {
			t.Errorf("an API token (%q) is in the log", tok)
		}
		if strings.Contains(string(spans), tok) {
			t.Errorf("an API token (%q) is in the traces", tok)
		}
	}
}

// runFacts is the train.completed fact services/train publishes for a
// run whose final checkpoint ckID holds m.
func runFacts(runID, ckID, stage string, step int, m groundtest.Model) events.TrainCompleted {
	return events.TrainCompleted{RunID: runID, Checkpoints: map[string]string{stage: ckID},
		Run: &events.RunFacts{Backend: "gomlx", ModelConfig: m.ModelConfig, TokenizerKey: m.TokenizerKey,
			Checkpoints: []events.CheckpointRef{{ID: ckID, Stage: stage, Step: step, BlobKey: m.CheckpointKey}}}}
}

// publishRun publishes a run's train.completed fact on the stack's bus and
// waits until the grounding service has consumed it: facts travel
// asynchronously.
func publishRun(t *testing.T, s *Stack, runID, ckID, stage string, step int, m groundtest.Model) {
	t.Helper()
	if err := s.Bus.Publish(context.Background(), events.TopicTrainCompleted, runFacts(runID, ckID, stage, step, m), nil); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "the grounding service to learn of run "+runID, func() bool {
		_, err := s.Services.Ground.Checkpoint(context.Background(), ckID)
		return err == nil
	})
}

// testLogSink is where a test's own log lines go besides its capture: the
// terminal under -v, nowhere otherwise.
func testLogSink() io.Writer {
	if testing.Verbose() {
		return os.Stderr
	}
	return io.Discard
}
