// Command groundmesh is the one binary of groundmesh: the embedded stack
// (up, demo), the production roles (worker, serve) and the CLI verbs
// (scenes, ingest, synth, report, compare, pipeline, promote).
//
// The environment is read here, once: DATABASE_URL, TEMPORAL_ADDRESS,
// GROUNDMESH_DATA_DIR, GROUNDMESH_BUS, NATS_URL, GROUNDMESH_PLUGIN_DIR,
// OTEL_EXPORTER_OTLP_ENDPOINT, GROUNDMESH_LOG_LEVEL, the worker's
// GROUNDMESH_SERVICES, GROUNDMESH_BACKENDS, GROUNDMESH_QUEUE,
// GROUNDMESH_WORKER_ID and GROUNDMESH_BUS_PREFIX, and the grounding API's
// GROUNDMESH_API_TOKENS and GROUNDMESH_GROUND_* (cmd/groundmesh/ground.go).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

const usage = `groundmesh: multi-scale fine-grained grounding, from data to served model

usage: groundmesh <command> [flags]

embedded stack:
  up                      start the embedded stack (Temporal + UI, Postgres, bus, services) until interrupted
  demo                    start the stack, run the whole pipeline on the built-in scene world, print where to look

production roles:
  worker                  Temporal worker, event bridge and service consumers (TEMPORAL_ADDRESS, DATABASE_URL);
                          --services, --backends and --queue pick what this one runs
  serve                   HTTP gateway only
  workers                 list the live workers: their services, queues and backends

data and models:
  scenes generate         write the built-in scene world (COCO, RefCOCO, VG files + PNGs)
  ingest PATH --format F  ingest a dataset (coco, refcoco, vg, flickr30k, odvg, pope, llava, scenes)
  synth DATASET_ID        synthesize multi-scale alignment data
  report RUN_ID           write the HTML report of a training run
  compare RUN_A RUN_B     print two runs' metrics side by side
  promote CHECKPOINT_ID   serve grounding requests from this checkpoint, or CHECKPOINT_ID@gguf-q8_0 from its export (--alias production, --backend)
  export CHECKPOINT_ID    write a checkpoint as a GGUF file (--format gguf --dtype q8_0 [--out FILE])
  pipeline start [JSON]   start a Pipeline workflow on a running stack

Run "groundmesh <command> -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	env := readEnv()
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "up":
		err = cmdUp(ctx, env, args, false)
	case "worker":
		err = cmdUp(ctx, env, args, true)
	case "serve":
		err = cmdServe(ctx, env, args)
	case "demo":
		err = cmdDemo(ctx, env, args)
	case "scenes":
		err = cmdScenes(ctx, env, args)
	case "ingest":
		err = cmdIngest(ctx, env, args)
	case "synth":
		err = cmdSynth(ctx, env, args)
	case "report":
		err = cmdReport(ctx, env, args)
	case "compare":
		err = cmdCompare(ctx, env, args)
	case "workers":
		err = cmdWorkers(ctx, env, args, os.Stdout)
	case "pipeline":
		err = cmdPipeline(ctx, env, args)
	case "promote":
		err = cmdPromote(ctx, env, args)
	case "export":
		err = cmdExport(ctx, env, args)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "groundmesh: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "groundmesh:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// env is the process environment, parsed once.
type env struct {
	DatabaseURL     string
	TemporalAddress string
	DataDir         string
	BlobURL         string // GROUNDMESH_BLOB_URL (stack.Config.BlobURL)
	Bus             string
	NATSURL         string
	PluginDir       string
	OTLPEndpoint    string
	LogLevel        string
	// Backend and Device are the demo's compute backend and device
	// (GROUNDMESH_BACKEND: gomlx, libtorch or auto; GROUNDMESH_DEVICE: cpu
	// or cuda).
	Backend, Device string
	// Services, Backends and Queue are a worker's defaults for --services,
	// --backends and --queue (GROUNDMESH_SERVICES, GROUNDMESH_BACKENDS,
	// GROUNDMESH_QUEUE, comma-separated); WorkerID its --worker-id
	// (GROUNDMESH_WORKER_ID); BusPrefix the bus's consumer group prefix
	// (GROUNDMESH_BUS_PREFIX).
	Services, Backends, Queue, WorkerID string
	BusPrefix                           string
	// CommandLease is GROUNDMESH_COMMAND_LEASE (a Go duration): how soon
	// a command whose worker died goes to another worker on NATS.
	CommandLease string
	Ground       groundEnv
}

func readEnv() env {
	e := env{
		DatabaseURL:     os.Getenv("DATABASE_URL"),
		TemporalAddress: os.Getenv("TEMPORAL_ADDRESS"),
		DataDir:         os.Getenv("GROUNDMESH_DATA_DIR"),
		BlobURL:         os.Getenv("GROUNDMESH_BLOB_URL"),
		Bus:             os.Getenv("GROUNDMESH_BUS"),
		NATSURL:         os.Getenv("NATS_URL"),
		PluginDir:       os.Getenv("GROUNDMESH_PLUGIN_DIR"),
		OTLPEndpoint:    os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"),
		LogLevel:        os.Getenv("GROUNDMESH_LOG_LEVEL"),
		Backend:         os.Getenv("GROUNDMESH_BACKEND"),
		Device:          os.Getenv("GROUNDMESH_DEVICE"),
		Services:        os.Getenv("GROUNDMESH_SERVICES"),
		Backends:        os.Getenv("GROUNDMESH_BACKENDS"),
		Queue:           os.Getenv("GROUNDMESH_QUEUE"),
		WorkerID:        os.Getenv("GROUNDMESH_WORKER_ID"),
		BusPrefix:       os.Getenv("GROUNDMESH_BUS_PREFIX"),
		CommandLease:    os.Getenv("GROUNDMESH_COMMAND_LEASE"),
		Ground:          readGroundEnv(),
	}
	if e.DataDir == "" {
		e.DataDir = ".data"
	}
	if e.PluginDir == "" {
		if exe, err := os.Executable(); err == nil {
			e.PluginDir = filepath.Dir(exe)
		}
	}
	return e
}
