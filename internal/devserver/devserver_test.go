package devserver

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/common/log/tag"

	"github.com/groundmesh/groundmesh/internal/testutil"
)

func Shout(ctx context.Context, s string) (string, error) {
	activity.GetLogger(ctx).Info("shouting")
	return strings.ToUpper(s) + "!", nil
}

func Greet(ctx workflow.Context, name string) (string, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 30 * time.Second})
	var out string
	err := workflow.ExecuteActivity(ctx, Shout, "hello, "+name).Get(ctx, &out)
	return out, err
}

func dial(t *testing.T, s *Server) client.Client {
	t.Helper()
	c, err := client.Dial(client.Options{
		HostPort:  s.FrontendAddr(),
		Namespace: s.Namespace(),
		Logger:    sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler)),
	})
	if err != nil {
		t.Fatalf("dial %s: %v", s.FrontendAddr(), err)
	}
	return c
}

func TestDevServerRunsWorkflowServesUIAndPersists(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	logs := &testutil.SyncBuffer{}
	// Not t.Log: the server's goroutines may still log after the test ends.
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	defer func() { t.Logf("log:\n%s", logs.String()) }()

	begin := time.Now()
	s, err := Start(ctx, Config{DataDir: dir, Namespace: "gm-test", Logger: logger})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("first start (schema created) took %v", time.Since(begin).Round(time.Millisecond))
	defer s.Stop()
	if s.Namespace() != "gm-test" {
		t.Fatalf("Namespace() = %q", s.Namespace())
	}
	if !strings.HasPrefix(s.FrontendAddr(), "127.0.0.1:") || !strings.HasPrefix(s.UIURL(), "http://127.0.0.1:") {
		t.Fatalf("FrontendAddr %q, UIURL %q", s.FrontendAddr(), s.UIURL())
	}
	if _, err := os.Stat(filepath.Join(dir, DatabaseFile)); err != nil {
		t.Fatalf("no database file: %v", err)
	}

	// A workflow with an activity, run by a worker, to completion.
	c := dial(t, s)
	w := worker.New(c, "devserver-test", worker.Options{})
	w.RegisterWorkflow(Greet)
	w.RegisterActivity(Shout)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "greet-1", TaskQueue: "devserver-test"}, Greet, "groundmesh")
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := run.Get(ctx, &got); err != nil {
		t.Fatal(err)
	}
	if got != "HELLO, GROUNDMESH!" {
		t.Fatalf("workflow result %q", got)
	}
	runID := run.GetRunID()

	// The Web UI serves its HTML page.
	resp, err := http.Get(s.UIURL())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", s.UIURL(), resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Fatalf("GET %s: Content-Type %q", s.UIURL(), ct)
	}
	if lower := strings.ToLower(string(body)); !strings.Contains(lower, "<html") {
		t.Fatalf("GET %s: no <html> in %.200q", s.UIURL(), body)
	}

	w.Stop()
	c.Close()
	begin = time.Now()
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("stop took %v", time.Since(begin).Round(time.Millisecond))
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", s.FrontendAddr(), time.Second); err == nil {
		conn.Close()
		t.Fatalf("frontend %s still accepts connections after Stop", s.FrontendAddr())
	}

	// The server's info chatter stays out of our log; our own lines are in.
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "source=temporal") && (strings.Contains(line, "level=INFO") || strings.Contains(line, "level=DEBUG")) {
			t.Errorf("temporal info/debug line leaked: %s", line)
		}
	}
	if !strings.Contains(logs.String(), "temporal dev server started") {
		t.Error("no start message logged")
	}

	// Restart on the same folder, without the UI: the earlier run is there.
	begin = time.Now()
	s2, err := Start(ctx, Config{DataDir: dir, Namespace: "gm-test", UIPort: NoUI, Logger: logger})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("restart took %v", time.Since(begin).Round(time.Millisecond))
	defer s2.Stop()
	if s2.UIURL() != "" {
		t.Fatalf("UIURL with NoUI = %q", s2.UIURL())
	}
	c2 := dial(t, s2)
	defer c2.Close()
	desc, err := c2.DescribeWorkflowExecution(ctx, "greet-1", runID)
	if err != nil {
		t.Fatalf("describe earlier workflow after restart: %v", err)
	}
	info := desc.GetWorkflowExecutionInfo()
	if info.GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED || info.GetType().GetName() != "Greet" {
		t.Fatalf("after restart: status %v type %q", info.GetStatus(), info.GetType().GetName())
	}
	var again string
	if err := c2.GetWorkflow(ctx, "greet-1", runID).Get(ctx, &again); err != nil || again != got {
		t.Fatalf("result after restart = %q, %v", again, err)
	}
	if err := s2.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestStartRejectsBusyPortAndBadConfig(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := l.Addr().(*net.TCPAddr).Port
	ctx := context.Background()
	dir := t.TempDir()

	for name, cfg := range map[string]Config{
		"busy frontend": {DataDir: dir, FrontendPort: busy, UIPort: NoUI},
		"busy ui":       {DataDir: dir, UIPort: busy},
	} {
		_, err := Start(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), "port "+strconv.Itoa(busy)) {
			t.Errorf("%s: err = %v, want one naming port %d", name, err, busy)
		}
	}
	for name, cfg := range map[string]Config{
		"no data dir":   {},
		"bad frontend":  {DataDir: dir, FrontendPort: 70000},
		"bad ui port":   {DataDir: dir, UIPort: -2},
		"neg. deadline": {DataDir: dir, StartTimeout: -time.Second},
	} {
		if _, err := Start(ctx, cfg); err == nil {
			t.Errorf("%s: Start succeeded", name)
		}
	}
}

func TestServerLoggerFiltersBelowMin(t *testing.T) {
	var buf bytes.Buffer
	l := serverLogger{slog: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), min: slog.LevelWarn}
	l.Debug("d")
	l.Info("i", tag.NewStringTag("k", "v"))
	l.With(tag.NewStringTag("svc", "history")).Info("i2")
	l.Warn("w", tag.NewStringTag("k", "v"))
	l.With(tag.NewStringTag("svc", "history")).Error("e")
	l.Fatal("f") // must not exit
	out := buf.String()
	for _, no := range []string{"msg=d", "msg=i ", "msg=i2"} {
		if strings.Contains(out, no) {
			t.Errorf("output has %q:\n%s", no, out)
		}
	}
	for _, want := range []string{"level=WARN msg=w k=v", "level=ERROR msg=e svc=history", "level=ERROR msg=f"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
