package probe

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/gomlx"
)

// openBackend is the backend the knobs name: the plugin binary
// GROUNDMESH_PROBE_PLUGIN through compute.Host, else the GoMLX backend in
// this process with the engine GROUNDMESH_PROBE_ENGINE. closeFn stops a
// plugin; it is never nil.
func openBackend(k knobs) (b compute.Backend, closeFn func() error, err error) {
	var logger *slog.Logger
	if k.Log {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if k.Plugin != "" {
		h, err := compute.NewHost(compute.HostConfig{Path: k.Plugin, Logger: logger})
		if err != nil {
			return nil, nil, fmt.Errorf("start plugin %s: %w", k.Plugin, err)
		}
		return h, h.Close, nil
	}
	g, err := gomlx.New(gomlx.Config{Engine: k.Engine, Options: k.GoMLXOptions, Device: k.Device, Threads: k.Threads, Logger: logger})
	if err != nil {
		return nil, nil, fmt.Errorf("start in-process backend (engine %q): %w", k.Engine, err)
	}
	return g, func() error { return nil }, nil
}

// describe is the backend's name, version and devices, for a probe's log.
func describe(ctx context.Context, b compute.Backend) (string, error) {
	d, err := b.Describe(ctx)
	if err != nil {
		return "", fmt.Errorf("describe backend: %w", err)
	}
	return fmt.Sprintf("%s %s on %v", d.Backend, d.Version, d.Devices), nil
}
