// Package app holds the ingest use cases: Ingest (read, validate, hash,
// record a content-addressed dataset version and its fact) and Load (read a
// recorded version back, verified against its hashes). Storage is behind
// the Repository port; readers, validation and the scene world are called
// directly.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/ingest/internal/validate"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
	"github.com/groundmesh/groundmesh/services/ingest/scenes"
)

// Sentinel errors.
var (
	// ErrBadInput marks errors that retrying cannot fix: unknown format,
	// missing path, unparsable files, too many bad records.
	ErrBadInput = errors.New("bad ingest input")
	// ErrNotFound: no dataset version with that id.
	ErrNotFound = errors.New("dataset not found")
	// ErrChanged: a recorded version's files no longer hash as recorded.
	ErrChanged = errors.New("dataset files changed since ingest")
)

// DefaultMaxBadFraction applies when a request names none.
const DefaultMaxBadFraction = 0.05

// Version is a recorded dataset version.
type Version struct {
	ID            string
	Name          string
	Version       string
	Format        string
	Root          string
	SourcePath    string
	CorrelationID string
	Counts        map[string]int64
	Splits        map[string]int64
	Manifest      ManifestHeader
	Report        ReportSummary
	CreatedAt     time.Time
}

// ReportSummary is the validation outcome kept with a version; the
// rejected records themselves are stored row by row.
type ReportSummary struct {
	Records        int64            `json:"records"`
	Rejected       int64            `json:"rejected"`
	Clipped        int64            `json:"clipped"`
	BadFraction    float64          `json:"bad_fraction"`
	MaxBadFraction float64          `json:"max_bad_fraction"`
	ByReason       map[string]int64 `json:"by_reason"`
}

// Repository stores dataset versions.
type Repository interface {
	// Find returns the version with this manifest hash, or nil.
	Find(ctx context.Context, version string) (*Version, error)
	// Get returns a version and its files by id (ErrNotFound).
	Get(ctx context.Context, id string) (*Version, []FileEntry, error)
	// Create records v with its files and rejects, a lineage edge, and the
	// fact (its DatasetID set to the new id) in the outbox, all in one
	// transaction. When the version already exists it records nothing and
	// returns the existing one with created false.
	Create(ctx context.Context, v *Version, files []FileEntry, rejects []readers.Reject, fact events.DatasetIngested) (_ *Version, created bool, err error)
	// Rejects lists a version's rejected records in the order recorded.
	Rejects(ctx context.Context, id string) ([]readers.Reject, error)
}

// Config configures the use cases.
type Config struct {
	// DataDir holds generated scene worlds (DataDir/scenes/...).
	DataDir string
	// MaxBadFraction is the default threshold (DefaultMaxBadFraction when 0).
	MaxBadFraction float64
	// Validate is the validation policy (Root and Progress are set per call).
	Validate validate.Options
	Logger   *slog.Logger
}

// Service runs the use cases.
type Service struct {
	cfg    Config
	repo   Repository
	log    *slog.Logger
	tracer trace.Tracer
	// one scene world generation per directory at a time
	genMu sync.Mutex
}

// New builds the service.
func New(cfg Config, repo Repository) (*Service, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("ingest: DataDir is required")
	}
	if repo == nil {
		repo = noRepository{}
	}
	if cfg.MaxBadFraction == 0 {
		cfg.MaxBadFraction = DefaultMaxBadFraction
	}
	if cfg.MaxBadFraction < 0 || cfg.MaxBadFraction > 1 {
		return nil, fmt.Errorf("ingest: MaxBadFraction %v out of range [0, 1]", cfg.MaxBadFraction)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	// Defaults are applied once here, so that the manifest records the
	// policy actually used.
	cfg.Validate = cfg.Validate.WithDefaults()
	return &Service{cfg: cfg, repo: repo, log: cfg.Logger, tracer: otel.Tracer("groundmesh/ingest")}, nil
}

// Progress reports work: done of total in the phase named by msg.
type Progress func(done, total int64, msg string)

// throttle calls p at most every 200 ms, and always when done reaches total.
func throttle(p Progress) Progress {
	if p == nil {
		return func(int64, int64, string) {}
	}
	var mu sync.Mutex
	var last time.Time
	return func(done, total int64, msg string) {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if done < total && now.Sub(last) < 200*time.Millisecond {
			return
		}
		last = now
		p(done, total, msg)
	}
}

func badInput(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadInput, fmt.Sprintf(format, args...))
}

// RejectedError is returned when too many records are bad; it wraps
// ErrBadInput and carries the report.
type RejectedError struct {
	Report *validate.Report
	Max    float64
}

func (e *RejectedError) Error() string {
	reasons := e.Report.ByReason()
	keys := make([]string, 0, len(reasons))
	for k := range reasons {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return reasons[keys[i]] > reasons[keys[j]] || reasons[keys[i]] == reasons[keys[j]] && keys[i] < keys[j]
	})
	var parts []string
	for i, k := range keys {
		if i == 5 {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, fmt.Sprintf("%s: %d", k, reasons[k]))
	}
	first := ""
	if len(e.Report.Rejected) > 0 {
		r := e.Report.Rejected[0]
		first = fmt.Sprintf("; first: %s %s: %s", r.Kind, r.ID, r.Reason)
		if w := r.Where(); w != "" {
			first = fmt.Sprintf("; first: %s: %s %s: %s", w, r.Kind, r.ID, r.Reason)
		}
	}
	return fmt.Sprintf("%v: %d of %d records rejected (%.2f%% > %.2f%% allowed): %s%s",
		ErrBadInput, len(e.Report.Rejected), e.Report.Records, 100*e.Report.BadFraction(), 100*e.Max, strings.Join(parts, ", "), first)
}

func (e *RejectedError) Unwrap() error { return ErrBadInput }

// prepared is a dataset read, validated and hashed, not yet recorded.
type prepared struct {
	ds     *dataset.Dataset
	res    *readers.Result // questions, instructions and extras, filtered like ds
	report *validate.Report
	header ManifestHeader
	files  []FileEntry
}

// Loaded is a recorded version read back: the dataset and what
// dataset.Dataset has no field for (evaluation questions, instruction
// records, annotations kept aside).
type Loaded struct {
	Dataset      *dataset.Dataset
	Questions    []readers.Question
	Instructions []model.Record
	Extra        readers.Extra
}

// Ingest reads, validates, hashes and records the dataset req names. Bad
// input fails with an error wrapping ErrBadInput.
func (s *Service) Ingest(ctx context.Context, req events.IngestRequested, progress Progress) (_ events.DatasetIngested, err error) {
	ctx, span := s.tracer.Start(ctx, "ingest.Ingest", trace.WithAttributes(
		attribute.String("ingest.format", req.Format), attribute.String("ingest.path", req.Path),
		attribute.String("ingest.name", req.Name), attribute.String("correlation_id", req.CorrelationID)))
	defer func() { endSpan(span, err) }()
	start := time.Now()
	progress = throttle(progress)

	src, name, err := s.resolve(ctx, req, progress)
	if err != nil {
		return events.DatasetIngested{}, err
	}
	maxBad := req.MaxBadFraction
	if maxBad == 0 {
		maxBad = s.cfg.MaxBadFraction
	}
	if maxBad < 0 || maxBad > 1 {
		return events.DatasetIngested{}, badInput("max_bad_fraction %v out of range [0, 1]", maxBad)
	}
	p, err := s.prepare(ctx, req.Format, src, name, progress)
	if err != nil {
		return events.DatasetIngested{}, err
	}
	if bf := p.report.BadFraction(); bf > maxBad {
		return events.DatasetIngested{}, &RejectedError{Report: p.report, Max: maxBad}
	}
	if len(p.ds.Images) == 0 {
		var ann []string
		for _, f := range p.files {
			if f.Kind == "annotation" {
				ann = append(ann, f.Path)
			}
		}
		return events.DatasetIngested{}, badInput("no usable images in %s (%d records rejected; annotation files read: %s)",
			src, len(p.report.Rejected), strings.Join(ann, ", "))
	}

	version := ManifestVersion(p.header, p.files)
	span.SetAttributes(attribute.String("ingest.version", version))
	counts, splits := countsOf(p.ds, p.res, p.report)
	fact := events.DatasetIngested{
		CorrelationID: req.CorrelationID, Name: name, Version: version, Format: req.Format,
		Root: p.ds.Root, Counts: counts, Splits: splits,
	}
	progress(0, 1, "record")
	ctxRec, recSpan := s.tracer.Start(ctx, "ingest.record")
	existing, err := s.repo.Find(ctxRec, version)
	var created bool
	if err == nil && existing == nil {
		existing, created, err = s.repo.Create(ctxRec, &Version{
			Name: name, Version: version, Format: req.Format, Root: p.ds.Root, SourcePath: src,
			CorrelationID: req.CorrelationID, Counts: counts, Splits: splits, Manifest: p.header,
			Report: summary(p.report, maxBad),
		}, p.files, p.report.Rejected, fact)
	}
	endSpan(recSpan, err)
	if err != nil {
		return events.DatasetIngested{}, fmt.Errorf("record dataset version: %w", err)
	}
	progress(1, 1, "record")
	out := events.DatasetIngested{
		CorrelationID: req.CorrelationID, DatasetID: existing.ID, Name: existing.Name, Version: existing.Version,
		Format: existing.Format, Root: existing.Root, Reused: !created, Counts: existing.Counts, Splits: existing.Splits,
	}
	span.SetAttributes(attribute.String("ingest.dataset_id", out.DatasetID), attribute.Bool("ingest.reused", out.Reused))
	s.log.InfoContext(ctx, "dataset ingested",
		slog.String("dataset_id", out.DatasetID), slog.String("name", out.Name), slog.String("format", out.Format),
		slog.String("version", out.Version), slog.Bool("reused", out.Reused),
		slog.Int64("images", counts["images"]), slog.Int64("objects", counts["objects"]),
		slog.Int64("rejected", counts["rejected"]), slog.Duration("took", time.Since(start)),
		slog.String("correlation_id", req.CorrelationID))
	return out, nil
}

// DryRun is Ingest without recording: it reads, validates and hashes, and
// returns what Ingest would record (DatasetID empty) with the full report.
// It fails like Ingest on bad input, except that too many bad records are
// reported, not an error.
func (s *Service) DryRun(ctx context.Context, req events.IngestRequested, progress Progress) (_ events.DatasetIngested, _ *validate.Report, err error) {
	ctx, span := s.tracer.Start(ctx, "ingest.DryRun", trace.WithAttributes(
		attribute.String("ingest.format", req.Format), attribute.String("ingest.path", req.Path)))
	defer func() { endSpan(span, err) }()
	progress = throttle(progress)
	src, name, err := s.resolve(ctx, req, progress)
	if err != nil {
		return events.DatasetIngested{}, nil, err
	}
	p, err := s.prepare(ctx, req.Format, src, name, progress)
	if err != nil {
		return events.DatasetIngested{}, nil, err
	}
	counts, splits := countsOf(p.ds, p.res, p.report)
	return events.DatasetIngested{
		CorrelationID: req.CorrelationID, Name: name, Version: ManifestVersion(p.header, p.files), Format: req.Format,
		Root: p.ds.Root, Counts: counts, Splits: splits,
	}, p.report, nil
}

// resolve checks the request and returns the absolute source path and the
// dataset name, generating the scene world first when asked to.
func (s *Service) resolve(ctx context.Context, req events.IngestRequested, progress Progress) (string, string, error) {
	known := false
	for _, f := range readers.Formats {
		known = known || f == req.Format
	}
	if !known {
		return "", "", badInput("unknown format %q (want one of %s)", req.Format, strings.Join(readers.Formats, ", "))
	}
	if !validate.ValidText(req.Name) || len(req.Name) > 200 {
		return "", "", badInput("name %q is not valid text of at most 200 bytes", req.Name)
	}
	if req.Scenes != nil && req.Format != readers.FormatScenes {
		return "", "", badInput("a scenes spec needs format scenes, not %q", req.Format)
	}
	src := req.Path
	name := req.Name
	if req.Format == readers.FormatScenes && src == "" {
		spec := scenes.Spec{}
		if req.Scenes != nil {
			spec = scenes.Spec{Seed: req.Scenes.Seed, Images: req.Scenes.Images, Size: req.Scenes.Size}
		}
		spec = spec.WithDefaults()
		if err := spec.Validate(); err != nil {
			return "", "", fmt.Errorf("%w: %v", ErrBadInput, err)
		}
		dir, err := s.ensureScenes(ctx, spec, progress)
		if err != nil {
			return "", "", err
		}
		src = dir
		if name == "" {
			name = fmt.Sprintf("scenes-%d-%dx%d", spec.Seed, spec.Images, spec.Size)
		}
	}
	if src == "" {
		return "", "", badInput("path is required for format %s", req.Format)
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return "", "", badInput("path %q: %v", src, err)
	}
	if _, err := os.Stat(abs); err != nil {
		return "", "", badInput("path %q: %v", src, err)
	}
	if !validate.ValidText(abs) {
		return "", "", badInput("path %q is not valid UTF-8", abs)
	}
	if name == "" {
		name = DefaultName(abs)
	}
	return abs, name, nil
}

// DefaultName is the dataset name of a path given without one: the folder
// name, for a file the name of the folder holding it (above an
// "annotations" folder).
func DefaultName(abs string) string {
	if st, err := os.Stat(abs); err == nil && !st.IsDir() {
		abs = filepath.Dir(abs)
		if filepath.Base(abs) == "annotations" {
			abs = filepath.Dir(abs)
		}
	}
	return filepath.Base(abs)
}

// ScenesDir is where the service keeps the world of spec:
// DataDir/scenes/<seed>/<images>x<size>.
func ScenesDir(dataDir string, spec scenes.Spec) string {
	return filepath.Join(dataDir, "scenes", strconv.FormatInt(spec.Seed, 10), fmt.Sprintf("%dx%d", spec.Images, spec.Size))
}

// ensureScenes returns the world directory of spec, generating it when it
// does not exist yet. Generation is deterministic, so a world generated
// earlier (or concurrently) is the same bytes and is reused.
func (s *Service) ensureScenes(ctx context.Context, spec scenes.Spec, progress Progress) (string, error) {
	dir := ScenesDir(s.cfg.DataDir, spec)
	matches := func() bool {
		m, err := scenes.ReadMeta(dir)
		return err == nil && m.Generator == scenes.Generator && m.Spec == spec
	}
	s.genMu.Lock()
	defer s.genMu.Unlock()
	if matches() {
		return dir, nil
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return "", fmt.Errorf("scene world %s exists but was written by another generator or spec; remove it to regenerate", dir)
	}
	ctx, span := s.tracer.Start(ctx, "ingest.GenerateScenes", trace.WithAttributes(
		attribute.Int64("scenes.seed", spec.Seed), attribute.Int("scenes.images", spec.Images), attribute.Int("scenes.size", spec.Size)))
	start := time.Now()
	_, err := scenes.Generate(ctx, dir, spec, func(done, total int64) { progress(done, total, "generate scenes") })
	endSpan(span, err)
	if err != nil {
		if matches() { // another process published the same world first
			return dir, nil
		}
		return "", fmt.Errorf("generate scene world: %w", err)
	}
	s.log.InfoContext(ctx, "scene world generated", slog.String("dir", dir), slog.Int64("seed", spec.Seed),
		slog.Int("images", spec.Images), slog.Int("size", spec.Size), slog.Duration("took", time.Since(start)))
	return dir, nil
}

// options returns the manifest's record of the validation policy.
func (s *Service) options() map[string]string {
	v := s.cfg.Validate
	return map[string]string{
		"check_images":     strconv.FormatBool(!v.SkipImageFiles),
		"box_tolerance":    strconv.FormatFloat(v.BoxTolerance, 'g', -1, 64),
		"max_image_pixels": strconv.FormatInt(v.MaxImagePixels, 10),
		"max_image_bytes":  strconv.FormatInt(v.MaxImageBytes, 10),
	}
}

// prepare reads, validates and hashes.
func (s *Service) prepare(ctx context.Context, format, src, name string, progress Progress) (*prepared, error) {
	if progress == nil {
		progress = func(int64, int64, string) {}
	}
	st, err := os.Stat(src)
	if err != nil {
		return nil, badInput("path %q: %v", src, err)
	}
	root := src
	if !st.IsDir() {
		root = filepath.Dir(src)
		if filepath.Base(root) == "annotations" {
			root = filepath.Dir(root)
		}
	}
	opener := newHashingOpener(root, progress)
	rctx, rspan := s.tracer.Start(ctx, "ingest.read")
	res, err := readers.Read(rctx, format, src, readers.Options{Open: opener.Open})
	endSpan(rspan, err)
	if err != nil {
		if errors.Is(err, readers.ErrFormat) {
			return nil, fmt.Errorf("%w: %v", ErrBadInput, err)
		}
		return nil, fmt.Errorf("read %s dataset %s: %w", format, src, err)
	}
	ds := res.Dataset
	ds.Name = name
	vctx, vspan := s.tracer.Start(ctx, "ingest.validate")
	vopts := s.cfg.Validate
	vopts.Root = ds.Root
	vopts.Progress = func(done, total int64) { progress(done, total, "check images") }
	vopts.Where = res.Where
	vopts.BoxText = readers.SourceBox(format)
	rep, err := validate.Dataset(vctx, ds, res.Rejected, vopts)
	if err == nil {
		vspan.SetAttributes(attribute.Int64("ingest.records", rep.Records), attribute.Int("ingest.rejected", len(rep.Rejected)))
	}
	endSpan(vspan, err)
	if err != nil {
		return nil, fmt.Errorf("validate %s: %w", src, err)
	}
	keepAnswerable(res, rep)
	files := opener.Files()
	seen := map[string]bool{}
	for _, im := range ds.Images {
		if im.SHA256 == "" || seen[im.File] {
			continue
		}
		seen[im.File] = true
		files = append(files, FileEntry{Path: path.Clean(im.File), Kind: KindImage, SHA256: im.SHA256, Bytes: rep.ImageBytes[im.File]})
	}
	h := ManifestHeader{Schema: ManifestSchema, Name: name, Format: format, Root: ds.Root, Source: src, Options: s.options()}
	for _, f := range files {
		h.Files++
		h.Bytes += f.Bytes
	}
	return &prepared{ds: ds, res: res, report: rep, header: h, files: sortedFiles(files)}, nil
}

// keepAnswerable drops the questions and instruction records whose images
// validation rejected (they could not be shown to a model), reporting each
// where its file holds it, and counts the kept ones as records.
func keepAnswerable(res *readers.Result, rep *validate.Report) {
	kept := make(map[string]bool, len(res.Dataset.Images))
	for _, im := range res.Dataset.Images {
		kept[im.ID] = true
	}
	qs := res.Questions[:0]
	for _, q := range res.Questions {
		rep.Records++
		if !kept[q.ImageID] {
			rep.Rejected = append(rep.Rejected, readers.Reject{Kind: readers.KindQuestion, ID: q.ID, File: q.File, Line: q.Line,
				Reason: validate.ReasonImageRejected + ": " + q.ImageID})
			continue
		}
		qs = append(qs, q)
	}
	res.Questions = qs
	ins := res.Instructions[:0]
	for i, r := range res.Instructions {
		rep.Records++
		bad := ""
		for _, im := range r.Images {
			if im.Kind == "image" && !kept[im.Path] {
				bad = im.Path
				break
			}
		}
		if bad != "" {
			file, line := res.InstructionWhere(i)
			rep.Rejected = append(rep.Rejected, readers.Reject{Kind: readers.KindInstruction, ID: r.ID, File: file, Line: line,
				Reason: validate.ReasonImageRejected + ": " + bad})
			continue
		}
		ins = append(ins, r)
	}
	res.Instructions = ins
}

func countsOf(ds *dataset.Dataset, res *readers.Result, rep *validate.Report) (map[string]int64, map[string]int64) {
	counts := map[string]int64{
		"images": int64(len(ds.Images)), "objects": int64(len(ds.Objects)), "refs": int64(len(ds.Refs)),
		"relations": int64(len(ds.Relations)), "regions": int64(len(ds.Regions)),
		"rejected": int64(len(rep.Rejected)), "clipped": rep.Clipped,
	}
	if res != nil {
		if n := len(res.Questions); n > 0 {
			counts["questions"] = int64(n)
		}
		if n := len(res.Instructions); n > 0 {
			counts["instructions"] = int64(n)
		}
	}
	splits := map[string]int64{}
	for _, im := range ds.Images {
		splits[im.Split]++
	}
	return counts, splits
}

func summary(rep *validate.Report, maxBad float64) ReportSummary {
	return ReportSummary{
		Records: rep.Records, Rejected: int64(len(rep.Rejected)), Clipped: rep.Clipped,
		BadFraction: rep.BadFraction(), MaxBadFraction: maxBad, ByReason: rep.ByReason(),
	}
}

// Load reads a recorded version back from its files, validates it with the
// policy it was ingested with, and checks every file against its recorded
// hash: a changed file fails with ErrChanged.
func (s *Service) Load(ctx context.Context, id string) (*dataset.Dataset, error) {
	l, err := s.LoadAll(ctx, id)
	if err != nil {
		return nil, err
	}
	return l.Dataset, nil
}

// LoadAll is Load with the questions, instruction records and extra
// annotations the version's files hold.
func (s *Service) LoadAll(ctx context.Context, id string) (_ *Loaded, err error) {
	ctx, span := s.tracer.Start(ctx, "ingest.Load", trace.WithAttributes(attribute.String("ingest.dataset_id", id)))
	defer func() { endSpan(span, err) }()
	start := time.Now()
	v, files, err := s.repo.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	p, err := s.prepareAs(ctx, v)
	if err != nil {
		return nil, fmt.Errorf("load dataset %s: %w", id, err)
	}
	if got := ManifestVersion(p.header, p.files); got != v.Version {
		return nil, fmt.Errorf("%w: dataset %s (%s): %s", ErrChanged, id, v.Name, diffFiles(files, p.files))
	}
	s.log.InfoContext(ctx, "dataset loaded", slog.String("dataset_id", id), slog.String("name", v.Name),
		slog.Int("images", len(p.ds.Images)), slog.Int("objects", len(p.ds.Objects)), slog.Duration("took", time.Since(start)))
	return &Loaded{Dataset: p.ds, Questions: p.res.Questions, Instructions: p.res.Instructions, Extra: p.res.Extra}, nil
}

// Root returns the root directory of a recorded version (the directory
// its image paths are relative to) without re-reading its files.
func (s *Service) Root(ctx context.Context, id string) (string, error) {
	v, _, err := s.repo.Get(ctx, id)
	if err != nil {
		return "", err
	}
	return v.Root, nil
}

// Rejects returns the validation summary of a recorded version and its
// rejected records with their files and lines, in the order found.
func (s *Service) Rejects(ctx context.Context, id string) (ReportSummary, []readers.Reject, error) {
	v, _, err := s.repo.Get(ctx, id)
	if err != nil {
		return ReportSummary{}, nil, err
	}
	rj, err := s.repo.Rejects(ctx, id)
	if err != nil {
		return ReportSummary{}, nil, fmt.Errorf("list rejects of %s: %w", id, err)
	}
	return v.Report, rj, nil
}

// prepareAs re-runs prepare with the validation policy a version recorded.
func (s *Service) prepareAs(ctx context.Context, v *Version) (*prepared, error) {
	opts := v.Manifest.Options
	pol := s.cfg.Validate
	pol.SkipImageFiles = opts["check_images"] == "false"
	if x, err := strconv.ParseFloat(opts["box_tolerance"], 64); err == nil {
		pol.BoxTolerance = x
	}
	if x, err := strconv.ParseInt(opts["max_image_pixels"], 10, 64); err == nil {
		pol.MaxImagePixels = x
	}
	if x, err := strconv.ParseInt(opts["max_image_bytes"], 10, 64); err == nil {
		pol.MaxImageBytes = x
	}
	s2 := &Service{cfg: s.cfg, repo: s.repo, log: s.log, tracer: s.tracer}
	s2.cfg.Validate = pol
	p, err := s2.prepare(ctx, v.Format, v.SourcePath, v.Name, nil)
	if err != nil {
		return nil, err
	}
	if !reflect.DeepEqual(p.header.Options, opts) {
		return nil, fmt.Errorf("validation policy %v cannot be reproduced (got %v)", opts, p.header.Options)
	}
	return p, nil
}

// noRepository stands in when a Service is built for dry runs only.
type noRepository struct{}

var errNoRepository = errors.New("ingest: no repository configured (dry-run service)")

func (noRepository) Find(context.Context, string) (*Version, error) { return nil, errNoRepository }
func (noRepository) Get(context.Context, string) (*Version, []FileEntry, error) {
	return nil, nil, errNoRepository
}
func (noRepository) Rejects(context.Context, string) ([]readers.Reject, error) {
	return nil, errNoRepository
}
func (noRepository) Create(context.Context, *Version, []FileEntry, []readers.Reject, events.DatasetIngested) (*Version, bool, error) {
	return nil, false, errNoRepository
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
