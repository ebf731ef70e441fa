// Package probe holds the research probes: small training runs that each
// teach a model layout one skill without the pipeline around it, and score
// what it learned. They speak only the compute contract (compute.Backend:
// Train, Load, Prefill, Decode), build their shards with model's public
// safetensors writer and read their data from services/ingest/scenes and
// services/synth, so they run on any backend: the GoMLX backend in this
// process, its libtorch engine in a test binary built with -tags libtorch,
// or a plugin binary started through compute.Host.
//
// The probes are Go tests and benchmarks; the benchmarks measure learning,
// not time, and print what they measured with -bench (figures go to
// docs/experiments.md as dated entries):
//
//   - The localization probe (TestProbeLocalizesOneSquare, a test that
//     fails when a lone square is not found) and the binding probe
//     (BenchmarkProbeBinding): coloured squares on grey noise, a colour
//     word asks for one, the box as four coarse box-number tokens.
//   - The scene probe (BenchmarkSceneProbe): the built-in scene world, the
//     referent named by its shortest unique description, boxes read from
//     the next-token logits Prefill and Decode return, teacher forced and
//     decoded greedily after the model's own numbers.
//   - The grounder probe (BenchmarkGrounderScene): model.Config.Grounder
//     trained on the scene world in synth's REC wording, scored from the
//     head boxes Prefill returns, with the accuracy per expression kind.
//
// For example:
//
//	go test ./bench/probe -run TestProbeLocalizesOneSquare
//	GROUNDMESH_PROBE_STEPS=400 go test ./bench/probe -run '^$' -bench ProbeBinding -benchtime 1x
//	GROUNDMESH_PROBE_STEPS=1000 go test ./bench/probe -run '^$' -bench 'SceneProbe/^(ground-stem-box)$' -benchtime 1x
//	GROUNDMESH_PROBE_OBJECTIVE=grounder go test ./bench/probe -run '^$' -bench GrounderScene -benchtime 1x
//
// Knobs, read from the environment once per test or benchmark:
//
//	GROUNDMESH_PROBE_STEPS      training steps (each probe has its default)
//	GROUNDMESH_PROBE_IMAGES     scene world size (default 6,000, the demo's)
//	GROUNDMESH_PROBE_LOG        non-empty: the backend's debug log on stderr
//	GROUNDMESH_PROBE_ENGINE     gomlx (default) or libtorch (-tags libtorch): the
//	                            in-process backend's engine (gomlx.Config.Engine);
//	                            GROUNDMESH_GOMLX_OPTIONS, GROUNDMESH_LIBTORCH_DEVICE
//	                            and GROUNDMESH_LIBTORCH_THREADS as the plugins read them
//	GROUNDMESH_PROBE_PLUGIN     a plugin binary (bin/groundmesh-gomlx,
//	                            bin/groundmesh-libtorch) to run the probes on
//	                            instead, through compute.Host; it reads its own
//	                            environment
//
// and the grounder probe's:
//
//	GROUNDMESH_PROBE_WIDTH      model.Config.VisionWidth, the tower's channels (64)
//	GROUNDMESH_PROBE_CELLWORDS  non-empty: model.Config.GrounderCellWords
//	GROUNDMESH_PROBE_NONORM     non-empty: model.Config.GrounderNorm off
//	GROUNDMESH_PROBE_STEM       model.Config.GrounderStem (0)
//	GROUNDMESH_PROBE_SIGMA      model.Config.GrounderSigma (0: the 0.75 of older configs)
//	GROUNDMESH_PROBE_TEXTDEPTH  model.Config.GrounderTextDepth (0)
//	GROUNDMESH_PROBE_GRID       model.Config.GrounderGridDepth (the default config's)
//	GROUNDMESH_PROBE_BATCH      compute.TrainRequest.BatchSize (32)
//	GROUNDMESH_PROBE_LR         compute.TrainRequest.LearningRate (2e-3)
//	GROUNDMESH_PROBE_OBJECTIVE  compute.TrainRequest.Objective ("": every loss)
//	GROUNDMESH_PROBE_COLOUR     non-empty: ask by colour and shape ("the red
//	                            circle") for objects whose colour is their own
//	GROUNDMESH_PROBE_BARE       non-empty: the expression alone, no REC instruction
//	GROUNDMESH_PROBE_TRAINACC   non-empty: score 1,024 training items instead of val
//	GROUNDMESH_PROBE_DUMP       a directory: write the items (train and val images
//	                            as raw bytes, one JSON line each) there and stop
//
// Dropped when the probes left plugins/gomlx's tests, because they set
// package variables inside that backend and no contract field carries
// them (another backend has nothing to set): GROUNDMESH_PROBE_CLIP (the
// gradient clip's norm) and GROUNDMESH_PROBE_CONVGAIN (the normed tower's
// initial kernel scale). Change the backend's constant to measure either.
package probe
