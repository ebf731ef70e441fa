//go:build ggml

// Command groundmesh-ggml is the ggml compute backend as a go-plugin
// process: the backend runtime of plugins/gomlx with its ggml engine (the
// model's one definition over ggml graphs, plugins/ggml/ggml), for
// inference: it loads safetensors checkpoints and GGUF exports and holds
// the weights in float32, float16, q8_0 or q4_0. Build it with
// `make ggml`; it needs cgo, the ggml build tag and ggml's headers (the
// Makefile finds them in the ollama Go module).
//
// Environment:
//
//	GROUNDMESH_GGML_THREADS  threads per graph (default 1)
//	GROUNDMESH_LOG_LEVEL     debug, info (default), warn or error
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
	logger := compute.PluginLogger("groundmesh-ggml")
	threads := compute.PluginCount("groundmesh-ggml", "GROUNDMESH_GGML_THREADS")
	backend, err := gomlx.New(gomlx.Config{Engine: gomlx.EngineGGML, Threads: threads, Logger: logger})
	if err != nil {
		fmt.Fprintf(os.Stderr, "groundmesh-ggml: %v\n", err)
		os.Exit(1)
	}
	compute.Serve(backend)
}
