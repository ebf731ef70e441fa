// Package eval scores checkpoints the way the field scores grounding
// models and shows the result: REC (Acc@0.5 and friends), POPE, the crop
// tasks of the multi-scale alignment data and grounded descriptions, on a
// synth set's val, test and held-out splits, with a fixed-box baseline
// beside the model.
//
// Every evaluation (one checkpoint, benchmark and split) is a row in
// Postgres linked to its run, checkpoint, stage, synth set and dataset
// version, with its metric values and the blob key of its per-sample
// predictions (JSONL), so that any number can be audited. Rows, lineage
// edges and the evaluation.completed fact commit in one transaction.
// WriteReport renders a self-contained HTML report of a run; Compare puts
// two runs side by side.
//
// The service owns its tables (evaluations, eval_metrics, eval_runs) and
// reads no other service's: what it knows about a run (its checkpoints and
// their sha256, model config, tokenizer, synth set, dataset and loss
// curve) arrives in the request (events.RunFacts) and is kept in eval_runs
// for reports. It speaks to the model through Predictor and reads the
// synth set through RecordReader, small ports that the composition root
// fills with model.Generator over a compute backend and the synth shard
// reader.
package eval

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

var tracer = otel.Tracer("groundmesh/services/eval")

// DefaultSplits are the splits evaluated when a request names none.
var DefaultSplits = []string{"val", "test", "heldout"}

// Defaults of Config.
const (
	DefaultBatchSize = 16
)

// Config configures the evaluation service.
type Config struct {
	// DataDir is where reports (and their screenshots) are written, under
	// DataDir/reports. Required.
	DataDir string
	// Blob stores per-sample predictions (evals/<id>/predictions.jsonl),
	// reports (reports/<run>/report.html) and holds crops. Required.
	Blob blob.Store
	// Logger receives progress and warnings; default discards.
	Logger *slog.Logger
	// Predictors opens a Predictor for a checkpoint. Required.
	Predictors PredictorFactory
	// Records streams a run's synth set. Required.
	Records RecordReader
	// BatchSize is the number of records per Predict call; default
	// DefaultBatchSize.
	BatchSize int
	// Benchmarks limits the benchmarks run (names as BenchREC, ...); empty
	// runs every benchmark the synth set has records for.
	Benchmarks []string
	// Baseline turns off the fixed-box baseline when set to false; nil
	// means on.
	Baseline *bool
	// Now stamps reports; default time.Now.
	Now func() time.Time
}

func (c *Config) defaults() error {
	if c.DataDir == "" {
		return errors.New("eval config: DataDir is required")
	}
	if c.Blob == nil {
		return errors.New("eval config: Blob is required")
	}
	if c.Predictors == nil {
		return errors.New("eval config: Predictors is required")
	}
	if c.Records == nil {
		return errors.New("eval config: Records is required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.BatchSize < 0 {
		return fmt.Errorf("eval config: BatchSize %d must be positive", c.BatchSize)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Service evaluates checkpoints, records the results and writes reports.
type Service struct {
	cfg  Config
	pool *pgxpool.Pool
	log  *slog.Logger
}

// New validates cfg and builds the service over pool.
func New(cfg Config, pool *pgxpool.Pool) (*Service, error) {
	if pool == nil {
		return nil, errors.New("new eval service: pool is nil")
	}
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "reports"), 0o755); err != nil {
		return nil, fmt.Errorf("new eval service: create reports dir: %w", err)
	}
	return &Service{cfg: cfg, pool: pool, log: cfg.Logger}, nil
}

// ErrBadInput wraps errors that retrying cannot fix (missing run id, a
// request without the run's facts or checkpoints): the bridge fails the
// workflow without retries.
var ErrBadInput = errors.New("eval: bad input")

// evaluation is one row of evaluations with its metrics, before it is stored.
type evaluation struct {
	ID             string
	CheckpointID   string // "" for baselines
	Stage          string
	Split          string
	Bench          string
	PredictionsKey string
	SHA256         string
	Samples        int
	Metrics        map[string]float64
}

// evalSet is the records to evaluate, grouped by split and benchmark, plus
// the mean training box for the baseline.
// count is the records of splits a checkpoint scored on only (every
// benchmark when empty) answers.
func (e *evalSet) count(splits, only []string) int64 {
	var n int64
	for _, sp := range splits {
		for b, recs := range e.bySplit[sp] {
			if len(only) == 0 || slices.Contains(only, b) {
				n += int64(len(recs))
			}
		}
	}
	return n
}

type evalSet struct {
	bySplit map[string]map[string][]model.Record
	mean    MeanBox
	skipped int
}

func (s *Service) loadRecords(ctx context.Context, run RunInfo, splits []string, maxSamples int, maxBy map[string]int) (*evalSet, error) {
	ctx, span := tracer.Start(ctx, "eval.loadRecords")
	defer span.End()
	want := map[string]bool{}
	for _, sp := range splits {
		want[sp] = true
	}
	benchOK := func(b string) bool { return len(s.cfg.Benchmarks) == 0 || slices.Contains(s.cfg.Benchmarks, b) }
	set := &evalSet{bySplit: map[string]map[string][]model.Record{}}
	err := s.cfg.Records(ctx, run, func(r model.Record) error {
		bench := BenchmarkOf(r)
		if r.Split == "train" && bench == BenchREC && len(r.Answer.Boxes) > 0 {
			w, h := imageSize(r)
			set.mean.Add(arrBox(r.Answer.Boxes[0]), w, h)
			return nil
		}
		if !want[r.Split] || bench == "" || !benchOK(bench) {
			return nil
		}
		if why := validFor(r, bench); why != "" {
			set.skipped++
			s.log.WarnContext(ctx, "record skipped", slog.String("record", r.ID), slog.String("benchmark", bench), slog.String("why", why))
			return nil
		}
		m := set.bySplit[r.Split]
		if m == nil {
			m = map[string][]model.Record{}
			set.bySplit[r.Split] = m
		}
		m[bench] = append(m[bench], r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read synth set %s: %w", run.SynthSetID, err)
	}
	for _, m := range set.bySplit {
		for b, recs := range m {
			sampleOrder(recs)
			limit := maxSamples
			if n, ok := maxBy[b]; ok {
				limit = n
			}
			if limit > 0 && len(recs) > limit {
				recs = recs[:limit]
			}
			m[b] = recs
		}
	}
	span.SetAttributes(attribute.Int("records.skipped", set.skipped), attribute.Int("train.rec_boxes", set.mean.N()))
	return set, nil
}

// sampleOrder sorts a split's records of one benchmark for MaxSamples, so
// that it picks the same records every time, whatever order the shards
// were read in, and spreads them over the split's images: by the sha256 of
// the record ID (then the ID). Record IDs start with their image's ID
// ("<image>/rec/3"), so the first records by ID would be a few images'
// records each, and the evaluation's intervals (Wilson,
// CompareRECToBaseline) assume independent samples, which records drawn
// across the split's images are much nearer to.
// Each record's key is hashed once, not at every comparison.
func sampleOrder(recs []model.Record) {
	type keyed struct {
		key uint64
		rec model.Record
	}
	ks := make([]keyed, len(recs))
	for i, r := range recs {
		h := sha256.Sum256([]byte(r.ID))
		ks[i] = keyed{binary.BigEndian.Uint64(h[:8]), r}
	}
	slices.SortFunc(ks, func(x, y keyed) int { return cmp.Or(cmp.Compare(x.key, y.key), cmp.Compare(x.rec.ID, y.rec.ID)) })
	for i, k := range ks {
		recs[i] = k.rec
	}
}

func (set *evalSet) benches(split string) []string {
	var bs []string
	for b := range set.bySplit[split] {
		bs = append(bs, b)
	}
	sortBenches(bs)
	return bs
}

// Evaluate scores the run's checkpoints (req.Run.Checkpoints, or those of
// them that req.CheckpointIDs names) on the synth set's records of req.Splits
// (default val, test, heldout), plus the fixed-box baseline on the REC
// records; stores predictions and metrics; and, in one transaction, records
// the evaluations, their lineage and the evaluation.completed fact. With
// req.Report it also writes the run's report. progress, when not nil, is
// called after every batch with samples done and total.
func (s *Service) Evaluate(ctx context.Context, req events.EvalRequested, progress func(done, total int64, msg string)) (events.EvaluationCompleted, error) {
	ctx, span := tracer.Start(ctx, "eval.Evaluate")
	defer span.End()
	span.SetAttributes(attribute.String("run_id", req.RunID), attribute.String("correlation_id", req.CorrelationID))
	out, err := s.evaluate(ctx, req, progress)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return out, err
}

func (s *Service) evaluate(ctx context.Context, req events.EvalRequested, progress func(done, total int64, msg string)) (events.EvaluationCompleted, error) {
	var none events.EvaluationCompleted
	if req.RunID == "" {
		return none, fmt.Errorf("evaluate: run_id is required: %w", ErrBadInput)
	}
	if req.MaxSamples < 0 {
		return none, fmt.Errorf("evaluate: max_samples %d is negative: %w", req.MaxSamples, ErrBadInput)
	}
	for b, n := range req.MaxSamplesBy {
		if n < 0 {
			return none, fmt.Errorf("evaluate: max_samples_by[%q] %d is negative: %w", b, n, ErrBadInput)
		}
	}
	if progress == nil {
		progress = func(int64, int64, string) {}
	}
	splits := req.Splits
	if len(splits) == 0 {
		splits = DefaultSplits
	}
	if out, ok, err := recordedAnswer(ctx, s.pool, req); err != nil || ok {
		if ok {
			s.log.InfoContext(ctx, "evaluation already recorded under this correlation id: answering from it",
				slog.String("run", req.RunID), slog.String("correlation_id", req.CorrelationID), slog.Int("evaluations", len(out.EvaluationIDs)))
		}
		return out, err
	}
	run, cks, err := requestRun(req)
	if err != nil {
		return none, fmt.Errorf("evaluate run %s: %w", req.RunID, err)
	}
	xs, err := exportCheckpoints(req, run, cks)
	if err != nil {
		return none, fmt.Errorf("evaluate run %s: %w", req.RunID, err)
	}
	cks = append(cks, xs...)
	set, err := s.loadRecords(ctx, run, splits, req.MaxSamples, req.MaxSamplesBy)
	if err != nil {
		return none, fmt.Errorf("evaluate run %s: %w", req.RunID, err)
	}
	baseline := s.cfg.Baseline == nil || *s.cfg.Baseline
	perCk, recTotal := set.count(splits, nil), set.count(splits, []string{BenchREC})
	if perCk == 0 {
		return none, fmt.Errorf("evaluate run %s: synth set %s has no evaluation records in splits %v", req.RunID, run.SynthSetID, splits)
	}
	var total int64
	for _, ck := range cks {
		total += set.count(splits, ck.Benchmarks)
	}
	if baseline {
		total += recTotal
	}
	var done int64
	s.log.InfoContext(ctx, "evaluation started", slog.String("run", req.RunID), slog.Int("checkpoints", len(cks)),
		slog.Int64("samples", total), slog.Int("skipped", set.skipped))
	progress(0, total, fmt.Sprintf("%d checkpoints, %d samples", len(cks), total))

	var evals []evaluation
	for _, ck := range cks {
		p, err := s.cfg.Predictors(ctx, ck, run)
		if err != nil {
			return none, fmt.Errorf("open predictor for checkpoint %s: %w", ck.ID, err)
		}
		// The language model's reliance on the image (a second scoring
		// pass) says nothing where the language model never trained.
		reliance := noReliance
		if ck.Objective != compute.ObjectiveGrounder {
			reliance = req.MaxSamples
		}
		es, err := s.evalPredictor(ctx, p, ck.ID, ck.Stage, splits, set, false, reliance, ck.Benchmarks, &done, total, progress)
		if c, ok := p.(io.Closer); ok {
			if cerr := c.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("close predictor for checkpoint %s: %w", ck.ID, cerr)
			}
		}
		if err != nil {
			return none, err
		}
		evals = append(evals, es...)
	}
	if baseline && recTotal > 0 {
		box := set.mean.Box()
		s.log.InfoContext(ctx, "baseline box", slog.String("box", model.FormatBox(box)), slog.Int("train_boxes", set.mean.N()))
		es, err := s.evalPredictor(ctx, FixedBoxPredictor{Box: box}, "", StageBaseline, splits, set, true, noReliance, nil, &done, total, progress)
		if err != nil {
			return none, err
		}
		evals = append(evals, es...)
	}

	out := events.EvaluationCompleted{CorrelationID: req.CorrelationID, RunID: req.RunID, Metrics: map[string]float64{}}
	for _, e := range evals {
		out.EvaluationIDs = append(out.EvaluationIDs, e.ID)
		for name, v := range e.Metrics {
			out.Metrics[metricKey(e.Stage, e.Bench, e.Split, name)] = v
		}
	}
	var already bool
	err = store.WithTx(ctx, s.pool, func(tx pgx.Tx) error {
		// Two deliveries of one request may score at the same time: the
		// one that commits second answers with the first one's rows.
		if req.CorrelationID != "" {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('eval:' || $1, 0))`, req.CorrelationID); err != nil {
				return fmt.Errorf("lock correlation id %s: %w", req.CorrelationID, err)
			}
			prev, ok, err := recordedAnswer(ctx, tx, req)
			if err != nil {
				return err
			}
			if ok {
				out, already = prev, true
				return nil
			}
		}
		if err := insertEvaluations(ctx, tx, req, run, evals); err != nil {
			return err
		}
		if err := saveRunFacts(ctx, tx, req); err != nil {
			return err
		}
		if req.Report {
			key, err := s.writeReport(ctx, tx, req.RunID)
			if err != nil {
				return err
			}
			out.ReportKey = key
		}
		if err := addOutbox(ctx, tx, events.TopicEvaluationComplete, out, map[string]string{
			events.MetaCorrelationID: req.CorrelationID,
			events.MetaSchemaVersion: events.SchemaVersion,
		}); err != nil {
			return fmt.Errorf("publish %s: %w", events.TopicEvaluationComplete, err)
		}
		return nil
	})
	if err != nil {
		return none, fmt.Errorf("record evaluation of run %s: %w", req.RunID, err)
	}
	progress(total, total, "recorded")
	if already {
		s.log.InfoContext(ctx, "evaluation recorded meanwhile under this correlation id: answering from it",
			slog.String("run", req.RunID), slog.String("correlation_id", req.CorrelationID))
		return out, nil
	}
	s.log.InfoContext(ctx, "evaluation recorded", slog.String("run", req.RunID), slog.Int("evaluations", len(evals)))
	return out, nil
}

// evalPredictor runs one predictor over every (split, benchmark) of set and
// stores each one's predictions. With baseline it runs only the REC records
// and records them as BenchRECBaseline. Unless reliance is noReliance it
// also measures, where the predictor can, how much the image-reliant
// benchmarks' answers depend on the image (image_gain), on the first
// reliance records of each benchmark and split (0: all of them).
func (s *Service) evalPredictor(ctx context.Context, p Predictor, ckID, stage string, splits []string, set *evalSet,
	baseline bool, reliance int, only []string, done *int64, total int64, progress func(done, total int64, msg string)) ([]evaluation, error) {
	ctx, span := tracer.Start(ctx, "eval.predictor")
	defer span.End()
	span.SetAttributes(attribute.String("checkpoint_id", ckID), attribute.String("stage", stage))
	var out []evaluation
	for _, split := range splits {
		for _, bench := range set.benches(split) {
			recs := set.bySplit[split][bench]
			name := bench
			if len(only) > 0 && !slices.Contains(only, bench) {
				continue
			}
			if baseline {
				if bench != BenchREC {
					continue
				}
				name = BenchRECBaseline
			}
			started := time.Now()
			res, err := runBenchmark(ctx, p, name, split, recs, s.cfg.BatchSize, func(n int) {
				*done += int64(n)
				progress(*done, total, fmt.Sprintf("%s %s/%s", stage, name, split))
			})
			if err != nil {
				return nil, fmt.Errorf("evaluate %s: %w", stage, err)
			}
			if ir, ok := p.(interface {
				imageReliance(context.Context, []model.Record) (map[string]float64, error)
			}); ok && reliance != noReliance && !baseline && imageReliant[bench] {
				rr := recs
				if reliance > 0 && len(rr) > reliance {
					rr = rr[:reliance]
				}
				m, err := ir.imageReliance(ctx, rr)
				if err != nil {
					return nil, fmt.Errorf("evaluate %s %s/%s image reliance: %w", stage, name, split, err)
				}
				if res.Metrics == nil {
					res.Metrics = map[string]float64{}
				}
				maps.Copy(res.Metrics, m)
			}
			e := evaluation{ID: uuid.NewString(), CheckpointID: ckID, Stage: stage, Split: split, Bench: name,
				Samples: len(res.Samples), Metrics: res.Metrics}
			e.PredictionsKey = "evals/" + e.ID + "/predictions.jsonl"
			body, err := encodeJSONL(res.Samples)
			if err != nil {
				return nil, err
			}
			sum, _, err := s.cfg.Blob.Put(e.PredictionsKey, bytesReader(body))
			if err != nil {
				return nil, fmt.Errorf("store predictions of %s %s/%s: %w", stage, name, split, err)
			}
			e.SHA256 = sum
			out = append(out, e)
			el := time.Since(started)
			s.log.InfoContext(ctx, "benchmark scored", slog.String("stage", stage), slog.String("benchmark", name),
				slog.String("split", split), slog.Int("samples", e.Samples), slog.Duration("took", el),
				slog.Float64("samples_per_s", float64(e.Samples)/max(el.Seconds(), 1e-9)))
		}
	}
	return out, nil
}

// noReliance is evalPredictor's reliance that measures none.
//
// Otherwise the reliance pass reads a split's first max_samples records
// (a sample drawn across the split's images, as loadRecords orders them),
// also where max_samples_by lets the head answer more: the head answers
// REC's 400 records a split in under a second, and the reliance pass,
// two teacher-forced passes of the language model over each, took about
// 11 s of them on a 2-core AMD EPYC (docs/experiments.md), for a
// diagnostic that the head's answers do not depend on.
const noReliance = -1

// exportCheckpoints are the request's exports as checkpoints to score:
// each in place of the checkpoint it came from (which the request must
// list), under stage events.ExportStage, on the export backend.
func exportCheckpoints(req events.EvalRequested, run RunInfo, cks []Checkpoint) ([]Checkpoint, error) {
	if len(req.Exports) == 0 {
		return nil, nil
	}
	for i, b := range req.ExportBenchmarks {
		if !slices.Contains(benchOrder, b) {
			return nil, fmt.Errorf("export_benchmarks[%d] = %q: want one of %v: %w", i, b, benchOrder, ErrBadInput)
		}
	}
	runHash := ""
	if req.Run != nil {
		runHash = req.Run.ModelConfigSHA256
	}
	var out []Checkpoint
	for i, x := range req.Exports {
		var from *Checkpoint
		for j := range cks {
			if cks[j].ID == x.CheckpointID {
				from = &cks[j]
			}
		}
		switch {
		case from == nil:
			return nil, fmt.Errorf("exports[%d]: checkpoint %s is not among the checkpoints scored: %w", i, x.CheckpointID, ErrBadInput)
		case !slices.Contains(events.ExportDtypes[x.Format], x.Dtype) || x.BlobKey == "" || x.SHA256 == "":
			return nil, fmt.Errorf("exports[%d]: format %q, dtype %q, blob %q, sha256 %q: an export (gguf or onnx) with its dtype, blob and sha256 is required: %w", i, x.Format, x.Dtype, x.BlobKey, x.SHA256, ErrBadInput)
		case runHash != "" && x.ModelConfigSHA256 != "" && x.ModelConfigSHA256 != runHash:
			return nil, fmt.Errorf("exports[%d]: its model config hash %s is not the run's %s: %w", i, x.ModelConfigSHA256, runHash, ErrBadInput)
		}
		backend := req.ExportBackend
		if backend == "" {
			backend = events.ExportBackend(x.Format)
		}
		out = append(out, Checkpoint{ID: from.ID, RunID: run.RunID, Stage: events.ExportStage(from.Stage, x.Format, x.Dtype), Step: from.Step,
			BlobKey: x.BlobKey, SHA256: x.SHA256, Backend: backend, Dtype: x.Dtype, Benchmarks: req.ExportBenchmarks})
	}
	return out, nil
}

// requestRun is what req says about its run: the run's facts and the
// checkpoints to score, checked for what scoring needs. Eval looks
// nothing up: a request without them is bad input.
func requestRun(req events.EvalRequested) (RunInfo, []Checkpoint, error) {
	f := req.Run
	if f == nil {
		return RunInfo{}, nil, fmt.Errorf("the request carries no run facts (run: checkpoints, model config, tokenizer, synth set); start it through the Evaluate workflow, which asks services/train for them: %w", ErrBadInput)
	}
	if f.ManifestKey == "" {
		return RunInfo{}, nil, fmt.Errorf("run.manifest_key (the synth set's manifest) is empty: %w", ErrBadInput)
	}
	if f.ModelConfigSHA256 != "" && len(f.ModelConfig) > 0 {
		sum, err := model.ConfigSHA256(f.ModelConfig)
		if err != nil {
			return RunInfo{}, nil, fmt.Errorf("run.model_config: %w: %w", err, ErrBadInput)
		}
		if sum != f.ModelConfigSHA256 {
			return RunInfo{}, nil, fmt.Errorf("run.model_config hashes to %s, run.model_config_sha256 says %s: %w", sum, f.ModelConfigSHA256, ErrBadInput)
		}
	}
	run := RunInfo{RunID: req.RunID, SynthSetID: f.SynthSetID, ManifestKey: f.ManifestKey, DatasetID: f.DatasetID,
		DatasetRoot: f.DatasetRoot, Backend: f.Backend, ModelConfig: f.ModelConfig, TokenizerKey: f.TokenizerKey}
	byID := map[string]Checkpoint{}
	var all []Checkpoint
	for i, c := range f.Checkpoints {
		if c.ID == "" || c.Stage == "" || c.BlobKey == "" {
			return RunInfo{}, nil, fmt.Errorf("run.checkpoints[%d]: id, stage and blob_key are required (got %q, %q, %q): %w", i, c.ID, c.Stage, c.BlobKey, ErrBadInput)
		}
		if _, dup := byID[c.ID]; dup {
			return RunInfo{}, nil, fmt.Errorf("run.checkpoints[%d]: checkpoint %s listed twice: %w", i, c.ID, ErrBadInput)
		}
		ck := Checkpoint{ID: c.ID, RunID: req.RunID, Stage: c.Stage, Step: c.Step, BlobKey: c.BlobKey, SHA256: c.SHA256, Objective: c.Objective}
		switch c.Objective {
		case compute.ObjectiveAll:
		case compute.ObjectiveGrounder:
			// Its language model never trained: only the benchmarks the
			// grounding head answers say anything about it.
			ck.Benchmarks = HeadBenchmarks()
		default:
			return RunInfo{}, nil, fmt.Errorf("run.checkpoints[%d]: objective %q is not one of \"\" and %q: %w", i, c.Objective, compute.ObjectiveGrounder, ErrBadInput)
		}
		byID[c.ID] = ck
		all = append(all, ck)
	}
	cks := all
	if len(req.CheckpointIDs) > 0 {
		cks = nil
		for _, id := range req.CheckpointIDs {
			ck, ok := byID[id]
			if !ok {
				return RunInfo{}, nil, fmt.Errorf("checkpoint_ids: %s is not among the %d of run.checkpoints: %w", id, len(all), ErrBadInput)
			}
			cks = append(cks, ck)
		}
	}
	if len(cks) == 0 {
		return RunInfo{}, nil, fmt.Errorf("run.checkpoints is empty: no checkpoints to score: %w", ErrBadInput)
	}
	slices.SortStableFunc(cks, func(a, b Checkpoint) int { return cmp.Or(cmp.Compare(a.Stage, b.Stage), cmp.Compare(a.Step, b.Step)) })
	return run, cks, nil
}
