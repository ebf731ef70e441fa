// Package readers turns annotated image collections in their published
// formats into groundmesh's internal representation (internal/dataset):
// COCO instances JSON, RefCOCO / RefCOCO+ / RefCOCOg refs (Python pickle or
// JSON), Visual Genome JSON, Flickr30k Entities, ODVG jsonl, and the built-in
// scene world (which writes COCO + RefCOCO + VG files and is read back
// through the same code). POPE question files (evaluation questions) and
// LLaVA-style conversations (instruction records in model's form)
// come with the images they use; what dataset.Dataset has no field for is
// in Result.Questions, Result.Instructions and Result.Extra.
//
// Any annotation file may be gzip-compressed (read transparently, with a
// limit against decompression bombs); symbolic links to files count as
// files; every record remembers its file (and line, in line-oriented files)
// so that rejects say where (Result.Where).
//
// Readers convert conventions exactly once (COCO and VG xywh, Flickr30k
// inclusive corners, ODVG xyxy) and stream large files, so that memory grows
// with the records kept, not with the file: COCO instances files (450 MB
// for train2017) go through a structural scanner (jsonscan.go) that decodes
// the used members of each element with strict JSON rules and skips the rest
// (segmentation polygons, info, licenses) without keeping it; the other JSON
// files are decoded one array element at a time with json.Decoder tokens;
// jsonl one line at a time; pickles with a bounded, non-executing decoder.
//
// Multi-valued attributes are joined with "|" in Object.Attributes (VG
// "names" and "attributes").
//
// A reader rejects only what it alone can judge (a record it cannot parse,
// an unknown category id); format-independent checks (boxes inside the
// image, duplicate ids, image files, path traversal, text encoding) belong
// to the ingest service's validator, which sees every format the same way.
package readers

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/ingest/internal/pickle"
)

// Formats accepted by Read.
const (
	FormatCOCO      = "coco"
	FormatRefCOCO   = "refcoco"
	FormatVG        = "vg"
	FormatFlickr30k = "flickr30k"
	FormatODVG      = "odvg"
	FormatScenes    = "scenes"
	FormatPOPE      = "pope"
	FormatLLaVA     = "llava"
)

// Formats lists every format Read accepts.
var Formats = []string{FormatCOCO, FormatRefCOCO, FormatVG, FormatFlickr30k, FormatODVG, FormatScenes, FormatPOPE, FormatLLaVA}

// ErrFormat is wrapped by errors about the input itself (an unknown format,
// no annotation files, a file that is not the format it claims to be).
// Retrying cannot fix them.
var ErrFormat = errors.New("bad dataset input")

// Record kinds used in Reject.Kind.
const (
	KindImage    = "image"
	KindObject   = "object"
	KindRef      = "ref"
	KindRelation = "relation"
	KindRegion   = "region"
)

// Reject is one record that was not kept: a reader could not convert it,
// or the validator refused it. File and Line say where it came from (Line
// is set for JSON Lines files).
type Reject struct {
	Kind   string `json:"kind"`
	ID     string `json:"id"`
	File   string `json:"file,omitempty"`
	Line   int    `json:"line,omitempty"`
	Reason string `json:"reason"`
}

// Where is "file:line", "file" or "" as far as known.
func (r Reject) Where() string {
	if r.File == "" || r.Line <= 0 {
		return r.File
	}
	return r.File + ":" + strconv.Itoa(r.Line)
}

// Result is what a read produced.
type Result struct {
	Dataset *dataset.Dataset
	// Files are the annotation files read, slash-separated and relative to
	// Dataset.Root, in the order read.
	Files []string
	// Rejected lists records that could not be converted.
	Rejected []Reject
	// Questions are the evaluation questions of a POPE file.
	Questions []Question
	// Instructions are the conversations of a LLaVA-style file, in the
	// record form that synth writes and training reads.
	Instructions []model.Record
	// Extra holds annotations that dataset.Dataset has no field for yet.
	Extra Extra

	srcs           []source
	instructionSrc []recordPos
}

// Extra holds source annotations that dataset.Dataset cannot carry.
type Extra struct {
	// RelationSynsets are the WordNet synsets of VG relationships by
	// relation id (the predicate's synsets, as the file lists them).
	RelationSynsets map[string][]string
	// Captions are ODVG grounding captions by image id; the regions'
	// phrases are spans of them.
	Captions map[string]string
}

// Where returns the annotation file (and line, for line-oriented files)
// that the i-th record of kind in the dataset as read came from, so that
// the validator's rejects name the place in the file. i indexes the
// slices as Read returned them, before validation removes anything.
func (res *Result) Where(kind string, i int) (file string, line int) {
	k := kindIndex(kind)
	if k < 0 {
		return "", 0
	}
	// The last run that started at or before i (starts never decrease).
	j := sort.Search(len(res.srcs), func(j int) bool { return res.srcs[j].start[k] > i }) - 1
	if j < 0 {
		return "", 0
	}
	sg := &res.srcs[j]
	if off := i - sg.start[k]; off < len(sg.lines[k]) {
		line = int(sg.lines[k][off])
	}
	return sg.file, line
}

// InstructionWhere returns the file and line of the i-th instruction record
// as read.
func (res *Result) InstructionWhere(i int) (file string, line int) {
	if i < len(res.instructionSrc) {
		s := res.instructionSrc[i]
		return s.file, s.line
	}
	return "", 0
}

type recordPos struct {
	file string
	line int
}

// source is a run of records read from one file: the records of each kind
// from start[kind] on, until the next source, came from file.
type source struct {
	file  string
	start [5]int
	lines [5][]int32 // per record, for line-oriented files
}

var kinds = [5]string{KindImage, KindObject, KindRef, KindRelation, KindRegion}

func kindIndex(kind string) int {
	for i, k := range kinds {
		if k == kind {
			return i
		}
	}
	return -1
}

// Options configure a read. The zero value reads from the filesystem.
type Options struct {
	// Open opens an annotation file given its slash-separated path relative
	// to the root. The ingest service wraps it to hash bytes as they are
	// parsed. Default: os.Open under the root.
	Open func(rel string) (io.ReadCloser, error)
	// ImageDir overrides where image files are looked for, relative to the
	// root ("" = per-format defaults, see each reader).
	ImageDir string
	// MaxDecompressed bounds the bytes one gzip-compressed annotation file
	// may expand to (default DefaultMaxDecompressed), against
	// decompression bombs.
	MaxDecompressed int64
	// MaxValue bounds one JSON value of a COCO file that the reader keeps
	// in memory (a file name, an attributes object, a category; default
	// DefaultMaxValue): a larger one fails the read with an error naming
	// the file and the byte, so that peak memory stays a few times this
	// limit. Skipped values (segmentation, info) are streamed whatever
	// their size.
	MaxValue int
}

// Defaults of Options.
const (
	DefaultMaxDecompressed = 16 << 30
	DefaultMaxValue        = 16 << 20
)

// Read reads the dataset at path (a directory, or for coco, refcoco, odvg,
// pope and llava also a single annotation file) in the given format.
func Read(ctx context.Context, format, p string, opts Options) (*Result, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", p, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("%w: stat %s: %v", ErrFormat, p, err)
	}
	if opts.MaxDecompressed <= 0 {
		opts.MaxDecompressed = DefaultMaxDecompressed
	}
	if opts.MaxValue <= 0 {
		opts.MaxValue = DefaultMaxValue
	}
	r := &run{ctx: ctx, opts: opts}
	var files []string // relative to root when p is a file
	if st.IsDir() {
		r.root = abs
	} else {
		r.root = filepath.Dir(abs)
		if filepath.Base(r.root) == "annotations" {
			r.root = filepath.Dir(r.root)
		}
		rel, err := filepath.Rel(r.root, abs)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", p, err)
		}
		files = []string{filepath.ToSlash(rel)}
	}
	if r.opts.Open == nil {
		root := r.root
		r.opts.Open = func(rel string) (io.ReadCloser, error) {
			return os.Open(filepath.Join(root, filepath.FromSlash(rel)))
		}
	}
	r.b = newBuilder(format, r.root)
	r.b.maxValue = opts.MaxValue
	switch format {
	case FormatCOCO:
		err = r.readCOCODir(files)
	case FormatRefCOCO:
		err = r.readRefCOCODir(files)
	case FormatVG:
		if files != nil {
			return nil, fmt.Errorf("%w: vg needs a directory, got file %s", ErrFormat, p)
		}
		err = r.readVGDir()
	case FormatFlickr30k:
		if files != nil {
			return nil, fmt.Errorf("%w: flickr30k needs a directory, got file %s", ErrFormat, p)
		}
		err = r.readFlickrDir()
	case FormatODVG:
		err = r.readODVGDir(files)
	case FormatPOPE:
		err = r.readPOPEDir(files)
	case FormatLLaVA:
		err = r.readLLaVADir(files)
	case FormatScenes:
		if files != nil {
			return nil, fmt.Errorf("%w: scenes needs a directory, got file %s", ErrFormat, p)
		}
		err = r.readScenesDir()
	default:
		return nil, fmt.Errorf("%w: unknown format %q (want one of %s)", ErrFormat, format, strings.Join(Formats, ", "))
	}
	if err != nil {
		return nil, err
	}
	return &Result{
		Dataset: r.b.ds, Files: r.files, Rejected: r.b.rejected, srcs: r.b.srcs,
		Questions: r.b.questions, Instructions: r.b.instructions, Extra: r.b.extra, instructionSrc: r.b.instructionSrc,
	}, nil
}

// run carries one Read.
type run struct {
	ctx   context.Context
	opts  Options
	root  string
	b     *builder
	files []string
}

// open opens an annotation file and remembers it for Result.Files; a
// gzip-compressed file (by its magic bytes, whatever its name) is
// decompressed as it is read, up to Options.MaxDecompressed.
func (r *run) open(rel string) (io.ReadCloser, error) {
	if err := r.ctx.Err(); err != nil {
		return nil, err
	}
	f, err := r.opts.Open(rel)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", rel, err)
	}
	r.files = append(r.files, rel)
	r.b.setFile(rel)
	br := bufio.NewReaderSize(f, 64<<10)
	magic, _ := br.Peek(4)
	if string(magic) == "PK\x03\x04" {
		f.Close()
		return nil, fmt.Errorf("%w: %s is a ZIP archive: unpack it and ingest what it holds", ErrFormat, rel)
	}
	if len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %s: gzip header: %v", ErrFormat, rel, err)
		}
		return &gzipFile{zr: zr, f: f, rel: rel, left: r.opts.MaxDecompressed}, nil
	}
	return struct {
		io.Reader
		io.Closer
	}{br, f}, nil
}

// gzipFile decompresses an annotation file, failing once it expands past
// its limit.
type gzipFile struct {
	zr   *gzip.Reader
	f    io.Closer
	rel  string
	left int64
	max  int64
}

func (g *gzipFile) Read(p []byte) (int, error) {
	if g.max == 0 {
		g.max = g.left
	}
	if g.left <= 0 {
		// One byte more tells a file of exactly the limit from a larger one.
		var one [1]byte
		if n, _ := g.zr.Read(one[:]); n == 0 {
			return 0, io.EOF
		}
		return 0, fmt.Errorf("%w: %s decompresses to more than %d bytes (the limit against decompression bombs)", ErrFormat, g.rel, g.max)
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n, err := g.zr.Read(p)
	g.left -= int64(n)
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: %s: gzip: %v", ErrFormat, g.rel, err)
	}
	return n, err
}

func (g *gzipFile) Close() error {
	g.zr.Close()
	return g.f.Close()
}

// withFile opens rel, calls fn, and closes it. Errors name the file.
func (r *run) withFile(rel string, fn func(io.Reader) error) error {
	f, err := r.open(rel)
	if err != nil {
		return err
	}
	err = fn(f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", rel, cerr)
	}
	if err != nil && !strings.Contains(err.Error(), rel) {
		err = fmt.Errorf("read %s: %w", rel, err)
	}
	return err
}

// isDir reports whether rel (slash path under root) is a directory.
func (r *run) isDir(rel string) bool {
	st, err := os.Stat(filepath.Join(r.root, filepath.FromSlash(rel)))
	return err == nil && st.IsDir()
}

// exists reports whether rel (slash path under root) exists.
func (r *run) exists(rel string) bool {
	_, err := os.Stat(filepath.Join(r.root, filepath.FromSlash(rel)))
	return err == nil
}

// glob lists regular files directly in dir (slash, relative to root) whose
// names satisfy match, sorted. Symbolic links to regular files count (trees
// of links are common on shared storage); match sees the link's name.
func (r *run) glob(dir string, match func(name string) bool) []string {
	full := filepath.Join(r.root, filepath.FromSlash(dir))
	entries, err := os.ReadDir(full)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if !match(e.Name()) {
			continue
		}
		regular := e.Type().IsRegular()
		if e.Type()&fs.ModeSymlink != 0 {
			st, err := os.Stat(filepath.Join(full, e.Name()))
			regular = err == nil && st.Mode().IsRegular()
		}
		if regular {
			out = append(out, path.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out
}

// hasExt reports whether name ends in ext, or in ext plus ".gz" (read
// transparently).
func hasExt(name, ext string) bool {
	return strings.HasSuffix(name, ext) || strings.HasSuffix(name, ext+".gz")
}

// trimExt removes ext (and a ".gz" after it) from name.
func trimExt(name, ext string) string {
	return strings.TrimSuffix(strings.TrimSuffix(name, ".gz"), ext)
}

// imageDir picks the first candidate directory that exists under the root,
// or fallback when none does (so that missing files are reported at the
// conventional place); Options.ImageDir wins over both.
func (r *run) imageDir(fallback string, candidates ...string) string {
	if r.opts.ImageDir != "" {
		return strings.Trim(filepath.ToSlash(r.opts.ImageDir), "/")
	}
	for _, c := range candidates {
		if r.isDir(c) {
			return c
		}
	}
	return fallback
}

// joinFile joins an image directory and a file name from an annotation
// without cleaning: the validator must see any ".." the annotation held.
func joinFile(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// builder accumulates one dataset and its rejects.
type builder struct {
	ds           *dataset.Dataset
	rejected     []Reject
	file         string
	line         int // current line of a line-oriented file, else 0
	srcs         []source
	questions    []Question
	instructions []model.Record
	// instructionSrc is where each instruction record came from.
	instructionSrc []recordPos
	extra          Extra
	maxValue       int
}

func newBuilder(format, root string) *builder {
	return &builder{ds: &dataset.Dataset{Format: format, Root: root}, maxValue: DefaultMaxValue}
}

// setFile starts a run of records read from file.
func (b *builder) setFile(file string) {
	b.file, b.line = file, 0
	b.srcs = append(b.srcs, source{file: file, start: [5]int{
		len(b.ds.Images), len(b.ds.Objects), len(b.ds.Refs), len(b.ds.Relations), len(b.ds.Regions),
	}})
}

// markLines records b.line for the records appended since the last call,
// for line-oriented readers.
func (b *builder) markLines() {
	if len(b.srcs) == 0 {
		return
	}
	sg := &b.srcs[len(b.srcs)-1]
	for k, n := range [5]int{len(b.ds.Images), len(b.ds.Objects), len(b.ds.Refs), len(b.ds.Relations), len(b.ds.Regions)} {
		for len(sg.lines[k]) < n-sg.start[k] {
			sg.lines[k] = append(sg.lines[k], int32(b.line))
		}
	}
}

func (b *builder) reject(kind, id, reason string) {
	b.rejected = append(b.rejected, Reject{Kind: kind, ID: id, File: b.file, Line: b.line, Reason: reason})
}

// flexID is an id written as a JSON number or string, kept as text.
type flexID string

func (f *flexID) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexID(s)
		return nil
	}
	if string(b) == "null" {
		*f = ""
		return nil
	}
	if len(b) == 0 || !(b[0] == '-' || (b[0] >= '0' && b[0] <= '9')) {
		return &json.UnmarshalTypeError{Value: "id " + string(b), Type: reflect.TypeFor[string]()}
	}
	// Integral floats (COCO exports from some tools write 12.0) become "12".
	s := string(b)
	if strings.ContainsAny(s, ".eE") {
		v, err := strconv.ParseFloat(s, 64)
		if err == nil && v == math.Trunc(v) && math.Abs(v) < 1<<53 {
			s = strconv.FormatInt(int64(v), 10)
		}
	}
	*f = flexID(s)
	return nil
}

// isRecordError tells a per-record decode problem (the value was consumed,
// the stream is still in sync) from a fatal one.
func isRecordError(err error) bool {
	var te *json.UnmarshalTypeError
	return errors.As(err, &te)
}

// formatErr wraps a fatal decode error of file as ErrFormat (syntax errors,
// truncation) or passes I/O and context errors through.
func formatErr(file string, err error) error {
	var se *json.SyntaxError
	if errors.Is(err, ErrFormat) {
		return err // already says which file and what
	}
	if errors.Is(err, errResults) {
		return fmt.Errorf("%w: %s is %v", ErrFormat, file, err)
	}
	if errors.Is(err, errTooLarge) {
		return fmt.Errorf("%w: decode %s: %v", ErrFormat, file, err)
	}
	if errors.As(err, &se) {
		return fmt.Errorf("%w: decode %s: malformed JSON at byte %d: %v", ErrFormat, file, se.Offset, err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, errNotJSONShape) || errors.Is(err, errJSON) ||
		errors.Is(err, pickle.ErrMalformed) {
		return fmt.Errorf("%w: decode %s: %v", ErrFormat, file, err)
	}
	return fmt.Errorf("decode %s: %w", file, err)
}

var errNotJSONShape = errors.New("unexpected JSON shape")

// expectDelim reads one token and checks it is the delimiter d.
func expectDelim(dec *json.Decoder, d json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if got, ok := tok.(json.Delim); !ok || got != d {
		return fmt.Errorf("%w: want %q, got %v", errNotJSONShape, d, tok)
	}
	return nil
}

// walkObject reads a JSON object and calls fn for each key with the decoder
// positioned at its value; fn must consume the value.
func walkObject(dec *json.Decoder, fn func(key string) error) error {
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%w: object key %v", errNotJSONShape, tok)
		}
		if err := fn(key); err != nil {
			return err
		}
	}
	return expectDelim(dec, '}')
}

// walkArray reads a JSON array and calls fn for each element; fn must
// consume exactly one value (typically dec.Decode).
func walkArray(ctx context.Context, dec *json.Decoder, fn func(i int) error) error {
	if err := expectDelim(dec, '['); err != nil {
		return err
	}
	for i := 0; dec.More(); i++ {
		if i&1023 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if err := fn(i); err != nil {
			return err
		}
	}
	return expectDelim(dec, ']')
}

// skipValue consumes one value token by token, keeping nothing.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				depth++
			default:
				depth--
			}
		}
		if depth == 0 {
			return nil
		}
	}
}

// xywh converts a [x, y, w, h] array to a pixel xyxy box.
func xywh(v []float64) (dataset.Box, error) {
	if len(v) != 4 {
		return dataset.Box{}, fmt.Errorf("box has %d numbers, want 4", len(v))
	}
	for _, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return dataset.Box{}, errors.New("box has a non-finite number")
		}
	}
	return dataset.Box{X1: v[0], Y1: v[1], X2: v[0] + v[2], Y2: v[1] + v[3]}, nil
}

// xyxy converts a [x1, y1, x2, y2] array to a box.
func xyxy(v []float64) (dataset.Box, error) {
	if len(v) != 4 {
		return dataset.Box{}, fmt.Errorf("box has %d numbers, want 4", len(v))
	}
	for _, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return dataset.Box{}, errors.New("box has a non-finite number")
		}
	}
	return dataset.Box{X1: v[0], Y1: v[1], X2: v[2], Y2: v[3]}, nil
}

// dim converts an image dimension to pixels (0 when absent or invalid; the
// validator then takes it from the image header or rejects the image).
func dim(v float64) int {
	if math.IsNaN(v) || v <= 0 || v > 1<<30 || v != math.Trunc(v) {
		return 0
	}
	return int(v)
}

// splitOf derives a split name from a file or directory name such as
// "instances_val2017.json" or "coco2017_train_odvg.jsonl": the first of
// train, val, test, heldout, minival, testA, testB, found as a word; else
// fallback. Trailing years are dropped ("val2017" -> "val").
func splitOf(name, fallback string) string {
	base := strings.TrimSuffix(path.Base(name), path.Ext(name))
	base = strings.TrimPrefix(base, "instances_")
	fields := strings.FieldsFunc(base, func(r rune) bool { return r == '_' || r == '.' || r == ' ' })
	for _, f := range fields {
		w := strings.TrimRight(f, "0123456789")
		switch strings.ToLower(w) {
		case "train", "val", "test", "heldout", "minival", "test-dev":
			return strings.ToLower(w)
		case "testa":
			return "testA"
		case "testb":
			return "testB"
		}
	}
	return fallback
}

// SourceBox returns how format writes a box, for messages that must show
// the file's own values rather than the converted pixel xyxy box: COCO,
// RefCOCO, VG and the scene world "bbox [x, y, w, h]", Flickr30k
// "xmin/ymin/xmax/ymax" (1-based, inclusive), the others pixel xyxy.
// Values are printed to 10 significant digits, which gives back what the
// file held for the decimals annotation files use.
func SourceBox(format string) func(dataset.Box) string {
	g := func(v float64) string { return strconv.FormatFloat(v, 'g', 10, 64) }
	switch format {
	case FormatCOCO, FormatRefCOCO, FormatScenes:
		return func(b dataset.Box) string {
			return "bbox [" + g(b.X1) + ", " + g(b.Y1) + ", " + g(b.X2-b.X1) + ", " + g(b.Y2-b.Y1) + "]"
		}
	case FormatVG:
		return func(b dataset.Box) string {
			return "x " + g(b.X1) + ", y " + g(b.Y1) + ", w " + g(b.X2-b.X1) + ", h " + g(b.Y2-b.Y1)
		}
	case FormatFlickr30k:
		return func(b dataset.Box) string {
			return "xmin " + g(b.X1+1) + ", ymin " + g(b.Y1+1) + ", xmax " + g(b.X2) + ", ymax " + g(b.Y2)
		}
	default:
		return func(b dataset.Box) string {
			return "bbox [" + g(b.X1) + ", " + g(b.Y1) + ", " + g(b.X2) + ", " + g(b.Y2) + "]"
		}
	}
}
