package stack

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/groundmesh/groundmesh/internal/testutil"
)

// TestMetricsEndpoint: after a pipeline and a few grounding requests,
// GET /metrics on the gateway serves, in the Prometheus text format, the
// latency histograms of requests, batches, queue waits, plugin calls, bus
// handlers and bus lag, the training step time and loss, synthesis
// throughput and the poison queue's size, each with samples.
//
// Not parallel: the OpenTelemetry meter provider is global, and a stack
// started beside this one would take over the instruments its services
// create.
func TestMetricsEndpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline; skipped with -short")
	}
	const token = "tok-metrics"
	s, _, _ := testStack(t, func(c *Config) { c.PluginDir = pluginDir(t); c.Ground.APITokens = []string{token} })
	ctx, run := startPipeline(t, s, "metrics", testutil.SmallPipeline(17))
	res := pipelineDone(t, ctx, run, "for metrics")

	// The finished Pipeline is found by its search attributes, as the
	// Temporal UI filters runs.
	query := fmt.Sprintf(`GroundmeshBackend = "gomlx" AND GroundmeshStage = "done" AND GroundmeshDataset = %q`, res.DatasetID)
	waitUntil(t, 30*time.Second, "the pipeline listed by its search attributes", func() bool {
		list, err := s.Temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: query})
		if err != nil {
			t.Fatalf("list workflows %s: %v", query, err)
		}
		for _, e := range list.GetExecutions() {
			if e.GetExecution().GetWorkflowId() == run.GetID() {
				return true
			}
		}
		return false
	})
	png := pngDataURI(t)
	for range 3 {
		if code, out := groundRequest(t, s.httpURL, token, map[string]any{"image": png, "expression": "the red square"}); code != 200 {
			t.Fatalf("grounding request: %d %v", code, out)
		}
	}

	resp, err := http.Get(s.httpURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	histograms := []string{
		"groundmesh_ground_request_seconds",
		"groundmesh_ground_batch_size",
		"groundmesh_ground_queue_wait_seconds",
		"groundmesh_compute_call_duration_seconds",
		"messaging_process_duration_seconds",
		"groundmesh_bus_lag_seconds",
		"groundmesh_compute_train_step_duration_seconds",
		"groundmesh_synth_build_duration_seconds",
	}
	for _, name := range histograms {
		f := families[name]
		if f == nil || f.GetType() != dto.MetricType_HISTOGRAM {
			t.Errorf("no histogram %s", name)
			continue
		}
		var n uint64
		for _, m := range f.GetMetric() {
			n += m.GetHistogram().GetSampleCount()
		}
		if n == 0 {
			t.Errorf("histogram %s has no samples", name)
		}
	}
	for _, name := range []string{"groundmesh_compute_train_loss", "groundmesh_synth_samples_per_second", "groundmesh_bus_poison_messages", "groundmesh_ground_queued_requests"} {
		if f := families[name]; f == nil || f.GetType() != dto.MetricType_GAUGE || len(f.GetMetric()) == 0 {
			t.Errorf("no gauge %s", name)
		}
	}
	if f := families["groundmesh_synth_samples_total"]; f == nil || f.GetMetric()[0].GetCounter().GetValue() == 0 {
		t.Errorf("no synth samples counted")
	}
	// The training loss carries its stage, so a dashboard can tell them apart.
	stages := map[string]bool{}
	for _, m := range families["groundmesh_compute_train_loss"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "compute_stage" {
				stages[l.GetValue()] = true
			}
		}
	}
	if len(stages) != 3 {
		t.Errorf("train loss by stage %v, want the three stages", stages)
	}
	if t.Failed() {
		t.Logf("GET /metrics:\n%s", body)
	}
}

// TestMetricsWithoutGateway: a process without the gateway (a worker)
// serves GET /metrics on a listener of its own, with its OpenTelemetry
// instruments (the bus's poison-queue gauge is read on every scrape).
func TestMetricsWithoutGateway(t *testing.T) {
	s, _, _ := testStack(t, func(c *Config) { c.HTTPAddr = "off"; c.MetricsAddr = "127.0.0.1:0" })
	if s.GatewayURL() != "" || s.MetricsURL() == "" {
		t.Fatalf("gateway %q, metrics %q: want only the metrics listener", s.GatewayURL(), s.MetricsURL())
	}
	resp, err := http.Get(s.MetricsURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "# TYPE groundmesh_bus_poison_messages gauge") ||
		!strings.Contains(string(body), "groundmesh_ground_queued_requests") {
		t.Fatalf("GET /metrics: %d\n%s", resp.StatusCode, body)
	}
}
