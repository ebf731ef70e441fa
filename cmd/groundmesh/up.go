package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/sdk/client"

	"github.com/groundmesh/groundmesh/internal/stack"
	"github.com/groundmesh/groundmesh/internal/telemetry"
	"github.com/groundmesh/groundmesh/services/eval"
	"github.com/groundmesh/groundmesh/services/ground"
	"github.com/groundmesh/groundmesh/workflows"
)

type commonFlags struct {
	dataDir  string
	bus      string
	httpAddr string
	// metricsAddr serves GET /metrics alone (worker only; "off": none).
	metricsAddr string
	tport       int
	uiport      int
	verbose     bool
	// services, backends and queues (comma-separated) and workerID pick
	// what a worker runs (worker only; empty: everything, as up).
	services, backends, queues, workerID string
}

func (c *commonFlags) register(fs *flag.FlagSet, e env) {
	fs.StringVar(&c.dataDir, "data-dir", e.DataDir, "data directory (private Postgres, Temporal SQLite, blobs, traces)")
	fs.StringVar(&c.bus, "bus", e.Bus, "event bus: postgres (default) or nats")
	fs.StringVar(&c.httpAddr, "http", "127.0.0.1:8080", `HTTP gateway address ("off" to disable)`)
	fs.IntVar(&c.tport, "temporal-port", 7233, "in-process Temporal frontend port (0 = any free)")
	fs.IntVar(&c.uiport, "ui-port", 8233, "Temporal Web UI port (-1 = no UI)")
	fs.BoolVar(&c.verbose, "v", false, "debug logging")
}

// setup starts telemetry and the logger of a command.
func setup(ctx context.Context, e env, dataDir string, verbose bool, logTo io.Writer) (*slog.Logger, func(), error) {
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create data dir: %w", err)
	}
	level := slog.LevelInfo
	if verbose || e.LogLevel == "debug" {
		level = slog.LevelDebug
	}
	logger := telemetry.NewLogger(logTo, level, "groundmesh")
	tel, err := telemetry.Setup(ctx, telemetry.Config{
		Service: "groundmesh", TraceFile: filepath.Join(dataDir, "traces.jsonl"),
		OTLPEndpoint: e.OTLPEndpoint, Logger: logger,
	})
	if err != nil {
		return nil, nil, err
	}
	processMetrics = tel.Gatherer()
	return logger, func() { _ = tel.Shutdown(context.Background()) }, nil
}

// processMetrics are this process's OpenTelemetry metrics, which the
// gateway's GET /metrics serves (set by setup, which main runs once).
var processMetrics prometheus.Gatherer

// startStack starts the stack. With makeToken and no GROUNDMESH_API_TOKENS,
// it makes a token for this run (printed by printWhere) so that the
// grounding API is usable and still closed to anyone without it.
func startStack(ctx context.Context, e env, c commonFlags, worker, makeToken bool, logger *slog.Logger) (*stack.Stack, error) {
	gc, err := e.Ground.config()
	if err != nil {
		return nil, err
	}
	var lease time.Duration
	if e.CommandLease != "" {
		if lease, err = time.ParseDuration(e.CommandLease); err != nil {
			return nil, fmt.Errorf("GROUNDMESH_COMMAND_LEASE=%q: want a duration such as 30s: %w", e.CommandLease, err)
		}
	}
	if makeToken && len(gc.APITokens) == 0 {
		tok, err := newToken()
		if err != nil {
			return nil, err
		}
		gc.APITokens = []string{tok}
		generatedToken = tok
	}
	return stack.Start(ctx, stack.Config{
		DataDir: c.dataDir, BlobURL: e.BlobURL, DatabaseURL: e.DatabaseURL, TemporalAddress: e.TemporalAddress,
		TemporalPort: c.tport, UIPort: c.uiport, Bus: c.bus, NATSURL: e.NATSURL,
		HTTPAddr: c.httpAddr, PluginDir: e.PluginDir, Worker: worker, Ground: gc, Logger: logger,
		Metrics: processMetrics, MetricsAddr: c.metricsAddr,
		Services: stack.ParseList(c.services), Backends: stack.ParseList(c.backends), Queues: stack.ParseList(c.queues),
		WorkerID: c.workerID, BusConsumerPrefix: e.BusPrefix, CommandLease: lease,
	})
}

// generatedToken is the API token startStack made for this run, if any.
var generatedToken string

func closeStack(s *stack.Stack) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "groundmesh: shutdown:", err)
	}
}

func printWhere(s *stack.Stack) {
	fmt.Println("groundmesh is up")
	if u := s.UIURL(); u != "" {
		fmt.Printf("  Temporal UI:    %s/namespaces/default/workflows\n", u)
	}
	fmt.Printf("  Temporal:       %s (namespace default, task queue %s)\n", s.TemporalAddr(), workflows.TaskQueue)
	if u := s.MetricsURL(); u != "" {
		fmt.Printf("  metrics:        %s/metrics\n", u)
	}
	if s.RunsWorker() {
		fmt.Printf("  worker:         %s (services %s; queues %s)\n", s.WorkerID(), strings.Join(s.ServiceNames(), ","), strings.Join(s.Queues(), ","))
	}
	if u := s.GatewayURL(); u != "" {
		fmt.Printf("  HTTP gateway:   %s  (POST /api/pipelines with {} starts a pipeline)\n", u)
		fmt.Printf("  grounding API:  %s/v1/ground\n", u)
		if generatedToken != "" {
			fmt.Printf("  API token:      %s  (made for this run; set GROUNDMESH_API_TOKENS to choose your own)\n", generatedToken)
		}
	}
	fmt.Printf("  data dir:       %s\n", s.DataDir())
	fmt.Printf("  traces:         %s\n", filepath.Join(s.DataDir(), "traces.jsonl"))
}

func cmdUp(ctx context.Context, e env, args []string, workerOnly bool) error {
	name := "up"
	if workerOnly {
		name = "worker"
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var c commonFlags
	c.register(fs, e)
	if workerOnly {
		// A worker has no gateway: its metrics get a listener of their own.
		fs.StringVar(&c.metricsAddr, "metrics", "127.0.0.1:9464", `address that serves GET /metrics ("off" to disable)`)
		fs.StringVar(&c.services, "services", e.Services, "services this worker runs, comma-separated: some of "+strings.Join(stack.AllServices, ", ")+" (env GROUNDMESH_SERVICES; default all)")
		fs.StringVar(&c.backends, "backends", e.Backends, `compute backends whose plugins this worker may start, comma-separated: gomlx, libtorch, ggml, or a backend and device such as libtorch:cuda (env GROUNDMESH_BACKENDS; default every one built)`)
		fs.StringVar(&c.queues, "queue", e.Queue, `command queues (capabilities) this worker consumes, comma-separated, e.g. train-cuda; "default" is the queue of commands that name none (env GROUNDMESH_QUEUE; default "default")`)
		fs.StringVar(&c.workerID, "worker-id", e.WorkerID, "this worker's id in its command answers and the workers table (env GROUNDMESH_WORKER_ID; default <host>-<pid>)")
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if workerOnly {
		c.httpAddr = "off"
	}
	logger, done, err := setup(ctx, e, c.dataDir, c.verbose, os.Stderr)
	if err != nil {
		return err
	}
	defer done()
	s, err := startStack(ctx, e, c, true, !workerOnly, logger)
	if err != nil {
		return err
	}
	defer closeStack(s)
	printWhere(s)
	fmt.Println("press Ctrl-C to stop")
	<-ctx.Done()
	return nil
}

func cmdServe(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var c commonFlags
	c.register(fs, e)
	fs.StringVar(&c.httpAddr, "addr", "127.0.0.1:8080", "listen address")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	logger, done, err := setup(ctx, e, c.dataDir, c.verbose, os.Stderr)
	if err != nil {
		return err
	}
	defer done()
	s, err := startStack(ctx, e, c, false, false, logger)
	if err != nil {
		return err
	}
	defer closeStack(s)
	printWhere(s)
	<-ctx.Done()
	return nil
}

func cmdDemo(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var c commonFlags
	c.register(fs, e)
	input := fs.String("input", "{}", "Pipeline input JSON (defaults fill every field)")
	stay := fs.Bool("stay", false, "keep the stack running after the pipeline finishes")
	recipe := fs.String("recipe", "", `training recipe ("demo" when empty; see services/train/recipes), set as the input's train.spec.recipe`)
	backend := fs.String("backend", cmp.Or(e.Backend, "auto"), `compute backend (env GROUNDMESH_BACKEND): gomlx, libtorch, or auto (libtorch when its plugin is built and loads here, gomlx otherwise); an input's train.backend wins`)
	device := fs.String("device", e.Device, `the backend's device: cpu (default) or cuda (libtorch) (env GROUNDMESH_DEVICE)`)
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	{
		in, chosen, err := withBackend([]byte(*input), *backend, *device, e.PluginDir)
		if err != nil {
			return err
		}
		*input = string(in)
		fmt.Printf("compute backend: %s\n", chosen)
		if *recipe == "" && strings.HasPrefix(chosen, "libtorch") {
			if in, sized, err := withLibtorchBudget([]byte(*input)); err != nil {
				return err
			} else if sized {
				*input = string(in)
				fmt.Println("  on libtorch: recipe demo-libtorch (a 64-channel tower with two stem convolutions, stage 1 of 4,500 steps) on 300,000 synthesized samples")
			}
		}
	}
	if *recipe != "" {
		in, err := withRecipe([]byte(*input), *recipe)
		if err != nil {
			return err
		}
		in, sized, err := withRecipeData(in, *recipe)
		if err != nil {
			return err
		}
		if sized != "" {
			fmt.Printf("  recipe %s: %s\n", *recipe, sized)
		}
		*input = string(in)
	}
	// The demo promotes what it trains, so that the grounding API serves it
	// by its alias; an input that says how to promote keeps its say.
	in, err := withPromotion([]byte(*input), ground.DefaultAlias)
	if err != nil {
		return err
	}
	*input = string(in)
	// And, where the ggml plugin is built, it exports the final checkpoint
	// as a q8_0 GGUF and scores it beside the checkpoint.
	in, why, err := withExport([]byte(*input), e.PluginDir)
	if err != nil {
		return err
	}
	*input = string(in)
	fmt.Printf("deployment export: %s\n", why)
	logPath := filepath.Join(c.dataDir, "demo.log")
	if err := os.MkdirAll(c.dataDir, 0o755); err != nil {
		return err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	logger, done, err := setup(ctx, e, c.dataDir, c.verbose, logFile)
	if err != nil {
		return err
	}
	defer done()
	start := time.Now()
	s, err := startStack(ctx, e, c, true, true, logger)
	if err != nil {
		return err
	}
	defer closeStack(s)
	printWhere(s)
	fmt.Printf("  log:            %s\n\n", logPath)

	id := "demo-" + time.Now().UTC().Format("20060102-150405") + "-" + uuid.NewString()[:6]
	run, err := s.Temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.TaskQueue},
		workflows.PipelineWorkflowName, json.RawMessage(*input))
	if err != nil {
		return fmt.Errorf("start pipeline: %w", err)
	}
	fmt.Printf("pipeline %s started (open it in the Temporal UI)\n", id)
	res, err := waitPipeline(ctx, s, run)
	if err != nil {
		return fmt.Errorf("pipeline %s: %w", id, err)
	}
	fmt.Printf("\npipeline finished in %s: stages %s\n", time.Since(start).Round(time.Second), strings.Join(res.StagesRan, ", "))
	fmt.Printf("  dataset:    %s\n  synth set:  %s\n  run:        %s\n", res.DatasetID, res.SynthSetID, res.RunID)
	printMetrics(res.Metrics)
	printExports(res.Metrics)
	switch {
	case res.Promoted != nil:
		fmt.Printf("\npromoted:  checkpoint %s (%s, run %s) is now %q\n", res.Promoted.CheckpointID, res.Promoted.Stage, res.Promoted.RunID, res.Promoted.Alias)
	case res.PromotionSkipped != "":
		fmt.Printf("\nnot promoted: %s\n", res.PromotionSkipped)
	}
	if res.ReportKey != "" {
		p, _ := s.Blob.LocalPath(res.ReportKey)
		fmt.Printf("\nreport:  %s\n", p)
		// Render it once in headless Chromium, so the demo leaves a picture
		// of what a user would see (skipped with a note when Chromium is
		// not installed).
		png := filepath.Join(c.dataDir, "report.png")
		if dom, err := eval.Screenshot(ctx, p, png); err != nil {
			fmt.Printf("         (no screenshot: %v)\n", err)
		} else {
			fmt.Printf("         screenshot %s (%d KB of rendered DOM)\n", png, len(dom)/1024)
		}
	}
	if res.SynthSetID != "" && s.GatewayURL() != "" {
		token := generatedToken
		if gc, err := e.Ground.config(); err == nil && len(gc.APITokens) > 0 {
			token = gc.APITokens[0]
		}
		if err := demoGround(ctx, s, token, res); err != nil {
			fmt.Printf("\ngrounding through the gateway: %v\n", err)
		}
	}
	if err := printFacts(ctx, s); err != nil {
		fmt.Println("facts:", err)
	}
	if *stay {
		fmt.Println("\nstack stays up; Ctrl-C to stop")
		<-ctx.Done()
	}
	return nil
}

// waitPipeline waits for the run, printing the training status now and then.
func waitPipeline(ctx context.Context, s *stack.Stack, run client.WorkflowRun) (workflows.PipelineResult, error) {
	var res workflows.PipelineResult
	errc := make(chan error, 1)
	go func() { errc <- run.Get(ctx, &res) }()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	last := ""
	for {
		select {
		case err := <-errc:
			return res, err
		case <-tick.C:
			line := describeProgress(ctx, s, run.GetID())
			if line != "" && line != last {
				fmt.Println("  " + line)
				last = line
			}
		}
	}
}

func describeProgress(ctx context.Context, s *stack.Stack, pipelineID string) string {
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	v, err := s.Temporal.QueryWorkflow(qctx, pipelineID+"/train", "", workflows.StatusQuery)
	if err == nil {
		var st workflows.TrainStatus
		if v.Get(&st) == nil && st.Stage != "" {
			return fmt.Sprintf("train %s: step %d/%d loss %.4f", st.Stage, st.Step, st.Total, st.Loss)
		}
	}
	for _, child := range []string{"eval", "train", "synth", "ingest"} {
		d, err := s.Temporal.DescribeWorkflowExecution(qctx, pipelineID+"/"+child, "")
		if err == nil {
			return fmt.Sprintf("%s: %s", child, strings.ToLower(strings.TrimPrefix(d.GetWorkflowExecutionInfo().GetStatus().String(), "WORKFLOW_EXECUTION_STATUS_")))
		}
	}
	return ""
}

func printMetrics(m map[string]float64) {
	if len(m) == 0 {
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Println("\nmetrics (stage/benchmark/split/metric):")
	for _, k := range keys {
		fmt.Printf("  %-48s %8.4f\n", k, m[k])
	}
	if ts := eval.DemoTargets(m); len(ts) > 0 {
		met := 0
		fmt.Println("\ntargets of the demo's model:")
		for _, t := range ts {
			fmt.Printf("  %s\n", t)
			if t.Met() {
				met++
			}
		}
		fmt.Printf("  %d of %d targets met\n", met, len(ts))
	}
	if cmp := eval.CompareRECToBaseline(m); len(cmp) > 0 {
		fmt.Println("\nREC against the fixed-box baseline (pooled over splits, Wilson 95% intervals):")
		for _, r := range cmp {
			fmt.Printf("  %s\n", r)
		}
	}
}

// printFacts shows that the facts reached Postgres and the bus.
func printFacts(ctx context.Context, s *stack.Stack) error {
	rows, err := s.Pool.Query(ctx, `SELECT topic, count(*), count(published_at) FROM outbox GROUP BY topic ORDER BY topic`)
	if err != nil {
		return err
	}
	defer rows.Close()
	fmt.Println("\nfacts (outbox topic: written / relayed to the bus):")
	for rows.Next() {
		var topic string
		var n, pub int64
		if err := rows.Scan(&topic, &n, &pub); err != nil {
			return err
		}
		fmt.Printf("  %-24s %d / %d\n", topic, n, pub)
	}
	return rows.Err()
}

func cmdPipeline(ctx context.Context, e env, args []string) error {
	if len(args) == 0 || args[0] != "start" {
		fmt.Fprintln(os.Stderr, "usage: groundmesh pipeline start [JSON]")
		return errUsage
	}
	input := "{}"
	if len(args) > 1 {
		input = args[1]
	}
	var in workflows.PipelineInput
	if err := json.Unmarshal([]byte(input), &in); err != nil {
		return fmt.Errorf("pipeline input: %w", err)
	}
	if err := in.WithDefaults().Validate(); err != nil {
		return err
	}
	addr := e.TemporalAddress
	if addr == "" {
		addr = "127.0.0.1:7233"
	}
	c, err := client.DialContext(ctx, client.Options{HostPort: addr})
	if err != nil {
		return fmt.Errorf("dial temporal %s (is `groundmesh up` running?): %w", addr, err)
	}
	defer c.Close()
	id := "pipeline-" + time.Now().UTC().Format("20060102-150405") + "-" + uuid.NewString()[:6]
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: workflows.TaskQueue}, workflows.PipelineWorkflowName, json.RawMessage(input))
	if err != nil {
		return err
	}
	fmt.Printf("started %s (run %s)\n", run.GetID(), run.GetRunID())
	return nil
}

// withPromotion sets the input's promote.alias to alias unless the input
// has a "promote" of its own.
// withExport asks the pipeline's evaluation to export the final checkpoint
// in each deployment format whose backend's plugin is built in pluginDir
// (a q8_0 GGUF scored on ggml, a float32 ONNX bundle scored on ONNX
// Runtime) unless the input says what to export. It returns the input and
// a line saying what was chosen and why.
func withExport(input []byte, pluginDir string) ([]byte, string, error) {
	in, err := inputObject(input)
	if err != nil {
		return nil, "", err
	}
	ev := child(in, "eval")
	if _, ok := ev["export_as"]; ok {
		return input, "as the input's eval.export_as says", nil
	}
	var as []map[string]string
	var chosen, missing []string
	if stack.BackendAvailable(pluginDir, "ggml") {
		as = append(as, map[string]string{"format": "gguf", "dtype": "q8_0"})
		chosen = append(chosen, "a q8_0 GGUF on ggml (stage3@gguf-q8_0)")
	} else {
		missing = append(missing, "ggml (`make ggml`)")
	}
	if stack.BackendAvailable(pluginDir, "onnx") {
		as = append(as, map[string]string{"format": "onnx", "dtype": "float32"})
		chosen = append(chosen, "a float32 ONNX bundle on ONNX Runtime (stage3@onnx-float32)")
	} else {
		missing = append(missing, "onnx (`make onnx`)")
	}
	if len(as) == 0 {
		return input, "none (no export backend's plugin is built here: " + strings.Join(missing, ", ") + ")", nil
	}
	ev["export_as"] = as
	// REC, which the grounding head answers: the three POPE sets on ggml
	// took 1.5 minutes more of the demo with the GRU sentence encoder, and
	// the language model's free text 2.6 minutes more before it; ask for
	// them with eval.export_benchmarks.
	if _, ok := ev["export_benchmarks"]; !ok {
		ev["export_benchmarks"] = []string{"rec"}
	}
	out, err := json.Marshal(in)
	line := "the final checkpoint as " + strings.Join(chosen, " and ") + ", on REC"
	if len(missing) > 0 {
		line += "; not built: " + strings.Join(missing, ", ")
	}
	return out, line, err
}

// printExports sets each export's REC Acc@0.5 beside its checkpoint's.
func printExports(m map[string]float64) {
	var stages []string
	for k := range m {
		if st, rest, ok := strings.Cut(k, "/"); ok && strings.Contains(st, "@") && strings.HasPrefix(rest, "rec/") && strings.HasSuffix(rest, "/acc@0.5") {
			if !slices.Contains(stages, st) {
				stages = append(stages, st)
			}
		}
	}
	sort.Strings(stages)
	for _, st := range stages {
		from, _, _ := strings.Cut(st, "@")
		fmt.Printf("\nexport %s against %s, REC Acc@0.5:\n", st, from)
		for _, split := range []string{"val", "test", "heldout"} {
			x, okx := m[st+"/rec/"+split+"/acc@0.5"]
			c, okc := m[from+"/rec/"+split+"/acc@0.5"]
			if okx && okc {
				fmt.Printf("  %-8s %.3f (checkpoint %.3f, %+.3f)\n", split, x, c, x-c)
			}
		}
	}
}

func withPromotion(input []byte, alias string) ([]byte, error) {
	in, err := inputObject(input)
	if err != nil {
		return nil, err
	}
	if _, ok := in["promote"]; ok {
		return input, nil
	}
	in["promote"] = map[string]any{"alias": alias}
	return json.Marshal(in)
}

// withBackend sets the input's train.backend (and train.device) unless the
// input names a backend: "auto" picks libtorch where its plugin is built
// in pluginDir and starts on this machine (it measured 3.7x GoMLX's
// stage-1 training steps/s, `make bench-engines`), GoMLX otherwise. It
// returns the input and a line saying what was chosen and why.
func withBackend(input []byte, backend, device, pluginDir string) ([]byte, string, error) {
	in, err := inputObject(input)
	if err != nil {
		return nil, "", err
	}
	tr := child(in, "train")
	if b, ok := tr["backend"].(string); ok && b != "" {
		return input, b + " (from the input)", nil
	}
	why := ""
	switch backend {
	case "auto", "":
		backend, why = "gomlx", " (auto: the libtorch plugin is not built here; `make libtorch` builds it)"
		if stack.BackendAvailable(pluginDir, "libtorch") {
			if err := probePlugin(filepath.Join(pluginDir, "groundmesh-libtorch")); err != nil {
				why = fmt.Sprintf(" (auto: the libtorch plugin does not start here: %v)", err)
			} else {
				backend, why = "libtorch", " (auto: the fastest backend built here)"
			}
		}
	case "gomlx", "libtorch":
	default:
		return nil, "", fmt.Errorf("--backend %q: want gomlx, libtorch or auto", backend)
	}
	tr["backend"] = backend
	if device != "" {
		tr["device"] = device
		why = " on " + device + why
	}
	out, err := json.Marshal(in)
	return out, backend + why, err
}

// withLibtorchBudget spends what libtorch saves on the demo's 15 minutes:
// recipe demo-libtorch (a 64-channel grounding tower, stage 1 of 4,500
// steps instead of 2,400) and 300,000 synthesized samples instead of
// 48,000 (docs/experiments.md, sixth session). An input that names a recipe, stage 1's steps or the sample
// count keeps them; sized is false when nothing was changed.
func withLibtorchBudget(input []byte) (out []byte, sized bool, err error) {
	in, err := inputObject(input)
	if err != nil {
		return nil, false, err
	}
	spec := child(child(in, "train"), "spec")
	if _, ok := spec["recipe"]; ok {
		return input, false, nil
	}
	if _, ok := child(spec, "stage1")["steps"]; ok {
		return input, false, nil
	}
	spec["recipe"] = "demo-libtorch"
	if sy := child(in, "synth"); sy["samples"] == nil {
		sy["samples"] = 300000
	}
	out, err = json.Marshal(in)
	return out, true, err
}

// inputObject decodes a pipeline input given on the command line.
func inputObject(input []byte) (map[string]any, error) {
	var in map[string]any
	if err := json.Unmarshal(input, &in); err != nil || in == nil {
		return nil, fmt.Errorf("--input: want a JSON object: %v", err)
	}
	return in, nil
}

// child returns m[key] as an object, putting an empty one there when it
// is missing or not an object.
func child(m map[string]any, key string) map[string]any {
	c, ok := m[key].(map[string]any)
	if !ok {
		c = map[string]any{}
		m[key] = c
	}
	return c
}

// probePlugin runs a plugin binary as a plain command: a go-plugin binary
// started outside its host says so and exits; one whose shared libraries
// are missing fails to load, which is what this catches.
func probePlugin(path string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path).CombinedOutput()
	if strings.Contains(string(out), "error while loading shared libraries") {
		return errors.New(strings.TrimSpace(string(out)))
	}
	if err != nil && !strings.Contains(string(out), "plugin") {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// recipeData is the data a recipe is sized for, which a training recipe
// cannot set: the scene world's images and the samples synthesized from
// them. `groundmesh demo --recipe NAME` fills them in where the input
// leaves them out.
var recipeData = map[string]struct{ images, samples int }{
	// 12,000 stage-1 steps: on the demo's 6,000 images and 300,000
	// samples they overfit (REC Acc@0.5 pooled 0.633, against 0.710 to
	// 0.737 for the default); on three times both, 0.864 (one run,
	// docs/results/long.md).
	"long": {images: 18000, samples: 900000},
}

// withRecipeData sets dataset.images and synth.samples to what recipe is
// sized for (recipeData), each unless the input sets it; sized says what
// it set ("" when nothing).
func withRecipeData(input []byte, recipe string) (out []byte, sized string, err error) {
	d, ok := recipeData[recipe]
	if !ok {
		return input, "", nil
	}
	in, err := inputObject(input)
	if err != nil {
		return nil, "", err
	}
	var set []string
	if ds := child(in, "dataset"); ds["images"] == nil && (ds["format"] == nil || ds["format"] == "scenes") {
		ds["images"] = d.images
		set = append(set, fmt.Sprintf("%d scene images", d.images))
	}
	if sy := child(in, "synth"); sy["samples"] == nil {
		sy["samples"] = d.samples
		set = append(set, fmt.Sprintf("%d synthesized samples", d.samples))
	}
	if len(set) == 0 {
		return input, "", nil
	}
	out, err = json.Marshal(in)
	return out, strings.Join(set, ", "), err
}

// withRecipe sets train.spec.recipe in a pipeline input.
func withRecipe(input []byte, recipe string) ([]byte, error) {
	in, err := inputObject(input)
	if err != nil {
		return nil, err
	}
	child(child(in, "train"), "spec")["recipe"] = recipe
	return json.Marshal(in)
}
