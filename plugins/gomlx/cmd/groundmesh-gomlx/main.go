// Command groundmesh-gomlx is the pure-Go GoMLX compute backend as a
// go-plugin process: the host (plugins/compute.Host) starts it and talks
// gRPC to it. It builds with CGO_ENABLED=0.
//
// Environment:
//
//	GROUNDMESH_GOMLX_OPTIONS  GoMLX go-backend options, e.g. "ops_sequential"
//	                          or "parallelism=-1" (default gomlx.DefaultOptions);
//	                          GOMLX_BACKEND="go:<options>" is honoured too.
//	GROUNDMESH_LOG_LEVEL      debug, info (default), warn or error.
//
// Logs go to stderr as JSON, which the host forwards and keeps for crash
// reports.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/gomlx"
)

func main() {
	logger := compute.PluginLogger("groundmesh-gomlx")

	opts := os.Getenv("GROUNDMESH_GOMLX_OPTIONS")
	if opts == "" {
		if v, ok := strings.CutPrefix(os.Getenv("GOMLX_BACKEND"), "go:"); ok {
			opts = v
		}
	}
	backend, err := gomlx.New(gomlx.Config{Options: opts, Logger: logger})
	if err != nil {
		fmt.Fprintf(os.Stderr, "groundmesh-gomlx: %v\n", err)
		os.Exit(1)
	}
	compute.Serve(backend)
}
