// Package validate checks a dataset that a reader produced, record by
// record, the same way for every format: good records are kept, bad ones are
// removed and listed with the reason, and images are checked on disk
// (existence, containment in the root, PNG/JPEG/GIF header, pixel limit,
// size) and content-hashed.
//
// Decisions:
//   - A box that overshoots the image by at most BoxTolerance pixels
//     (default 1: rounding and the inclusive-corner conventions of VOC-style
//     sources put boxes at W+1) is clipped and counted in Report.Clipped;
//     any further overshoot rejects the record ("box outside image").
//   - Zero or negative area, before or after clipping, rejects the record.
//   - Text must be UTF-8 without NUL; a U+FFFD counts as an encoding error,
//     because JSON decoders turn invalid bytes into U+FFFD.
//   - Image paths are judged lexically: absolute paths, "..", backslashes or
//     NUL in an annotation's file name are rejected as path traversal.
//     Symbolic links inside the root are the operator's choice and are
//     followed (a common way to share one COCO image directory).
//   - A rejected image takes its objects, refs, relations and regions with
//     it; a rejected object takes its refs and relations. Every cascaded
//     record is listed too, so the bad fraction counts all lost records.
//   - The first record with an id wins; later duplicates are rejected.
package validate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	_ "image/gif"  // register GIF for DecodeConfig
	_ "image/jpeg" // register JPEG for DecodeConfig
	_ "image/png"  // register PNG for DecodeConfig
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/services/ingest/readers"
)

// Reasons (Reject.Reason starts with one of these; details may follow ": ").
const (
	ReasonDuplicateID    = "duplicate id"
	ReasonNonUTF8        = "non-UTF-8 text"
	ReasonPathTraversal  = "path traversal outside dataset root"
	ReasonMissingFile    = "missing image file"
	ReasonNotRegular     = "image path is not a regular file"
	ReasonCorruptImage   = "corrupt image"
	ReasonImageTooLarge  = "image too large"
	ReasonSizeMismatch   = "image size mismatch"
	ReasonSizeUnknown    = "image size unknown"
	ReasonUnknownImage   = "unknown image id"
	ReasonImageRejected  = "image rejected"
	ReasonUnknownObject  = "unknown object id"
	ReasonObjectRejected = "object rejected"
	ReasonImageMismatch  = "image does not match the object's image"
	ReasonBoxOutside     = "box outside image"
	ReasonBoxArea        = "zero or negative box area"
	ReasonBoxNonFinite   = "box has a non-finite coordinate"
	ReasonEmptyText      = "empty text"
)

// Options configure a validation. Zero fields take defaults.
type Options struct {
	// Root is the dataset root that image paths are relative to.
	Root string
	// SkipImageFiles does not open image files: no existence, header or
	// hash checks (annotation-only ingests and the 118k-image benchmark,
	// whose generated COCO file has no images). Image sizes must then come
	// from the annotations.
	SkipImageFiles bool
	// MaxImagePixels rejects images whose header declares more pixels
	// (default 100 megapixels).
	MaxImagePixels int64
	// MaxImageBytes rejects larger image files (default 256 MiB).
	MaxImageBytes int64
	// BoxTolerance is the overshoot in pixels that is clipped rather than
	// rejected (0 means the default, 1; a negative value means none).
	BoxTolerance float64
	// Workers check image files in parallel (default GOMAXPROCS).
	Workers int
	// Progress, when set, is called as image files are checked.
	Progress func(done, total int64)
	// Where names the annotation file (and line) the i-th record of kind
	// came from, i counting the records as the reader produced them
	// (readers.Result.Where). nil: rejects carry no place.
	Where func(kind string, i int) (file string, line int)
	// BoxText writes a box as the source file wrote it (readers.SourceBox),
	// so that a reject shows the file's own values. nil: pixel xyxy.
	BoxText func(dataset.Box) string
}

// WithDefaults fills zero fields; it is idempotent.
func (o Options) WithDefaults() Options {
	if o.MaxImagePixels <= 0 {
		o.MaxImagePixels = 100_000_000
	}
	if o.MaxImageBytes <= 0 {
		o.MaxImageBytes = 256 << 20
	}
	if o.BoxTolerance == 0 {
		o.BoxTolerance = 1
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	return o
}

// Report is the outcome of a validation.
type Report struct {
	// Records counts every record seen: kept plus rejected (reader rejects
	// included).
	Records int64 `json:"records"`
	// Rejected lists each rejected record with its reason.
	Rejected []readers.Reject `json:"rejected"`
	// Clipped counts boxes clipped within the tolerance.
	Clipped int64 `json:"clipped"`
	// ImageBytes holds the size of every kept image file by path (empty
	// with SkipImageFiles).
	ImageBytes map[string]int64 `json:"-"`
}

// BadFraction is the rejected share of all records.
func (r *Report) BadFraction() float64 {
	if r.Records == 0 {
		return 0
	}
	return float64(len(r.Rejected)) / float64(r.Records)
}

// ByReason counts rejects per reason (the part before any ": ").
func (r *Report) ByReason() map[string]int64 {
	out := map[string]int64{}
	for _, rj := range r.Rejected {
		reason, _, _ := strings.Cut(rj.Reason, ": ")
		out[reason]++
	}
	return out
}

// Dataset validates ds in place (rejected records are removed, image sizes
// taken from headers where the annotations lack them, image hashes filled
// in, boxes within tolerance clipped) and reports. prior are the reader's
// rejects, carried into the report.
func Dataset(ctx context.Context, ds *dataset.Dataset, prior []readers.Reject, opts Options) (*Report, error) {
	opts = opts.WithDefaults()
	rep := &Report{Rejected: append([]readers.Reject(nil), prior...)}
	rep.Records = int64(len(prior) + len(ds.Images) + len(ds.Objects) + len(ds.Refs) + len(ds.Relations) + len(ds.Regions))
	rep.ImageBytes = map[string]int64{}
	v := &validator{ds: ds, rep: rep, opts: opts, sizes: make([]int64, len(ds.Images))}
	if err := v.checkImages(ctx); err != nil {
		return nil, err
	}
	v.checkObjects()
	v.checkRefs()
	v.checkRelations()
	v.checkRegions()
	return rep, nil
}

type validator struct {
	ds   *dataset.Dataset
	rep  *Report
	opts Options
	// Kept records by id, and ids of rejected ones (for cascade reasons).
	images     map[string]*dataset.Image
	badImages  map[string]bool
	objects    map[string]*dataset.Object
	badObjects map[string]bool
	sizes      []int64 // file bytes per input image index
}

// reject records that the i-th record of kind (as read) was refused.
func (v *validator) reject(kind string, i int, id, reason string) {
	rj := readers.Reject{Kind: kind, ID: id, Reason: reason}
	if v.opts.Where != nil {
		rj.File, rj.Line = v.opts.Where(kind, i)
	}
	v.rep.Rejected = append(v.rep.Rejected, rj)
}

// boxText writes b as the source file did, or as pixel xyxy.
func (v *validator) boxText(b dataset.Box) string {
	if v.opts.BoxText != nil {
		return v.opts.BoxText(b)
	}
	return fmt.Sprintf("[%g, %g, %g, %g]", b.X1, b.Y1, b.X2, b.Y2)
}

// ValidText reports whether s is acceptable text.
func ValidText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, utf8.RuneError) && strings.IndexByte(s, 0) < 0
}

// SafePath reports whether an annotation's relative file path stays inside
// the root.
func SafePath(p string) bool {
	if p == "" || strings.ContainsAny(p, "\\\x00") || path.IsAbs(p) || filepath.IsAbs(p) {
		return false
	}
	c := path.Clean(p)
	return c != ".." && !strings.HasPrefix(c, "../") && c != "."
}

func (v *validator) checkImages(ctx context.Context) error {
	ds := v.ds
	v.images = make(map[string]*dataset.Image, len(ds.Images))
	v.badImages = map[string]bool{}
	// Lexical checks and duplicates first, serially.
	keep := make([]bool, len(ds.Images))
	seenIDs := make(map[string]bool, len(ds.Images))
	var toCheck []int
	for i := range ds.Images {
		im := &ds.Images[i]
		if seenIDs[im.ID] {
			v.reject(readers.KindImage, i, im.ID, ReasonDuplicateID)
			continue // the first record of this id stands
		}
		seenIDs[im.ID] = true
		switch {
		case !ValidText(im.ID) || !ValidText(im.File) || !ValidText(im.Split):
			v.reject(readers.KindImage, i, im.ID, ReasonNonUTF8)
		case !SafePath(im.File):
			v.reject(readers.KindImage, i, im.ID, ReasonPathTraversal+": "+im.File)
		default:
			keep[i] = true
			v.images[im.ID] = im
			toCheck = append(toCheck, i)
			continue
		}
		v.badImages[im.ID] = true
	}
	// Files: in parallel, results by index so the report order is stable.
	reasons := make([]string, len(ds.Images))
	if !v.opts.SkipImageFiles {
		if err := v.checkFiles(ctx, toCheck, reasons); err != nil {
			return err
		}
	}
	out := ds.Images[:0]
	for i := range ds.Images {
		im := ds.Images[i]
		if !keep[i] {
			continue
		}
		if reasons[i] == "" && (im.Width <= 0 || im.Height <= 0) {
			reasons[i] = ReasonSizeUnknown
		}
		if reasons[i] != "" {
			v.reject(readers.KindImage, i, im.ID, reasons[i])
			delete(v.images, im.ID)
			v.badImages[im.ID] = true
			continue
		}
		if im.SHA256 != "" {
			v.rep.ImageBytes[im.File] = v.sizes[i]
		}
		out = append(out, im)
	}
	clear(ds.Images[len(out):])
	ds.Images = out
	for i := range ds.Images {
		v.images[ds.Images[i].ID] = &ds.Images[i]
	}
	return nil
}

func (v *validator) checkFiles(ctx context.Context, idx []int, reasons []string) error {
	ds := v.ds
	var next, done atomic.Int64
	total := int64(len(idx))
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	var progressMu sync.Mutex
	for range min(v.opts.Workers, max(1, len(idx))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := next.Add(1) - 1
				if k >= total {
					return
				}
				if err := ctx.Err(); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				i := idx[k]
				reasons[i] = v.checkFile(&ds.Images[i], &v.sizes[i])
				if n := done.Add(1); v.opts.Progress != nil && (n%256 == 0 || n == total) {
					progressMu.Lock()
					v.opts.Progress(n, total)
					progressMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// checkFile opens one image, checks its header and hashes it; it returns a
// reject reason or "" and fills in the size (when absent) and SHA256.
func (v *validator) checkFile(im *dataset.Image, size *int64) string {
	p := filepath.Join(v.opts.Root, filepath.FromSlash(path.Clean(im.File)))
	st, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return ReasonMissingFile + ": " + im.File
	}
	if err != nil {
		return ReasonMissingFile + ": " + err.Error()
	}
	if !st.Mode().IsRegular() {
		return ReasonNotRegular + ": " + im.File
	}
	if st.Size() > v.opts.MaxImageBytes {
		return fmt.Sprintf("%s: %d bytes > %d", ReasonImageTooLarge, st.Size(), v.opts.MaxImageBytes)
	}
	f, err := os.Open(p)
	if err != nil {
		return ReasonMissingFile + ": " + err.Error()
	}
	defer f.Close()
	h := sha256.New()
	cfg, _, err := image.DecodeConfig(io.TeeReader(f, h))
	if err != nil {
		return ReasonCorruptImage + ": " + err.Error()
	}
	if cfg.Width <= 0 || cfg.Height <= 0 || int64(cfg.Width)*int64(cfg.Height) > v.opts.MaxImagePixels {
		return fmt.Sprintf("%s: %dx%d pixels (limit %d)", ReasonImageTooLarge, cfg.Width, cfg.Height, v.opts.MaxImagePixels)
	}
	if im.Width > 0 && im.Height > 0 && (im.Width != cfg.Width || im.Height != cfg.Height) {
		return fmt.Sprintf("%s: annotation %dx%d, file %dx%d", ReasonSizeMismatch, im.Width, im.Height, cfg.Width, cfg.Height)
	}
	if _, err := io.Copy(h, f); err != nil {
		return ReasonCorruptImage + ": read: " + err.Error()
	}
	im.Width, im.Height = cfg.Width, cfg.Height
	im.SHA256 = hex.EncodeToString(h.Sum(nil))
	*size = st.Size()
	return ""
}

// box checks and clips b against image im; it returns a reason or "".
func (v *validator) box(b *dataset.Box, im *dataset.Image) (string, bool) {
	for _, x := range []float64{b.X1, b.Y1, b.X2, b.Y2} {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return ReasonBoxNonFinite, false
		}
	}
	if b.X2 <= b.X1 || b.Y2 <= b.Y1 {
		return fmt.Sprintf("%s: %s", ReasonBoxArea, v.boxText(*b)), false
	}
	w, h, tol := float64(im.Width), float64(im.Height), max(0, v.opts.BoxTolerance)
	if b.X1 < -tol || b.Y1 < -tol || b.X2 > w+tol || b.Y2 > h+tol {
		return fmt.Sprintf("%s: %s in %dx%d", ReasonBoxOutside, v.boxText(*b), im.Width, im.Height), false
	}
	c := dataset.Box{X1: max(b.X1, 0), Y1: max(b.Y1, 0), X2: min(b.X2, w), Y2: min(b.Y2, h)}
	if c.X2 <= c.X1 || c.Y2 <= c.Y1 {
		return fmt.Sprintf("%s: %s after clipping to %dx%d", ReasonBoxArea, v.boxText(*b), im.Width, im.Height), false
	}
	clipped := c != *b
	*b = c
	return "", clipped
}

// imageOf resolves a record's image id, or returns the reject reason.
func (v *validator) imageOf(id string) (*dataset.Image, string) {
	if im := v.images[id]; im != nil {
		return im, ""
	}
	if v.badImages[id] {
		return nil, ReasonImageRejected
	}
	return nil, ReasonUnknownImage + ": " + id
}

func (v *validator) checkObjects() {
	ds := v.ds
	v.badObjects = map[string]bool{}
	// Per-record checks in parallel (read-only maps, each worker writes its
	// own indexes), then duplicates and compaction in order.
	reasons := make([]string, len(ds.Objects))
	clipped := make([]bool, len(ds.Objects))
	parallel(len(ds.Objects), v.opts.Workers, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			o := &ds.Objects[i]
			im, r := v.imageOf(o.ImageID)
			switch {
			case !ValidText(o.ID) || !ValidText(o.Category) || !validAttrs(o.Attributes):
				reasons[i] = ReasonNonUTF8
			case strings.TrimSpace(o.Category) == "":
				reasons[i] = ReasonEmptyText + ": category"
			case im == nil:
				reasons[i] = r
			default:
				reasons[i], clipped[i] = v.box(&o.Box, im)
			}
		}
	})
	seenIDs := make(map[string]bool, len(ds.Objects))
	out := ds.Objects[:0]
	for i, o := range ds.Objects {
		if seenIDs[o.ID] {
			v.reject(readers.KindObject, i, o.ID, ReasonDuplicateID)
			continue // the first record of this id stands
		}
		seenIDs[o.ID] = true
		if reasons[i] != "" {
			v.reject(readers.KindObject, i, o.ID, reasons[i])
			v.badObjects[o.ID] = true
			continue
		}
		if clipped[i] {
			v.rep.Clipped++
		}
		out = append(out, o)
	}
	clear(ds.Objects[len(out):])
	ds.Objects = out
	if len(ds.Refs)+len(ds.Relations) == 0 {
		return // nothing refers to objects: skip the index (860k entries for COCO train)
	}
	v.objects = make(map[string]*dataset.Object, len(ds.Objects))
	for i := range ds.Objects {
		v.objects[ds.Objects[i].ID] = &ds.Objects[i]
	}
}

// parallel runs fn over [0, n) in up to workers contiguous chunks.
func parallel(n, workers int, fn func(lo, hi int)) {
	if n < 4096 || workers <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	step := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += step {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			fn(lo, hi)
		}(lo, min(n, lo+step))
	}
	wg.Wait()
}

func validAttrs(m map[string]string) bool {
	for k, val := range m {
		if !ValidText(k) || !ValidText(val) {
			return false
		}
	}
	return true
}

// objectOf resolves an object id that must belong to imageID.
func (v *validator) objectOf(id, imageID string) string {
	o := v.objects[id]
	switch {
	case o != nil && o.ImageID == imageID:
		return ""
	case o != nil:
		return ReasonImageMismatch + ": object " + id
	case v.badObjects[id]:
		return ReasonObjectRejected
	case v.badImages[imageID]:
		return ReasonImageRejected
	}
	return ReasonUnknownObject + ": " + id
}

func (v *validator) checkRefs() {
	ds := v.ds
	seenIDs := make(map[string]bool, len(ds.Refs))
	out := ds.Refs[:0]
	for i, r := range ds.Refs {
		if seenIDs[r.ID] {
			v.reject(readers.KindRef, i, r.ID, ReasonDuplicateID)
			continue
		}
		seenIDs[r.ID] = true
		reason := ""
		switch {
		case !ValidText(r.ID) || !ValidText(r.Split) || !allValid(r.Sentences):
			reason = ReasonNonUTF8
		case len(r.Sentences) == 0:
			reason = ReasonEmptyText + ": no sentences"
		default:
			if _, rr := v.imageOf(r.ImageID); rr != "" {
				reason = rr
			} else {
				reason = v.objectOf(r.ObjectID, r.ImageID)
			}
		}
		if reason != "" {
			v.reject(readers.KindRef, i, r.ID, reason)
			continue
		}
		out = append(out, r)
	}
	clear(ds.Refs[len(out):])
	ds.Refs = out
}

func allValid(ss []string) bool {
	for _, s := range ss {
		if !ValidText(s) || strings.TrimSpace(s) == "" {
			return false
		}
	}
	return true
}

func (v *validator) checkRelations() {
	ds := v.ds
	seenIDs := make(map[string]bool, len(ds.Relations))
	out := ds.Relations[:0]
	for i, r := range ds.Relations {
		if seenIDs[r.ID] {
			v.reject(readers.KindRelation, i, r.ID, ReasonDuplicateID)
			continue
		}
		seenIDs[r.ID] = true
		reason := ""
		switch {
		case !ValidText(r.ID) || !ValidText(r.Predicate):
			reason = ReasonNonUTF8
		case strings.TrimSpace(r.Predicate) == "":
			reason = ReasonEmptyText + ": predicate"
		default:
			if _, rr := v.imageOf(r.ImageID); rr != "" {
				reason = rr
			} else if reason = v.objectOf(r.SubjectID, r.ImageID); reason == "" {
				reason = v.objectOf(r.ObjectID, r.ImageID)
			}
		}
		if reason != "" {
			v.reject(readers.KindRelation, i, r.ID, reason)
			continue
		}
		out = append(out, r)
	}
	clear(ds.Relations[len(out):])
	ds.Relations = out
}

func (v *validator) checkRegions() {
	ds := v.ds
	seenIDs := make(map[string]bool, len(ds.Regions))
	out := ds.Regions[:0]
	for i, g := range ds.Regions {
		if seenIDs[g.ID] {
			v.reject(readers.KindRegion, i, g.ID, ReasonDuplicateID)
			continue
		}
		seenIDs[g.ID] = true
		reason := ""
		im, r := v.imageOf(g.ImageID)
		switch {
		case !ValidText(g.ID) || !ValidText(g.Phrase):
			reason = ReasonNonUTF8
		case strings.TrimSpace(g.Phrase) == "":
			reason = ReasonEmptyText + ": phrase"
		case im == nil:
			reason = r
		default:
			var clipped bool
			reason, clipped = v.box(&g.Box, im)
			if clipped {
				v.rep.Clipped++
			}
		}
		if reason != "" {
			v.reject(readers.KindRegion, i, g.ID, reason)
			continue
		}
		out = append(out, g)
	}
	clear(ds.Regions[len(out):])
	ds.Regions = out
}
