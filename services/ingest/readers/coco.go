package readers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// COCO instances JSON (https://cocodataset.org/#format-data):
// {"images": [{"id", "file_name", "width", "height"}],
//  "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "iscrowd", ...}],
//  "categories": [{"id", "name", "supercategory"}], "info", "licenses"}.
// Boxes are xywh in pixels. The optional per-annotation "attributes" object
// (the extension CVAT and the scene world write) becomes Object.Attributes;
// iscrowd=1 becomes Attributes["iscrowd"]="1".

type cocoImage struct {
	ID       flexID  `json:"id"`
	FileName string  `json:"file_name"`
	Width    float64 `json:"width"`
	Height   float64 `json:"height"`
}

type cocoAnn struct {
	ID         flexID         `json:"id"`
	ImageID    flexID         `json:"image_id"`
	CategoryID flexID         `json:"category_id"`
	BBox       []float64      `json:"bbox"`
	IsCrowd    float64        `json:"iscrowd"`
	Attributes map[string]any `json:"attributes"`
}

type cocoCategory struct {
	ID   flexID `json:"id"`
	Name string `json:"name"`
}

// readCOCODir reads the given files, or discovers instances_*.json under
// annotations/ or the root. Images of instances_<split>.json are looked for
// in images/<split>, <split>, then images (default <split>).
func (r *run) readCOCODir(files []string) error {
	if files == nil {
		match := func(n string) bool { return strings.HasPrefix(n, "instances") && hasExt(n, ".json") }
		files = append(r.glob("annotations", match), r.glob("", match)...)
	}
	if len(files) == 0 {
		return fmt.Errorf("%w: no instances*.json under %s or %s/annotations", ErrFormat, r.root, r.root)
	}
	for _, f := range files {
		if err := r.readCOCOFile(f, ""); err != nil {
			return err
		}
	}
	return nil
}

// readCOCOFile reads one instances file. splitOverride, when set, names the
// split instead of the file name.
func (r *run) readCOCOFile(rel, splitOverride string) error {
	base := trimExt(path.Base(rel), ".json")
	raw := strings.TrimPrefix(strings.TrimPrefix(base, "instances"), "_")
	if i := strings.IndexByte(raw, '_'); i >= 0 {
		raw = raw[:i]
	}
	split := splitOverride
	if split == "" {
		split = splitOf(base, dataset.SplitTrain)
	}
	var imgDir string
	if raw != "" {
		imgDir = r.imageDir(raw, "images/"+raw, raw, "images")
	} else {
		imgDir = r.imageDir("", "images")
	}
	return r.withFile(rel, func(f io.Reader) error {
		if err := decodeCOCO(r.ctx, f, split, imgDir, r.b); err != nil {
			return formatErr(rel, err)
		}
		return nil
	})
}

// decodeCOCO streams one COCO instances document into b. It uses the
// structural scanner (jsonscan.go): the annotation array is most of the
// bytes of a real file, and only a few fields of each element are read.
func decodeCOCO(ctx context.Context, f io.Reader, split, imgDir string, b *builder) error {
	sc := newJSONScanner(f)
	sc.maxValue = b.maxValue
	if c, err := sc.peek(); err == nil && c == '[' {
		return notInstances(sc)
	}
	cats := map[string]string{}
	firstObj := len(b.ds.Objects)
	var nums []float64
	tick := func(i int) error {
		if i&1023 == 0 {
			return ctx.Err()
		}
		return nil
	}
	err := sc.object(func(key string) error {
		switch key {
		case "images":
			return sc.array(func(i int) error {
				if err := tick(i); err != nil {
					return err
				}
				var im cocoImage
				bad, err := decodeCOCOImage(sc, &im)
				if err != nil {
					return err
				}
				if bad != nil {
					b.reject(KindImage, idOr(string(im.ID), i), "malformed image record: "+bad.Error())
					return nil
				}
				if im.ID == "" {
					b.reject(KindImage, "#"+strconv.Itoa(i), "image without id")
					return nil
				}
				b.ds.Images = append(b.ds.Images, dataset.Image{
					ID: string(im.ID), File: joinFile(imgDir, im.FileName),
					Width: dim(im.Width), Height: dim(im.Height), Split: split,
				})
				return nil
			})
		case "annotations":
			return sc.array(func(i int) error {
				if err := tick(i); err != nil {
					return err
				}
				var a cocoAnn
				var bad error
				var err error
				nums, bad, err = decodeCOCOAnn(sc, &a, nums)
				if err != nil {
					return err
				}
				id := idOr(string(a.ID), i)
				if bad != nil {
					b.reject(KindObject, id, "malformed annotation: "+bad.Error())
					return nil
				}
				box, err := xywh(a.BBox)
				if err != nil {
					b.reject(KindObject, id, err.Error())
					return nil
				}
				attrs := stringAttrs(a.Attributes)
				if a.IsCrowd == 1 {
					if attrs == nil {
						attrs = map[string]string{}
					}
					attrs["iscrowd"] = "1"
				}
				// Category holds the raw id until categories are known: COCO
				// does not promise that "categories" comes first.
				b.ds.Objects = append(b.ds.Objects, dataset.Object{
					ID: id, ImageID: string(a.ImageID), Category: string(a.CategoryID),
					Attributes: attrs, Box: box,
				})
				return nil
			})
		case "categories":
			return sc.array(func(i int) error {
				raw, err := sc.value(false)
				if err != nil {
					return err
				}
				var c cocoCategory
				if json.Unmarshal(raw, &c) == nil {
					cats[string(c.ID)] = c.Name // an unusable category shows up as unknown ids
				}
				return nil
			})
		default:
			_, err := sc.value(true)
			return err
		}
	})
	if err == nil && !sc.atEOF() {
		err = sc.syntax("data after the end of the document")
	}
	if err != nil {
		return err
	}
	// Resolve category ids in place, dropping unknown ones.
	out := b.ds.Objects[:firstObj]
	for _, o := range b.ds.Objects[firstObj:] {
		name, ok := cats[o.Category]
		if !ok {
			b.reject(KindObject, o.ID, fmt.Sprintf("unknown category id %q", o.Category))
			continue
		}
		o.Category = name
		out = append(out, o)
	}
	clear(b.ds.Objects[len(out):])
	b.ds.Objects = out
	return nil
}

// errResults marks a COCO results file given where an instances file belongs.
var errResults = errors.New("a COCO results file")

// notInstances explains a COCO file that is a JSON list: most often a
// results file (detections with scores), which has no images or categories.
func notInstances(sc *jsonScanner) error {
	sc.pos++ // '['
	if c, err := sc.peek(); err == nil && c == '{' {
		raw, err := sc.value(false)
		if err == nil {
			var det struct {
				ImageID *flexID  `json:"image_id"`
				Score   *float64 `json:"score"`
			}
			if json.Unmarshal(raw, &det) == nil && det.ImageID != nil && det.Score != nil {
				return fmt.Errorf("%w (a JSON list of detections with image_id and score), not an instances file: it has no images or categories to ingest; give the ground-truth instances_*.json instead", errResults)
			}
		}
	}
	return fmt.Errorf("%w: the file is a JSON list, not a COCO instances object {\"images\", \"annotations\", \"categories\"}", errNotJSONShape)
}

// Annotation members decodeCOCOAnn reads; everything else is skipped.
const (
	annOther = iota
	annID
	annImageID
	annCategoryID
	annBBox
	annIsCrowd
	annAttributes
)

func cocoAnnKey(raw []byte) int {
	switch string(raw) { // no allocation: the compiler compares in place
	case `"id"`:
		return annID
	case `"image_id"`:
		return annImageID
	case `"category_id"`:
		return annCategoryID
	case `"bbox"`:
		return annBBox
	case `"iscrowd"`:
		return annIsCrowd
	case `"attributes"`:
		return annAttributes
	case `"segmentation"`, `"area"`:
		return annOther
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return annOther
	}
	// An escaped key: decode it and ask again.
	k, err := jsonKey(raw)
	if err != nil || strings.ContainsRune(k, '\\') {
		return annOther
	}
	q, _ := json.Marshal(k)
	return cocoAnnKey(q)
}

// Image members decodeCOCOImage reads.
const (
	imgOther = iota
	imgID
	imgFileName
	imgWidth
	imgHeight
)

func cocoImageKey(raw []byte) int {
	switch string(raw) {
	case `"id"`:
		return imgID
	case `"file_name"`:
		return imgFileName
	case `"width"`:
		return imgWidth
	case `"height"`:
		return imgHeight
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return imgOther
	}
	k, err := jsonKey(raw)
	if err != nil || strings.ContainsRune(k, '\\') {
		return imgOther
	}
	q, _ := json.Marshal(k)
	return cocoImageKey(q)
}

// decodeCOCOImage reads one image object like decodeCOCOAnn.
func decodeCOCOImage(sc *jsonScanner, im *cocoImage) (bad, err error) {
	c, err := sc.peek()
	if err != nil {
		return nil, err
	}
	if c != '{' {
		if _, err := sc.value(true); err != nil {
			return nil, err
		}
		return errors.New("image is not a JSON object"), nil
	}
	err = sc.objectKeys(cocoImageKey, func(key int) error {
		if key == imgOther {
			_, err := sc.value(true)
			return err
		}
		val, err := sc.value(false)
		if err != nil || bad != nil || string(val) == "null" {
			return err // null reads as absent, as encoding/json has it
		}
		var s string
		switch key {
		case imgID:
			s, bad = jsonID(val)
			im.ID = flexID(s)
		case imgFileName:
			im.FileName, bad = jsonString(val)
		case imgWidth, imgHeight:
			v, ok := jsonNumber(val)
			if !ok {
				bad = fmt.Errorf("%s is not a number", map[int]string{imgWidth: "width", imgHeight: "height"}[key])
			} else if key == imgWidth {
				im.Width = v
			} else {
				im.Height = v
			}
		}
		return nil
	})
	return bad, err
}

// decodeCOCOAnn reads one annotation object from the stream in one pass,
// decoding the members groundmesh uses (strict JSON rules) and skipping the
// others (segmentation, area) without keeping them. bad is a problem with
// this record only; err is a structural problem with the document. nums is
// scratch space for the bbox, returned for reuse (a.BBox aliases it).
func decodeCOCOAnn(sc *jsonScanner, a *cocoAnn, nums []float64) (_ []float64, bad, err error) {
	c, err := sc.peek()
	if err != nil {
		return nums, nil, err
	}
	if c != '{' {
		if _, err := sc.value(true); err != nil {
			return nums, nil, err
		}
		return nums, errors.New("annotation is not a JSON object"), nil
	}
	err = sc.objectKeys(cocoAnnKey, func(key int) error {
		if key == annOther {
			_, err := sc.value(true)
			return err
		}
		val, err := sc.value(false)
		if err != nil {
			return err
		}
		if bad != nil {
			return nil
		}
		var s string
		switch key {
		case annID:
			s, bad = jsonID(val)
			a.ID = flexID(s)
		case annImageID:
			s, bad = jsonID(val)
			a.ImageID = flexID(s)
		case annCategoryID:
			s, bad = jsonID(val)
			a.CategoryID = flexID(s)
		case annBBox:
			var ok bool
			if nums, ok = jsonNumbers(val, nums); !ok {
				bad = errors.New("bbox is not an array of numbers")
			}
			a.BBox = nums
		case annIsCrowd:
			if v, ok := jsonNumber(val); ok {
				a.IsCrowd = v
			}
		case annAttributes:
			a.Attributes = nil
			if err := json.Unmarshal(val, &a.Attributes); err != nil {
				bad = fmt.Errorf("attributes: %v", err)
			}
		}
		return nil
	})
	return nums, bad, err
}

func idOr(id string, i int) string {
	if id == "" {
		return "#" + strconv.Itoa(i)
	}
	return id
}

// stringAttrs flattens a JSON attributes object to text values.
func stringAttrs(m map[string]any) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		switch x := v.(type) {
		case string:
			out[k] = x
		case bool:
			out[k] = strconv.FormatBool(x)
		case float64:
			out[k] = strconv.FormatFloat(x, 'g', -1, 64)
		case nil:
		case []any:
			parts := make([]string, 0, len(x))
			for _, p := range x {
				parts = append(parts, fmt.Sprint(p))
			}
			out[k] = strings.Join(parts, "|")
		default:
			b, _ := json.Marshal(x)
			out[k] = string(b)
		}
	}
	return out
}
