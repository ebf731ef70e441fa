package compute

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// TestPluginStderrReachesHostLog: every line the plugin writes to stderr is
// kept for crash tails and logged on the host's logger; a log/slog JSON
// record keeps its level, message and fields, anything else is logged as it
// is.
func TestPluginStderrReachesHostLog(t *testing.T) {
	var out bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ring := newLineRing(8)
	ring.forward = func(line string) { logPluginLine(logger, line) }
	w := ring.writer()
	w.Write([]byte(`{"time":"2026-11-29T00:00:00Z","level":"WARN","msg":"checkpoint config hash differs","step":3}` + "\npanic: boom\n"))
	if tail := ring.Tail(); len(tail) != 2 || tail[1] != "panic: boom" {
		t.Fatalf("ring tail %q", tail)
	}
	var recs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("host log line %q: %v", l, err)
		}
		recs = append(recs, r)
	}
	if len(recs) != 2 {
		t.Fatalf("host logged %d records, want 2: %s", len(recs), out.String())
	}
	if r := recs[0]; r["level"] != "WARN" || r["msg"] != "plugin: checkpoint config hash differs" || r["plugin.step"] != 3.0 {
		t.Fatalf("slog record forwarded as %v", r)
	}
	if r := recs[1]; r["level"] != "INFO" || r["msg"] != "plugin stderr" || r["line"] != "panic: boom" {
		t.Fatalf("plain line forwarded as %v", r)
	}
}
