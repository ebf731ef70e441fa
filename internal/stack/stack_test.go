package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/internal/telemetry"
	"github.com/groundmesh/groundmesh/workflows"
)

// testStack starts a whole stack on a fresh database with the in-process
// Temporal dev server and UI on free ports, and tracing to a file.
// edit, when given, changes the config before the stack starts.
func testStack(t *testing.T, edit ...func(*Config)) (*Stack, *telemetry.Telemetry, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	traceFile := filepath.Join(dir, "traces.jsonl")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = telemetry.NewLogger(os.Stderr, slog.LevelInfo, "groundmesh-test")
	}
	tel, err := telemetry.Setup(ctx, telemetry.Config{Service: "groundmesh-test", TraceFile: traceFile, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	pluginDir := os.Getenv("GROUNDMESH_PLUGIN_DIR")
	cfg := Config{
		DataDir: dir, DatabaseURL: store.NewTestDB(t), HTTPAddr: "127.0.0.1:0",
		PluginDir: pluginDir, Worker: true, Logger: logger, Metrics: tel.Gatherer(),
	}
	for _, e := range edit {
		e(&cfg)
	}
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start stack: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Logf("close stack: %v", err)
		}
	})
	return s, tel, traceFile
}

func postJSON(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestIngestFlowsEndToEnd: gateway -> Pipeline workflow -> Ingest child ->
// bridge activity -> ingest.requested on the Postgres bus -> ingest service
// -> Postgres rows + dataset.ingested fact (outbox -> bus) ->
// ingest.completed -> bridge -> activity done; the run is listed by
// Temporal, the UI serves, and one trace covers every hop.
func TestIngestFlowsEndToEnd(t *testing.T) {
	s, tel, traceFile := testStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	code, body := postJSON(t, s.GatewayURL()+"/api/pipelines", `{"stages":["ingest"],"dataset":{"images":40,"size":48,"seed":7}}`)
	if code != http.StatusAccepted {
		t.Fatalf("start pipeline: %d %s", code, body)
	}
	var started struct {
		WorkflowID string `json:"workflow_id"`
	}
	if err := json.Unmarshal(body, &started); err != nil {
		t.Fatal(err)
	}
	var res workflows.PipelineResult
	if err := s.Temporal.GetWorkflow(ctx, started.WorkflowID, "").Get(ctx, &res); err != nil {
		t.Fatalf("pipeline: %v", err)
	}
	if res.DatasetID == "" || len(res.StagesRan) != 1 {
		t.Fatalf("result %+v", res)
	}

	// Postgres: the dataset version and its fact, relayed to the bus.
	var images int64
	if err := s.Pool.QueryRow(ctx, `SELECT (counts->>'images')::bigint FROM dataset_versions WHERE id = $1`, res.DatasetID).Scan(&images); err != nil {
		t.Fatalf("dataset row: %v", err)
	}
	if images != 40 {
		t.Fatalf("dataset has %d images, want 40", images)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var relayed bool
		err := s.Pool.QueryRow(ctx, `SELECT published_at IS NOT NULL FROM outbox WHERE topic = 'dataset.ingested' AND payload->>'dataset_id' = $1`, res.DatasetID).Scan(&relayed)
		if err != nil {
			t.Fatalf("outbox fact: %v", err)
		}
		if relayed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("dataset.ingested was not relayed to the bus within 30s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	var onBus int
	if err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM "watermill_dataset.ingested" WHERE convert_from(payload, 'UTF8')::jsonb->>'dataset_id' = $1`, res.DatasetID).Scan(&onBus); err != nil {
		t.Fatalf("bus table: %v", err)
	}
	if onBus != 1 {
		t.Fatalf("dataset.ingested on the bus %d times, want 1", onBus)
	}

	// Temporal lists the run and the UI serves its page.
	list, err := s.Temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: "WorkflowType = 'Pipeline'"})
	if err != nil {
		t.Fatalf("list workflows: %v", err)
	}
	found := false
	for _, e := range list.Executions {
		found = found || e.Execution.WorkflowId == started.WorkflowID
	}
	if !found {
		t.Fatalf("pipeline %s not in the workflow list", started.WorkflowID)
	}
	resp, err := http.Get(s.UIURL() + "/namespaces/default/workflows")
	if err != nil {
		t.Fatalf("ui: %v", err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(bytes.ToLower(page), []byte("<html")) {
		t.Fatalf("ui page: %d %.200s", resp.StatusCode, page)
	}

	// One trace: gateway, workflow, bus hop, service handler, SQL. The bus
	// handler that signals the workflow ends its span after the signal, so
	// the span can land after the run is seen finished: read the trace until
	// every wanted span is there or 10 s have passed.
	wantSpans := []string{"RunWorkflow:Pipeline", "RunWorkflow:Ingest", "RunActivity:Command", "ingest.requested publish", "ingest.requested process", "ingest.handle", "ingest.completed process"}
	var traceID string
	names := map[string]bool{}
	for spanDeadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err := tel.ForceFlush(ctx); err != nil {
			t.Fatal(err)
		}
		spans, err := telemetry.ReadTraceFile(traceFile)
		if err != nil {
			t.Fatal(err)
		}
		for _, sp := range spans {
			if strings.HasPrefix(sp.Name, "POST /api/pipelines") {
				traceID = sp.TraceID
			}
		}
		if traceID == "" {
			t.Fatal("no gateway span")
		}
		for _, sp := range spans {
			if sp.TraceID == traceID {
				names[sp.Name] = true
			}
		}
		all := true
		for _, want := range wantSpans {
			all = all && names[want]
		}
		if all || time.Now().After(spanDeadline) {
			break
		}
	}
	has := func(pred func(string) bool) bool {
		for n := range names {
			if pred(n) {
				return true
			}
		}
		return false
	}
	for _, want := range wantSpans {
		if !names[want] {
			t.Errorf("trace %s lacks span %q", traceID, want)
		}
	}
	if !has(func(n string) bool { return strings.Contains(n, "INSERT") || strings.Contains(n, "query") }) {
		t.Errorf("trace %s has no SQL span", traceID)
	}
	if t.Failed() {
		t.Logf("spans in trace: %v", names)
	}
}

// TestBadInputIsRejectedAndPoisonIsolated: invalid workflow input names the
// field; a malformed command goes to the poison queue with the reason and
// the consumer keeps handling good commands.
func TestBadInputIsRejectedAndPoisonIsolated(t *testing.T) {
	s, _, _ := testStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	code, body := postJSON(t, s.GatewayURL()+"/api/pipelines", `{"dataset":{"format":"csv"}}`)
	if code != http.StatusBadRequest || !strings.Contains(string(body), "dataset.format") {
		t.Fatalf("bad input via gateway: %d %s", code, body)
	}
	// Through Temporal directly (as the UI does): the workflow fails, naming the field.
	run, err := s.Temporal.ExecuteWorkflow(ctx, clientOpts("bad-input"), workflows.PipelineWorkflowName, json.RawMessage(`{"datset":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	err = run.Get(ctx, nil)
	if err == nil || !strings.Contains(err.Error(), `unknown field "datset"`) {
		t.Fatalf("want the unknown field named, got %v", err)
	}

	// A malformed command: poisoned with its reason, the consumer goes on.
	if err := s.Bus.Publish(ctx, "ingest.requested", map[string]any{"format": 12, "correlation_id": "poison-1"}, nil); err != nil {
		t.Fatal(err)
	}
	run, err = s.Temporal.ExecuteWorkflow(ctx, clientOpts("after-poison"), workflows.PipelineWorkflowName, json.RawMessage(`{"stages":["ingest"],"dataset":{"images":20,"size":48,"seed":3}}`))
	if err != nil {
		t.Fatal(err)
	}
	var res workflows.PipelineResult
	if err := run.Get(ctx, &res); err != nil {
		t.Fatalf("good command after poison: %v", err)
	}
	var reason string
	if err := s.Pool.QueryRow(ctx, `SELECT reason FROM poison_messages WHERE topic = 'ingest.requested' ORDER BY created_at DESC LIMIT 1`).Scan(&reason); err != nil {
		t.Fatalf("poison row: %v", err)
	}
	if !strings.Contains(reason, "format") {
		t.Fatalf("poison reason %q does not name the field", reason)
	}
}

func clientOpts(prefix string) (o startOptions) {
	o.ID = fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
	o.TaskQueue = workflows.TaskQueue
	return o
}

type startOptions = client.StartWorkflowOptions
