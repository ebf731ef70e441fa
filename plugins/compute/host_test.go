package compute_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
	computev1 "github.com/groundmesh/groundmesh/plugins/compute/proto/computev1"
)

// The contract holds through a real plugin process (AutoMTLS, go-plugin
// handshake, the Host's session bookkeeping).
func TestHostConformance(t *testing.T) {
	computetest.RunConformance(t, computetest.Harness{
		New: func(t *testing.T) compute.Backend { return newHost(t, "toy", compute.HostConfig{}) },
	})
}

// SIGKILL mid-Train: the call fails with a CrashError carrying the exit
// status and stderr tail; the host restarts the plugin; the stage resumes
// from its last checkpoint; sessions of the dead plugin report the crash.
func TestHostKillMidTrain(t *testing.T) {
	h := newHost(t, "toy", compute.HostConfig{}, "TOY_STEP_DELAY=20ms")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	shard, err := computetest.WriteTinyShard(dir, computetest.TinyConfig(), 16, 3)
	if err != nil {
		t.Fatal(err)
	}
	req := compute.TrainRequest{
		RunID: "r", Stage: "stage1", ModelConfig: computetest.TinyConfigJSON(), Shards: []string{shard},
		Steps: 1000, BatchSize: 4, LearningRate: 1e-2, Seed: 1, LogEvery: 1, CheckpointEvery: 5,
		CheckpointDir: filepath.Join(dir, "ckpt"),
	}
	// A session loaded before the crash, to check it is reported lost.
	pre, err := h.Train(ctx, compute.TrainRequest{
		RunID: "r0", Stage: "stage0", ModelConfig: req.ModelConfig, Shards: req.Shards, Steps: 1, BatchSize: 2,
		LearningRate: 1e-2, CheckpointDir: filepath.Join(dir, "pre"),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := h.Load(ctx, compute.LoadRequest{ModelConfig: req.ModelConfig, Checkpoint: pre.Final.Path})
	if err != nil {
		t.Fatal(err)
	}

	pid := h.PID()
	if pid == 0 {
		t.Fatal("PID 0 for a running plugin")
	}
	var last *compute.Checkpoint
	killedAt := 0
	_, err = h.Train(ctx, req, func(p compute.TrainProgress) error {
		if p.Checkpoint != nil {
			last = p.Checkpoint
		}
		if p.Step == 7 && killedAt == 0 {
			killedAt = p.Step
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Errorf("kill: %v", err)
			}
		}
		return nil
	})
	if !errors.Is(err, compute.ErrPluginCrashed) {
		t.Fatalf("Train after SIGKILL: %v; want ErrPluginCrashed", err)
	}
	ce, err2 := asCrash(err)
	if err2 != nil {
		t.Fatal(err2)
	}
	if ce.PID != pid || ce.Op != "train" || !strings.Contains(ce.ExitStatus, "killed") {
		t.Errorf("crash error: pid %d op %q exit %q; want pid %d, train, signal: killed", ce.PID, ce.Op, ce.ExitStatus, pid)
	}
	if !strings.Contains(strings.Join(ce.StderrTail, "\n"), "toy plugin: stage1 step 7") {
		t.Errorf("stderr tail lacks the plugin's last lines: %q", ce.StderrTail)
	}
	if !strings.Contains(err.Error(), "toy plugin: stage1 step") {
		t.Errorf("error text lacks the stderr tail: %v", err)
	}
	t.Logf("crash error: %v", err)

	// The next call restarts the plugin.
	if _, err := h.Describe(ctx); err != nil {
		t.Fatalf("Describe after crash: %v", err)
	}
	if np := h.PID(); np == 0 || np == pid {
		t.Errorf("PID after restart %d (was %d)", np, pid)
	}
	// Sessions of the dead plugin are gone.
	_, err = h.Prefill(ctx, compute.PrefillRequest{Session: sess.Session, Batch: []compute.Sequence{computetest.Prompts(computetest.TinyConfig())[0].Sequence(0)}})
	if !errors.Is(err, compute.ErrPluginCrashed) {
		t.Errorf("Prefill on a session of the dead plugin: %v; want ErrPluginCrashed", err)
	}
	if err := h.Unload(ctx, sess.Session); err != nil {
		t.Errorf("Unload of a session of the dead plugin: %v; want nil (already gone)", err)
	}
	// The stage resumes from its last checkpoint and continues the count.
	if last == nil || last.Step != 5 {
		t.Fatalf("last checkpoint before the kill: %+v; want step 5", last)
	}
	req.ResumeCheckpoint, req.Steps = last.Path, 12
	var first int
	res, err := h.Train(ctx, req, func(p compute.TrainProgress) error {
		if first == 0 {
			first = p.Step
		}
		return nil
	})
	if err != nil {
		t.Fatalf("resume after restart: %v", err)
	}
	if first != 6 || res.Steps != 12 {
		t.Errorf("resumed at step %d, ended at %d; want 6 and 12", first, res.Steps)
	}
}

func TestHostStartFailure(t *testing.T) {
	_, err := startHost("exit", compute.HostConfig{StartTimeout: 20 * time.Second})
	if !errors.Is(err, compute.ErrPluginCrashed) {
		t.Fatalf("NewHost of a plugin that exits: %v; want ErrPluginCrashed", err)
	}
	ce, err2 := asCrash(err)
	if err2 != nil {
		t.Fatal(err2)
	}
	if !strings.Contains(strings.Join(ce.StderrTail, "\n"), "refusing to start") {
		t.Errorf("stderr tail %q lacks the plugin's message", ce.StderrTail)
	}
	if ce.ExitStatus != "exit status 3" {
		t.Errorf("exit status %q, want exit status 3", ce.ExitStatus)
	}
}

// A plugin that speaks another protocol version is refused at the
// handshake with an error that names both versions.
func TestHostRefusesWrongProtocolVersion(t *testing.T) {
	_, err := startHost("protocol-v2", compute.HostConfig{StartTimeout: 20 * time.Second})
	if err == nil {
		t.Fatal("NewHost accepted a plugin of protocol version 2")
	}
	if !strings.Contains(err.Error(), "Plugin version: 2") {
		t.Errorf("error %q does not name the version mismatch", err)
	}
	t.Logf("refused: %v", err)
}

// A panic inside a call: the crash carries the panic text; the host
// restarts and the next call works.
func TestHostPanicRestart(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "panicked")
	h := newHost(t, "panic-once", compute.HostConfig{}, "PANIC_MARKER="+marker)
	ctx := context.Background()
	_, err := h.Describe(ctx)
	ce, err2 := asCrash(err)
	if err2 != nil {
		t.Fatal(err2)
	}
	if ce.ExitStatus != "exit status 2" || !strings.Contains(strings.Join(ce.StderrTail, "\n"), "panic: boom in describe") {
		t.Errorf("crash: exit %q, tail %q; want exit status 2 and the panic", ce.ExitStatus, ce.StderrTail)
	}
	d, err := h.Describe(ctx)
	if err != nil || d.Backend != "toy" {
		t.Fatalf("Describe after restart: %+v, %v", d, err)
	}
}

// A plugin that crashes on every call is restarted MaxRestarts times in a
// row, then the host gives up.
func TestHostMaxRestarts(t *testing.T) {
	h := newHost(t, "panic-once", compute.HostConfig{MaxRestarts: 2}) // no marker: panics every time
	ctx := context.Background()
	for i := range 3 {
		_, err := h.Describe(ctx)
		if _, err2 := asCrash(err); err2 != nil {
			t.Fatalf("call %d: %v", i, err2)
		}
	}
	_, err := h.Describe(ctx)
	if !errors.Is(err, compute.ErrPluginCrashed) || !strings.Contains(err.Error(), "not restarting") {
		t.Fatalf("after 2 restarts: %v; want the host to give up", err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Describe(ctx); !errors.Is(err, compute.ErrFailedPrecondition) {
		t.Errorf("Describe after Close: %v", err)
	}
}

// The host's span context reaches the plugin through gRPC metadata.
func TestHostTracePropagation(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	h := newHost(t, "trace", compute.HostConfig{})
	b := compute.WithTracing(h, "toy")
	d, err := b.Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var call, rpc sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		switch s.Name() {
		case "compute.Describe":
			call = s
		case "groundmesh.compute.v1.Compute/Describe":
			rpc = s
		}
	}
	if call == nil || rpc == nil {
		t.Fatalf("want a compute.Describe span and its gRPC client span; got %d spans", len(rec.Ended()))
	}
	if rpc.Parent().SpanID() != call.SpanContext().SpanID() {
		t.Errorf("gRPC span is not a child of the call span")
	}
	if want := call.SpanContext().TraceID().String(); d.Version != want {
		t.Errorf("plugin saw trace %q, host span is in %q", d.Version, want)
	}
}

// A pinned sha256 is checked before every start: the right one starts the
// plugin; a wrong one, or a binary changed after its "<path>.sha256" was
// written (make plugins writes it), is refused with both sums named, and
// never started.
func TestHostRefusesTamperedPlugin(t *testing.T) {
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(self)
	good := hex.EncodeToString(sum[:])
	h := newHost(t, "toy", compute.HostConfig{SHA256: good})
	if _, err := h.Describe(context.Background()); err != nil {
		t.Fatalf("pinned to its own sha256: %v", err)
	}
	bad := "0" + good[1:]
	if good[0] == '0' {
		bad = "1" + good[1:]
	}
	if _, err := startHost("toy", compute.HostConfig{SHA256: bad}); !errors.Is(err, compute.ErrChecksum) || !strings.Contains(err.Error(), good) {
		t.Fatalf("wrong pin: %v, want %v naming the file's sum %s", err, compute.ErrChecksum, good)
	}

	// The pin file beside a copy of the binary.
	dir := t.TempDir()
	bin := filepath.Join(dir, "plugin")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin+".sha256", []byte(good+"  plugin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{pluginModeEnv + "=toy"}
	h2, err := compute.NewHost(compute.HostConfig{Path: bin, Env: env})
	if err != nil {
		t.Fatalf("with a matching %s.sha256: %v", bin, err)
	}
	h2.Close()
	f, err := os.OpenFile(bin, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := compute.NewHost(compute.HostConfig{Path: bin, Env: env}); !errors.Is(err, compute.ErrChecksum) || !strings.Contains(err.Error(), good) {
		t.Fatalf("tampered binary: %v, want %v", err, compute.ErrChecksum)
	}
	if _, err := compute.NewHost(compute.HostConfig{Path: bin, Env: env, SHA256: "xyz"}); err == nil || !strings.Contains(err.Error(), "64 hex digits") {
		t.Fatalf("malformed pin: %v", err)
	}
}

// TestPluginRefusesAllButMutualTLS: the plugin process serves only over
// go-plugin's AutoMTLS. The host's own calls work; a client that dials
// the same socket in plain text, or over TLS without the host's client
// certificate, is refused before any call reaches the backend.
func TestPluginRefusesAllButMutualTLS(t *testing.T) {
	h := newHost(t, "toy", compute.HostConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := h.Describe(ctx); err != nil {
		t.Fatalf("the host's own call: %v", err)
	}
	addr := compute.HostAddr(h)
	if addr == nil {
		t.Fatal("no plugin address")
	}
	target := addr.String()
	if addr.Network() == "unix" {
		target = "unix:" + target
	}
	for name, creds := range map[string]credentials.TransportCredentials{
		"plain text":              insecure.NewCredentials(),
		"TLS without client cert": credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}), //nolint:gosec // the point is to be refused
	} {
		conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatalf("%s: dial: %v", name, err)
		}
		callCtx, callCancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = computev1.NewComputeClient(conn).Describe(callCtx, &computev1.DescribeRequest{})
		callCancel()
		conn.Close()
		if err == nil {
			t.Errorf("%s: the plugin answered Describe", name)
			continue
		}
		t.Logf("%s: refused: %v", name, err)
	}
}
