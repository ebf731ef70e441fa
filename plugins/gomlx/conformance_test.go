package gomlx

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// TestConformanceInProcess runs the contract's conformance suite against
// the backend in this process.
func TestConformanceInProcess(t *testing.T) {
	computetest.RunConformance(t, computetest.Harness{
		New: func(t *testing.T) compute.Backend { return newTestBackend(t) },
	})
}

// TestConformancePlugin builds the plugin binary with CGO_ENABLED=0 and
// runs the suite through compute.Host, over gRPC, as the product does.
func TestConformancePlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary; skipped with -short")
	}
	bin := filepath.Join(t.TempDir(), "groundmesh-gomlx")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/groundmesh-gomlx")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build plugin with CGO_ENABLED=0: %v\n%s", err, out)
	}
	newHost := func(t *testing.T) compute.Backend {
		h, err := compute.NewHost(compute.HostConfig{Path: bin})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	computetest.RunConformance(t, computetest.Harness{New: newHost})
	// The matrix through gRPC: head boxes, attention and the objective
	// cross the wire as they are computed.
	t.Run("Matrix", func(t *testing.T) { computetest.RunMatrix(t, computetest.MatrixHarness{New: newHost}) })

	// GoMLX prints "parallelism set to" on stdout, where go-plugin's
	// handshake goes: the plugin must still start with that option.
	h, err := compute.NewHost(compute.HostConfig{Path: bin, Env: []string{"GROUNDMESH_GOMLX_OPTIONS=parallelism=-1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	d, err := h.Describe(context.Background())
	if err != nil {
		t.Fatalf("plugin with parallelism=-1: %v", err)
	}
	if !strings.Contains(d.Version, "parallelism=-1") {
		t.Errorf("plugin version %q does not show its options", d.Version)
	}
}
