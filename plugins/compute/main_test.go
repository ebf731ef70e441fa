package compute_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// The test binary doubles as the plugin binary: a Host started with
// os.Args[0] and pluginModeEnv set runs TestMain's plugin branch instead of
// the tests.
const pluginModeEnv = "GROUNDMESH_COMPUTE_TEST_PLUGIN"

func TestMain(m *testing.M) {
	mode := os.Getenv(pluginModeEnv)
	if mode == "" {
		os.Exit(m.Run())
	}
	runPlugin(mode)
	os.Exit(0)
}

func runPlugin(mode string) {
	// go-plugin's Serve redirects os.Stderr into a gRPC stream; the raw
	// file descriptor 2 is what the host reads directly, and what a panic
	// or a fatal error writes to.
	raw := os.NewFile(2, "stderr")
	switch mode {
	case "toy":
		delay, _ := time.ParseDuration(os.Getenv("TOY_STEP_DELAY"))
		compute.Serve(computetest.NewToy(computetest.ToyOptions{
			StepDelay: delay,
			OnStep: func(stage string, step int) {
				fmt.Fprintf(raw, "toy plugin: %s step %d\n", stage, step)
			},
		}))
	case "exit":
		fmt.Fprintln(raw, "toy plugin: refusing to start: bad configuration")
		os.Exit(3)
	case "panic-once":
		compute.Serve(&panicky{Toy: computetest.NewToy(computetest.ToyOptions{}), marker: os.Getenv("PANIC_MARKER")})
	case "trace":
		compute.Serve(traceEcho{computetest.NewToy(computetest.ToyOptions{})})
	case "protocol-v2":
		// A plugin built against a future, incompatible contract: the same
		// cookie, protocol version 2 only.
		hs := compute.Handshake
		hs.ProtocolVersion = 2
		plugin.Serve(&plugin.ServeConfig{HandshakeConfig: hs, VersionedPlugins: map[int]plugin.PluginSet{
			2: compute.PluginSets(computetest.NewToy(computetest.ToyOptions{}))[1],
		}, GRPCServer: plugin.DefaultGRPCServer})
	default:
		fmt.Fprintf(raw, "unknown plugin mode %q\n", mode)
		os.Exit(2)
	}
}

// panicky panics in Describe unless its marker file exists (with no marker
// it always panics), creating the marker first.
type panicky struct {
	*computetest.Toy
	marker string
}

func (p *panicky) Describe(ctx context.Context) (compute.Description, error) {
	if p.marker != "" {
		if _, err := os.Stat(p.marker); err == nil {
			return p.Toy.Describe(ctx)
		}
		os.WriteFile(p.marker, nil, 0o644)
	}
	panic("boom in describe")
}

// traceEcho reports, as its version, the trace id that reached the plugin.
type traceEcho struct{ *computetest.Toy }

func (e traceEcho) Describe(ctx context.Context) (compute.Description, error) {
	d, err := e.Toy.Describe(ctx)
	d.Version = trace.SpanContextFromContext(ctx).TraceID().String()
	return d, err
}

// newHost starts the test binary as a plugin in mode with extra env.
func newHost(t *testing.T, mode string, cfg compute.HostConfig, env ...string) *compute.Host {
	t.Helper()
	h, err := startHost(mode, cfg, env...)
	if err != nil {
		t.Fatalf("NewHost: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func startHost(mode string, cfg compute.HostConfig, env ...string) (*compute.Host, error) {
	cfg.Path = os.Args[0]
	cfg.Env = append([]string{pluginModeEnv + "=" + mode}, env...)
	return compute.NewHost(cfg)
}

var errNotCrash = errors.New("not a crash")

// asCrash returns err's *CrashError.
func asCrash(err error) (*compute.CrashError, error) {
	var ce *compute.CrashError
	if !errors.As(err, &ce) {
		return nil, fmt.Errorf("%w: %v", errNotCrash, err)
	}
	return ce, nil
}
