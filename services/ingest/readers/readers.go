// Package readers turns annotated image collections in their published
// formats into groundmesh's internal representation (internal/dataset):
// COCO instances JSON, RefCOCO / RefCOCO+ / RefCOCOg refs (Python pickle or
// JSON), Visual Genome JSON, Flickr30k Entities, ODVG jsonl, and the built-in
// scene world (which writes COCO + RefCOCO + VG files and is read back
// through the same code).
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
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// Formats accepted by Read.
const (
	FormatCOCO      = "coco"
	FormatRefCOCO   = "refcoco"
	FormatVG        = "vg"
	FormatFlickr30k = "flickr30k"
	FormatODVG      = "odvg"
	FormatScenes    = "scenes"
)

// Formats lists every format Read accepts.
var Formats = []string{FormatCOCO, FormatRefCOCO, FormatVG, FormatFlickr30k, FormatODVG, FormatScenes}

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

// Reject is one record a reader could not convert.
type Reject struct {
	Kind   string `json:"kind"`
	ID     string `json:"id"`
	File   string `json:"file,omitempty"`
	Reason string `json:"reason"`
}

// Result is what a read produced.
type Result struct {
	Dataset *dataset.Dataset
	// Files are the annotation files read, slash-separated and relative to
	// Dataset.Root, in the order read.
	Files []string
	// Rejected lists records that could not be converted.
	Rejected []Reject
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
}

// Read reads the dataset at path (a directory, or for coco, refcoco and odvg
// also a single annotation file) in the given format.
func Read(ctx context.Context, format, p string, opts Options) (*Result, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", p, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("%w: stat %s: %v", ErrFormat, p, err)
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
	return &Result{Dataset: r.b.ds, Files: r.files, Rejected: r.b.rejected}, nil
}

// run carries one Read.
type run struct {
	ctx   context.Context
	opts  Options
	root  string
	b     *builder
	files []string
}

// open opens an annotation file and remembers it for Result.Files.
func (r *run) open(rel string) (io.ReadCloser, error) {
	if err := r.ctx.Err(); err != nil {
		return nil, err
	}
	f, err := r.opts.Open(rel)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", rel, err)
	}
	r.files = append(r.files, rel)
	r.b.file = rel
	return f, nil
}

// withFile opens rel, calls fn, and closes it.
func (r *run) withFile(rel string, fn func(io.Reader) error) error {
	f, err := r.open(rel)
	if err != nil {
		return err
	}
	err = fn(f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", rel, cerr)
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
// names satisfy match, sorted.
func (r *run) glob(dir string, match func(name string) bool) []string {
	entries, err := os.ReadDir(filepath.Join(r.root, filepath.FromSlash(dir)))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.Type().IsRegular() && match(e.Name()) {
			out = append(out, path.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out
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
	ds       *dataset.Dataset
	rejected []Reject
	file     string
}

func newBuilder(format, root string) *builder {
	return &builder{ds: &dataset.Dataset{Format: format, Root: root}}
}

func (b *builder) reject(kind, id, reason string) {
	b.rejected = append(b.rejected, Reject{Kind: kind, ID: id, File: b.file, Reason: reason})
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
	if errors.As(err, &se) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, errNotJSONShape) || errors.Is(err, errJSON) {
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
