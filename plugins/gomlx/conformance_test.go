package gomlx

import (
	"os"
	"os/exec"
	"path/filepath"
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
	computetest.RunConformance(t, computetest.Harness{
		New: func(t *testing.T) compute.Backend {
			h, err := compute.NewHost(compute.HostConfig{Path: bin})
			if err != nil {
				t.Fatal(err)
			}
			return h
		},
	})
}
