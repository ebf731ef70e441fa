//go:build onnx

// Command groundmesh-onnx is the ONNX Runtime compute backend as a
// go-plugin process: the backend runtime of plugins/gomlx with its onnx
// engine (the model's one definition exported as ONNX graphs, model/onnx,
// run by ONNX Runtime through plugins/onnx/ort), for inference: it loads
// ONNX exports (running their own graphs), safetensors checkpoints and
// GGUF exports (exporting them to graphs as they load) and holds the
// weights in float32 or float16. Build it with `make onnx`; it loads
// ONNX Runtime's shared library at start (`make onnxruntime` places it).
//
// Environment:
//
//	GROUNDMESH_ONNXRUNTIME_LIB    the library's path (default: see ort.LibraryCandidates)
//	GROUNDMESH_ONNX_THREADS       intra-op threads per run (default 1)
//	GROUNDMESH_ONNX_OPTIMIZATION  graph optimization: disable, basic, extended or all (default)
//	GROUNDMESH_ONNX_DEVICE        cpu (default) or cuda (ONNX Runtime's CUDA provider)
//	GROUNDMESH_LOG_LEVEL          debug, info (default), warn or error
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
	logger := compute.PluginLogger("groundmesh-onnx")
	threads := compute.PluginCount("groundmesh-onnx", "GROUNDMESH_ONNX_THREADS")
	backend, err := gomlx.New(gomlx.Config{Engine: gomlx.EngineONNX, Threads: threads, Logger: logger,
		GraphOptimization: os.Getenv("GROUNDMESH_ONNX_OPTIMIZATION"), Device: os.Getenv("GROUNDMESH_ONNX_DEVICE")})
	if err != nil {
		fmt.Fprintf(os.Stderr, "groundmesh-onnx: %v\n", err)
		os.Exit(1)
	}
	compute.Serve(backend)
}
