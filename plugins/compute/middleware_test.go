package compute_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

func trainReq(t *testing.T, steps int) compute.TrainRequest {
	t.Helper()
	dir := t.TempDir()
	shard, err := computetest.WriteTinyShard(dir, computetest.TinyConfig(), 16, 1)
	if err != nil {
		t.Fatal(err)
	}
	return compute.TrainRequest{
		RunID: "run-1", Stage: "stage2", ModelConfig: computetest.TinyConfigJSON(), Shards: []string{shard},
		Steps: steps, BatchSize: 4, LearningRate: 1e-2, LogEvery: 1, CheckpointEvery: 2, CheckpointDir: filepath.Join(dir, "ckpt"),
	}
}

func attrs(kvs []attribute.KeyValue) map[string]attribute.Value {
	m := map[string]attribute.Value{}
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value
	}
	return m
}

func TestWithTracing(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	b := compute.WithTracing(computetest.NewToy(computetest.ToyOptions{}), "toy")
	if _, err := b.Train(context.Background(), trainReq(t, 4), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prefill(context.Background(), compute.PrefillRequest{Session: "nope"}); !errors.Is(err, compute.ErrNotFound) {
		t.Fatalf("prefill: %v", err)
	}
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	tr := spans[0]
	a := attrs(tr.Attributes())
	if tr.Name() != "compute.Train" || a["compute.backend"].AsString() != "toy" || a["compute.stage"].AsString() != "stage2" || a["compute.step"].AsInt64() != 4 {
		t.Errorf("train span %s %v", tr.Name(), a)
	}
	if n := len(tr.Events()); n != 2 {
		t.Errorf("train span has %d checkpoint events, want 2", n)
	}
	if spans[1].Status().Code.String() != "Error" {
		t.Errorf("failed prefill span status %v", spans[1].Status())
	}
}

func TestWithMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	b, err := compute.WithMetrics(computetest.NewToy(computetest.ToyOptions{}), "toy", mp.Meter("test"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := b.Train(ctx, trainReq(t, 3), nil); err != nil {
		t.Fatal(err)
	}
	b.Describe(ctx)
	b.Unload(ctx, "missing")
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int64{}
	var steps int64
	var timed uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch m.Name {
			case "groundmesh.compute.calls":
				for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
					method, _ := dp.Attributes.Value("compute.method")
					outcome, _ := dp.Attributes.Value("outcome")
					counts[method.AsString()+"/"+outcome.AsString()] += dp.Value
				}
			case "groundmesh.compute.train.steps":
				for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
					steps += dp.Value
				}
			case "groundmesh.compute.train.step.duration":
				for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
					timed += dp.Count
				}
			}
		}
	}
	want := map[string]int64{"Train/ok": 1, "Describe/ok": 1, "Unload/error": 1}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("calls %s = %d, want %d (all: %v)", k, counts[k], v, counts)
		}
	}
	if steps != 2 { // steps 1 -> 2 -> 3 counted between reports
		t.Errorf("train steps counted %d, want 2", steps)
	}
	if timed != 2 {
		t.Errorf("train step times recorded %d, want one per step counted (2)", timed)
	}
}

func TestWithLogging(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := compute.WithLogging(computetest.NewToy(computetest.ToyOptions{}), logger)
	ctx := context.Background()
	if _, err := b.Train(ctx, trainReq(t, 2), nil); err != nil {
		t.Fatal(err)
	}
	b.Unload(ctx, "missing")
	out := buf.String()
	for _, want := range []string{"compute train started", "compute checkpoint", "compute train ", "stage=stage2", "compute unload failed", "not found"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}
