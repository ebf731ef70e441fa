package readers

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// ODVG (Open GroundingDINO's "object detection / visual grounding" jsonl):
// one JSON object per line,
//   {"filename", "height", "width",
//    "detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 0, "category": "dog"}]},
//    "grounding": {"caption": "...", "regions": [{"bbox": [x1, y1, x2, y2] or [[...], ...], "phrase": "..."}]}}
// Detection files come with a label map ({"0": "person", ...}, any
// *label_map*.json beside the jsonl) for instances without "category".
// Boxes are xyxy pixels. Image ids are the file names; objects are
// "<filename>#<k>", regions "<filename>#r<k>[.<m>]" (a region with several
// boxes becomes one region per box); the grounding caption goes to
// Result.Extra.Captions. A file cut in the middle of its last line fails
// (errTruncated). The split comes from the file name
// (e.g. coco2017_train_odvg.jsonl -> train), default train.

// maxODVGLine bounds one jsonl line (a GRIT image with many regions stays far below).
const maxODVGLine = 64 << 20

type odvgLine struct {
	Filename  string  `json:"filename"`
	Height    float64 `json:"height"`
	Width     float64 `json:"width"`
	Detection *struct {
		Instances []struct {
			BBox     []float64 `json:"bbox"`
			Label    *flexID   `json:"label"`
			Category string    `json:"category"`
		} `json:"instances"`
	} `json:"detection"`
	Grounding *struct {
		Caption string `json:"caption"`
		Regions []struct {
			BBox   json.RawMessage `json:"bbox"`
			Phrase string          `json:"phrase"`
		} `json:"regions"`
	} `json:"grounding"`
}

func (r *run) readODVGDir(files []string) error {
	isJSONL := func(n string) bool { return hasExt(n, ".jsonl") }
	if files == nil {
		files = append(r.glob("", isJSONL), r.glob("annotations", isJSONL)...)
	}
	if len(files) == 0 {
		return fmt.Errorf("%w: no *.jsonl (ODVG) under %s", ErrFormat, r.root)
	}
	labels := map[string]string{}
	isMap := func(n string) bool { return strings.Contains(n, "label_map") && hasExt(n, ".json") }
	for _, rel := range append(r.glob("", isMap), r.glob("annotations", isMap)...) {
		err := r.withFile(rel, func(f io.Reader) error {
			var m map[string]string
			if err := json.NewDecoder(f).Decode(&m); err != nil {
				return fmt.Errorf("%w: decode label map %s: %v", ErrFormat, rel, err)
			}
			for k, v := range m {
				labels[k] = v
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	imgDir := r.imageDir("", "images")
	for _, rel := range files {
		split := splitOf(rel, dataset.SplitTrain)
		err := r.withFile(rel, func(f io.Reader) error {
			return decodeODVG(r.ctx, f, split, imgDir, labels, r.b)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// decodeODVG reads one jsonl file; a bad line rejects that line's image.
func decodeODVG(ctx context.Context, f io.Reader, split, imgDir string, labels map[string]string, b *builder) error {
	return scanJSONL(ctx, f, maxODVGLine, KindImage, b, func(line []byte) {
		addODVGLine(b, line, b.line, split, imgDir, labels)
	})
}

// errTruncated marks a JSON Lines file whose last line was cut.
var errTruncated = errors.New("truncated")

// scanJSONL calls fn with each non-blank line of a JSON Lines file, with
// b.line set to its number; records fn appends are marked with it; a line
// over limit is rejected as a record of kind. A last
// line without a newline that is an incomplete JSON value means the file
// was cut: that fails the whole file, since whatever followed is lost.
func scanJSONL(ctx context.Context, f io.Reader, limit int, kind string, b *builder, fn func(line []byte)) error {
	br := bufio.NewReaderSize(f, 256<<10)
	var off int64
	for n := 1; ; n++ {
		if n&1023 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		line, tooLong, size, err := readLine(br, limit)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read %s line %d: %w", b.file, n, err)
		}
		b.line = n
		switch {
		case tooLong:
			b.reject(kind, "line "+strconv.Itoa(n), "line longer than "+strconv.Itoa(limit)+" bytes")
		case len(bytes.TrimSpace(line)) == 0:
		case errors.Is(err, io.EOF) && incompleteJSON(line):
			return fmt.Errorf("%w: %s is %w: its last line %d (from byte %d, %d bytes) ends in the middle of a JSON value, without a newline",
				ErrFormat, b.file, errTruncated, n, off, size)
		default:
			fn(line)
			b.markLines()
		}
		off += size
		if errors.Is(err, io.EOF) {
			b.line = 0
			return nil
		}
	}
}

// incompleteJSON reports whether line is the beginning of a JSON value
// that the end of input cut short.
func incompleteJSON(line []byte) bool {
	var v json.RawMessage
	err := json.NewDecoder(bytes.NewReader(line)).Decode(&v)
	return errors.Is(err, io.ErrUnexpectedEOF)
}

// readLine reads one line without its newline; a line over max is drained
// and reported as too long. size counts the bytes consumed, newline included.
func readLine(br *bufio.Reader, limit int) ([]byte, bool, int64, error) {
	var out []byte
	var size int64
	tooLong := false
	for {
		frag, err := br.ReadSlice('\n')
		size += int64(len(frag))
		if !tooLong {
			if len(out)+len(frag) > limit {
				tooLong, out = true, nil
			} else {
				out = append(out, frag...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == nil {
			out = out[:max(0, len(out)-1)]
		}
		return out, tooLong, size, err
	}
}

func addODVGLine(b *builder, line []byte, n int, split, imgDir string, labels map[string]string) {
	var rec odvgLine
	if err := json.Unmarshal(line, &rec); err != nil {
		b.reject(KindImage, "line "+strconv.Itoa(n), "malformed jsonl line: "+err.Error())
		return
	}
	if strings.TrimSpace(rec.Filename) == "" {
		b.reject(KindImage, "line "+strconv.Itoa(n), "line without filename")
		return
	}
	id := rec.Filename
	b.ds.Images = append(b.ds.Images, dataset.Image{
		ID: id, File: joinFile(imgDir, rec.Filename), Width: dim(rec.Width), Height: dim(rec.Height), Split: split,
	})
	if rec.Detection != nil {
		for k, in := range rec.Detection.Instances {
			oid := id + "#" + strconv.Itoa(k)
			box, err := xyxy(in.BBox)
			if err != nil {
				b.reject(KindObject, oid, err.Error())
				continue
			}
			cat := strings.TrimSpace(in.Category)
			if cat == "" && in.Label != nil {
				cat = labels[string(*in.Label)]
				if cat == "" {
					b.reject(KindObject, oid, fmt.Sprintf("unknown category id %q (no label map entry)", string(*in.Label)))
					continue
				}
			}
			if cat == "" {
				b.reject(KindObject, oid, "instance without category or label")
				continue
			}
			b.ds.Objects = append(b.ds.Objects, dataset.Object{ID: oid, ImageID: id, Category: cat, Box: box})
		}
	}
	if rec.Grounding != nil {
		if c := strings.TrimSpace(rec.Grounding.Caption); c != "" {
			if b.extra.Captions == nil {
				b.extra.Captions = map[string]string{}
			}
			b.extra.Captions[id] = rec.Grounding.Caption
		}
		for k, rg := range rec.Grounding.Regions {
			rid := id + "#r" + strconv.Itoa(k)
			boxes, err := odvgBoxes(rg.BBox)
			if err != nil {
				b.reject(KindRegion, rid, err.Error())
				continue
			}
			for m, box := range boxes {
				id2 := rid
				if len(boxes) > 1 {
					id2 = rid + "." + strconv.Itoa(m)
				}
				b.ds.Regions = append(b.ds.Regions, dataset.Region{ID: id2, ImageID: id, Phrase: rg.Phrase, Box: box})
			}
		}
	}
}

// odvgBoxes accepts one xyxy box or a list of them.
func odvgBoxes(raw json.RawMessage) ([]dataset.Box, error) {
	var one []float64
	if err := json.Unmarshal(raw, &one); err == nil {
		box, err := xyxy(one)
		if err != nil {
			return nil, err
		}
		return []dataset.Box{box}, nil
	}
	var many [][]float64
	if err := json.Unmarshal(raw, &many); err != nil || len(many) == 0 {
		return nil, errors.New("bbox is neither [x1,y1,x2,y2] nor a list of them")
	}
	out := make([]dataset.Box, 0, len(many))
	for _, v := range many {
		box, err := xyxy(v)
		if err != nil {
			return nil, err
		}
		out = append(out, box)
	}
	return out, nil
}
