package telemetry

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// SpanRecord is one line of a JSON-lines trace file.
type SpanRecord struct {
	TraceID string `json:"trace_id"`
	SpanID  string `json:"span_id"`
	// ParentSpanID is empty for a root span.
	ParentSpanID string `json:"parent_span_id"`
	Name         string `json:"name"`
	// Kind is "internal", "server", "client", "producer" or "consumer".
	Kind  string    `json:"kind"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Status is "unset", "ok" or "error".
	Status        string         `json:"status"`
	StatusMessage string         `json:"status_message,omitempty"`
	Attributes    map[string]any `json:"attributes,omitempty"`
	Events        []EventRecord  `json:"events,omitempty"`
	// Scope is the instrumentation scope (the name given to otel.Tracer).
	Scope   string `json:"scope,omitempty"`
	Service string `json:"service"`
}

// EventRecord is a span event (an exception, for example) in a SpanRecord.
type EventRecord struct {
	Name       string         `json:"name"`
	Time       time.Time      `json:"time"`
	Attributes map[string]any `json:"attributes,omitempty"`
}

// FileExporter is a span exporter that appends one JSON object per span to a
// file. The file is opened with O_APPEND and each line goes out in a single
// write, so several processes can share one file without interleaving lines.
type FileExporter struct {
	service string

	mu sync.Mutex
	f  *os.File
}

var _ sdktrace.SpanExporter = (*FileExporter)(nil)

// NewFileExporter opens (creating it and its folder if needed) the trace file
// at path for appending; service fills the "service" field of every line.
func NewFileExporter(path, service string) (*FileExporter, error) {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create trace file folder: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open trace file: %w", err)
	}
	return &FileExporter{service: service, f: f}, nil
}

// ExportSpans writes one line per span.
func (e *FileExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f == nil {
		return errors.New("export spans: trace file exporter is shut down")
	}
	for _, s := range spans {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("export spans: %w", err)
		}
		line, err := json.Marshal(e.record(s))
		if err != nil {
			return fmt.Errorf("encode span %q: %w", s.Name(), err)
		}
		line = append(line, '\n')
		if _, err := e.f.Write(line); err != nil {
			return fmt.Errorf("write trace file: %w", err)
		}
	}
	return nil
}

func (e *FileExporter) record(s sdktrace.ReadOnlySpan) SpanRecord {
	sc := s.SpanContext()
	r := SpanRecord{
		TraceID:       sc.TraceID().String(),
		SpanID:        sc.SpanID().String(),
		Name:          s.Name(),
		Kind:          s.SpanKind().String(),
		Start:         s.StartTime(),
		End:           s.EndTime(),
		Status:        strings.ToLower(s.Status().Code.String()),
		StatusMessage: s.Status().Description,
		Attributes:    attrMap(s.Attributes()),
		Scope:         s.InstrumentationScope().Name,
		Service:       e.service,
	}
	if p := s.Parent(); p.HasSpanID() {
		r.ParentSpanID = p.SpanID().String()
	}
	for _, ev := range s.Events() {
		r.Events = append(r.Events, EventRecord{Name: ev.Name, Time: ev.Time, Attributes: attrMap(ev.Attributes)})
	}
	return r
}

func attrMap(kvs []attribute.KeyValue) map[string]any {
	if len(kvs) == 0 {
		return nil
	}
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
}

// Shutdown closes the file. The batch span processor has already handed over
// every buffered span by the time it calls this.
func (e *FileExporter) Shutdown(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f == nil {
		return nil
	}
	err := e.f.Close()
	e.f = nil
	if err != nil {
		return fmt.Errorf("close trace file: %w", err)
	}
	return nil
}

// ReadTraceFile reads every span record in a JSON-lines trace file, in file
// order. Blank lines are skipped; a malformed line is an error that names it.
func ReadTraceFile(path string) ([]SpanRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open trace file: %w", err)
	}
	defer f.Close()
	return readTrace(f, path)
}

func readTrace(r io.Reader, name string) ([]SpanRecord, error) {
	var out []SpanRecord
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var rec SpanRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			return nil, fmt.Errorf("parse %s line %d: %w", name, n, err)
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return out, nil
}
