package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// The test binary doubles as a "plugin" process: with these variables set,
// TestMain writes spans under the propagated parent and exits.
const (
	envChildFile   = "TELEMETRY_TEST_CHILD_FILE"
	envChildName   = "TELEMETRY_TEST_CHILD_NAME"
	envChildSpans  = "TELEMETRY_TEST_CHILD_SPANS"
	envTraceparent = "TRACEPARENT"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(envChildFile); path != "" {
		if err := runChild(path); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runChild(path string) error {
	ctx := context.Background()
	name := os.Getenv(envChildName)
	n, err := strconv.Atoi(os.Getenv(envChildSpans))
	if err != nil {
		return err
	}
	tel, err := Setup(ctx, Config{Service: name, TraceFile: path})
	if err != nil {
		return err
	}
	ctx = otel.GetTextMapPropagator().Extract(ctx, propagation.MapCarrier{"traceparent": os.Getenv(envTraceparent)})
	tr := otel.Tracer("groundmesh/telemetry-test")
	ctx, hop := tr.Start(ctx, name+".handle", trace.WithSpanKind(trace.SpanKindServer))
	// Long attribute values make each line several KiB, so interleaved writes
	// from the sibling processes would show up as unparsable lines.
	pad := strings.Repeat(name, 2048/len(name)+1)
	for i := range n {
		_, s := tr.Start(ctx, "step", trace.WithAttributes(attribute.Int("i", i), attribute.String("pad", pad)))
		s.End()
	}
	hop.End()
	return tel.Shutdown(ctx)
}

func TestTraceFileParentLinks(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "traces.jsonl")
	tel, err := Setup(ctx, Config{Service: "svc-a", TraceFile: path})
	if err != nil {
		t.Fatal(err)
	}
	if tel.Exporter() != "file" {
		t.Fatalf("exporter = %q, want file", tel.Exporter())
	}
	tr := otel.Tracer("groundmesh/test")
	ctx, root := tr.Start(ctx, "root", trace.WithSpanKind(trace.SpanKindServer))
	_, child := tr.Start(ctx, "child", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("dataset", "coco"), attribute.Int("n", 7)))
	child.SetStatus(codes.Error, "boom")
	child.AddEvent("retry", trace.WithAttributes(attribute.Int("attempt", 2)))
	child.End()
	root.End()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	recs, err := ReadTraceFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("got %d spans, want 2: %+v", len(recs), recs)
	}
	byName := map[string]SpanRecord{}
	for _, r := range recs {
		byName[r.Name] = r
	}
	r, c := byName["root"], byName["child"]
	if r.TraceID != root.SpanContext().TraceID().String() || r.SpanID != root.SpanContext().SpanID().String() {
		t.Errorf("root ids = %s/%s, want %s/%s", r.TraceID, r.SpanID, root.SpanContext().TraceID(), root.SpanContext().SpanID())
	}
	if r.ParentSpanID != "" {
		t.Errorf("root parent = %q, want empty", r.ParentSpanID)
	}
	if c.TraceID != r.TraceID || c.ParentSpanID != r.SpanID {
		t.Errorf("child trace/parent = %s/%s, want %s/%s", c.TraceID, c.ParentSpanID, r.TraceID, r.SpanID)
	}
	if r.Kind != "server" || c.Kind != "client" {
		t.Errorf("kinds = %q, %q", r.Kind, c.Kind)
	}
	if c.Status != "error" || c.StatusMessage != "boom" || r.Status != "unset" {
		t.Errorf("status = %q %q / %q", c.Status, c.StatusMessage, r.Status)
	}
	if c.Attributes["dataset"] != "coco" || c.Attributes["n"] != float64(7) {
		t.Errorf("attributes = %v", c.Attributes)
	}
	if len(c.Events) != 1 || c.Events[0].Name != "retry" {
		t.Errorf("events = %+v", c.Events)
	}
	if c.Service != "svc-a" || c.Scope != "groundmesh/test" {
		t.Errorf("service/scope = %q/%q", c.Service, c.Scope)
	}
	if c.Start.IsZero() || c.End.Before(c.Start) || r.End.Before(c.End) {
		t.Errorf("times: root %v..%v child %v..%v", r.Start, r.End, c.Start, c.End)
	}
}

// TestTraceAcrossProcesses starts three processes that append to the caller's
// trace file at the same time, each continuing the caller's trace from a
// traceparent, and checks that every line parses and links up.
func TestTraceAcrossProcesses(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "traces.jsonl")
	tel, err := Setup(ctx, Config{Service: "host", TraceFile: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx, root := otel.Tracer("groundmesh/test").Start(ctx, "pipeline")
	carrier := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, carrier)
	if carrier["traceparent"] == "" {
		t.Fatal("propagator injected no traceparent")
	}

	const procs, spansEach = 3, 150
	cmds := make([]*exec.Cmd, procs)
	for i := range cmds {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(),
			envChildFile+"="+path,
			envChildName+"=plugin"+strconv.Itoa(i),
			envChildSpans+"="+strconv.Itoa(spansEach),
			envTraceparent+"="+carrier["traceparent"])
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[i] = cmd
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
	}
	root.End()
	if err := tel.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	recs, err := ReadTraceFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1 + procs*(1+spansEach); len(recs) != want {
		t.Fatalf("got %d spans, want %d", len(recs), want)
	}
	rootID := root.SpanContext().SpanID().String()
	hops := map[string]string{} // span id -> service
	services := map[string]int{}
	for _, r := range recs {
		if r.TraceID != root.SpanContext().TraceID().String() {
			t.Fatalf("span %s in trace %s, want %s", r.Name, r.TraceID, root.SpanContext().TraceID())
		}
		services[r.Service]++
		if strings.HasSuffix(r.Name, ".handle") {
			if r.ParentSpanID != rootID {
				t.Errorf("hop %s parent = %s, want %s", r.Name, r.ParentSpanID, rootID)
			}
			hops[r.SpanID] = r.Service
		}
	}
	if len(hops) != procs {
		t.Fatalf("got %d hop spans, want %d", len(hops), procs)
	}
	for _, r := range recs {
		if r.Name != "step" {
			continue
		}
		if svc, ok := hops[r.ParentSpanID]; !ok || svc != r.Service {
			t.Fatalf("step in %s has parent %s (hop of %q)", r.Service, r.ParentSpanID, svc)
		}
	}
	for i := range procs {
		if got := services["plugin"+strconv.Itoa(i)]; got != 1+spansEach {
			t.Errorf("plugin%d wrote %d spans, want %d", i, got, 1+spansEach)
		}
	}
}

func TestSetupInstallsPropagator(t *testing.T) {
	tel, err := Setup(context.Background(), Config{Service: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	if tel.Exporter() != "none" {
		t.Errorf("exporter = %q, want none", tel.Exporter())
	}
	fields := otel.GetTextMapPropagator().Fields()
	for _, f := range []string{"traceparent", "baggage"} {
		if !slices.Contains(fields, f) {
			t.Errorf("propagator fields %v lack %q", fields, f)
		}
	}
	if otel.GetTracerProvider() != tel.TracerProvider() {
		t.Error("global tracer provider is not the one Setup built")
	}
}

func TestSetupRejectsEmptyService(t *testing.T) {
	if _, err := Setup(context.Background(), Config{Service: "  "}); err == nil {
		t.Fatal("Setup accepted an empty Service")
	}
}

func TestShutdownWithoutCollectorIsFast(t *testing.T) {
	// A port that nothing listens on: the exporter can never deliver.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	for _, tc := range []struct {
		name     string
		endpoint string
		timeout  time.Duration
		limit    time.Duration
	}{
		{"default timeout", "http://" + addr, 0, DefaultShutdownTimeout + 700*time.Millisecond},
		{"short timeout", addr, 300 * time.Millisecond, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tel, err := Setup(context.Background(), Config{Service: "s", OTLPEndpoint: tc.endpoint, ShutdownTimeout: tc.timeout, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			if tel.Exporter() != "otlp" {
				t.Fatalf("exporter = %q, want otlp", tel.Exporter())
			}
			_, span := otel.Tracer("t").Start(context.Background(), "lost")
			span.End()
			start := time.Now()
			// A caller's context with a long deadline must not stretch Shutdown.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err = tel.Shutdown(ctx)
			took := time.Since(start)
			t.Logf("shutdown took %v (err: %v)", took, err)
			if took > tc.limit {
				t.Fatalf("Shutdown took %v, limit %v", took, tc.limit)
			}
			if err == nil || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Shutdown error = %v, want a deadline error for the undelivered span", err)
			}
		})
	}
}

func TestLoggerAddsTraceIDs(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	ctx, span := tp.Tracer("t").Start(context.Background(), "op")
	defer span.End()

	var buf bytes.Buffer
	log := NewLogger(&buf, slog.LevelInfo, "ingest")
	log.InfoContext(ctx, "with span", "k", "v")
	log.Info("without span")
	log.DebugContext(ctx, "below level")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), buf.String())
	}
	var with, without map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &with); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &without); err != nil {
		t.Fatal(err)
	}
	sc := span.SpanContext()
	if with["trace_id"] != sc.TraceID().String() || with["span_id"] != sc.SpanID().String() {
		t.Errorf("record = %v, want trace_id %s span_id %s", with, sc.TraceID(), sc.SpanID())
	}
	if with["service"] != "ingest" || with["k"] != "v" || with["msg"] != "with span" {
		t.Errorf("record = %v", with)
	}
	if _, ok := without["trace_id"]; ok {
		t.Errorf("record without span has trace_id: %v", without)
	}
	if without["service"] != "ingest" {
		t.Errorf("record = %v", without)
	}

	// The same wrapper around a text handler, with attributes added later.
	buf.Reset()
	text := slog.New(NewTraceHandler(slog.NewTextHandler(&buf, nil))).With("run", "r1")
	text.WarnContext(ctx, "text")
	out := buf.String()
	for _, want := range []string{"trace_id=" + sc.TraceID().String(), "span_id=" + sc.SpanID().String(), "run=r1"} {
		if !strings.Contains(out, want) {
			t.Errorf("text output %q lacks %q", out, want)
		}
	}
}

func TestReadTraceFileRejectsMalformedLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.jsonl")
	data := `{"trace_id":"a","span_id":"b","name":"ok"}` + "\n\n" + `{"trace_id":` + "\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ReadTraceFile(path)
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("err = %v, want a parse error naming line 3", err)
	}
}
