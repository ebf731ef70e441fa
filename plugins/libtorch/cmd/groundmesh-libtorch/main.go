//go:build libtorch

// Command groundmesh-libtorch is the libtorch compute backend as a
// go-plugin process: the backend runtime of plugins/gomlx with its
// libtorch engine (the model's one definition over libtorch tensors,
// through the gmtorch C shim). Build it with `make libtorch`; it needs
// cgo, the libtorch build tag and the shim (plugins/libtorch/shim).
//
// Environment:
//
//	GROUNDMESH_LIBTORCH_DEVICE   cpu (default) or cuda
//	GROUNDMESH_LIBTORCH_THREADS  libtorch intra-op threads and OpenBLAS
//	                             threads (default on the CPU: 1, fastest
//	                             for the demo's small tensors on 2 cores;
//	                             on CUDA the libraries' defaults)
//	GROUNDMESH_LOG_LEVEL         debug, info (default), warn or error
//
// Logs go to stderr as JSON, which the host forwards.
package main

import (
	"fmt"
	"os"

	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/gomlx"
)

func main() {
	logger := compute.PluginLogger("groundmesh-libtorch")
	threads := compute.PluginCount("groundmesh-libtorch", "GROUNDMESH_LIBTORCH_THREADS")
	backend, err := gomlx.New(gomlx.Config{
		Engine: gomlx.EngineLibtorch, Device: os.Getenv("GROUNDMESH_LIBTORCH_DEVICE"), Threads: threads, Logger: logger,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "groundmesh-libtorch: %v\n", err)
		os.Exit(1)
	}
	compute.Serve(backend)
}
