package readers

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/big"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/services/ingest/internal/pickle"
)

// RefCOCO, RefCOCO+ and RefCOCOg (the REFER layout, github.com/lichengunc/refer):
// data/<name>/refs(<split_by>).p is a Python pickle of a list of dicts
// {"ref_id", "ann_id", "image_id", "split", "category_id", "file_name",
//  "sent_ids", "sentences": [{"sent_id", "sent", "raw", "tokens"}]},
// and data/<name>/instances.json is a COCO instances file holding the images
// and annotations (boxes) the refs point at. refs(<name>).json is the same
// list as JSON (the scene world writes refs(scenes).json).
//
// Also accepted: the flat JSON list that MiniGPT-v2's evaluation ships
// ({"img_id": "COCO_train2014_<image>_<ann>", "sents", "bbox": [x,y,w,h],
// "height", "width"}), which needs no instances file.
//
// A ref's sentences are the normalized "sent" strings (REFER's evaluation
// text), falling back to "raw" when "sent" is empty. Images take the split
// of their refs.

// refRecord is the union of the REFER and the MiniGPT-v2 list fields.
type refRecord struct {
	RefID      flexID        `json:"ref_id"`
	AnnID      flexID        `json:"ann_id"`
	ImageID    flexID        `json:"image_id"`
	Split      string        `json:"split"`
	CategoryID flexID        `json:"category_id"`
	Sentences  []refSentence `json:"sentences"`
	// MiniGPT-v2 list form.
	ImgID  string          `json:"img_id"`
	Sents  json.RawMessage `json:"sents"`
	BBox   []float64       `json:"bbox"`
	Height float64         `json:"height"`
	Width  float64         `json:"width"`
}

type refSentence struct {
	Sent string `json:"sent"`
	Raw  string `json:"raw"`
}

// refPreference orders the REFER split-by variants when a directory holds
// several refs files.
var refPreference = []string{"unc", "umd", "google", "scenes"}

func (r *run) readRefCOCODir(files []string) error {
	var refsFiles []string
	if files != nil {
		refsFiles = files
	} else {
		isRefs := func(n string) bool {
			return strings.HasPrefix(n, "refs(") && (hasExt(n, ").p") || hasExt(n, ").json"))
		}
		cands := append(r.glob("", isRefs), r.glob("annotations", isRefs)...)
		sort.SliceStable(cands, func(i, j int) bool { return refRank(cands[i]) < refRank(cands[j]) })
		if len(cands) > 0 {
			refsFiles = cands[:1]
		} else {
			// No REFER file: take JSON lists in the MiniGPT-v2 form.
			refsFiles = r.glob("", func(n string) bool {
				return hasExt(n, ".json") && !strings.HasPrefix(n, "instances")
			})
		}
	}
	if len(refsFiles) == 0 {
		return fmt.Errorf("%w: no refs(*).p or refs(*).json under %s", ErrFormat, r.root)
	}
	var pending []refRecord
	mgDir := r.imageDir("images/train2014", "images/train2014", "train2014", "images")
	for _, rel := range refsFiles {
		fileSplit := splitOf(rel, dataset.SplitVal)
		err := r.withFile(rel, func(f io.Reader) error {
			var err error
			if hasExt(rel, ".p") || hasExt(rel, ".pkl") || hasExt(rel, ".pickle") {
				pending, err = decodeRefsPickle(f, pending, r.b)
			} else {
				pending, err = decodeRefsJSON(r.ctx, f, pending, r.b, fileSplit, mgDir)
			}
			if err != nil {
				return formatErr(rel, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if len(pending) == 0 {
		return nil
	}
	// REFER refs: boxes come from the COCO instances file beside them.
	inst := ""
	for _, c := range []string{"instances.json", "annotations/instances.json"} {
		if r.exists(c) {
			inst = c
			break
		}
	}
	firstImage := len(r.b.ds.Images)
	if inst != "" {
		if err := r.readCOCOFileDir(inst, r.imageDir("images/train2014", "images/train2014", "train2014", "images/mscoco/images/train2014", "images")); err != nil {
			return err
		}
	} else {
		match := func(n string) bool { return strings.HasPrefix(n, "instances_") && hasExt(n, ".json") }
		insts := append(r.glob("annotations", match), r.glob("", match)...)
		if len(insts) == 0 {
			return fmt.Errorf("%w: refs need instances.json (COCO) beside them under %s", ErrFormat, r.root)
		}
		for _, f := range insts {
			if err := r.readCOCOFile(f, ""); err != nil {
				return err
			}
		}
	}
	r.b.setFile(refsFiles[0]) // the refs themselves came from the refs file
	addREFERRefs(pending, r.b, firstImage, inst != "")
	return nil
}

// readCOCOFileDir reads a COCO file whose images live in imgDir.
func (r *run) readCOCOFileDir(rel, imgDir string) error {
	return r.withFile(rel, func(f io.Reader) error {
		if err := decodeCOCO(r.ctx, f, dataset.SplitTrain, imgDir, r.b); err != nil {
			return formatErr(rel, err)
		}
		return nil
	})
}

func refRank(p string) int {
	name := path.Base(p)
	for i, pref := range refPreference {
		if strings.HasPrefix(name, "refs("+pref+")") {
			return i
		}
	}
	return len(refPreference)
}

// decodeRefsJSON reads a JSON list of refs. REFER records are returned for
// joining with instances; MiniGPT-v2 records are added to b directly.
func decodeRefsJSON(ctx context.Context, f io.Reader, pending []refRecord, b *builder, fileSplit, imgDir string) ([]refRecord, error) {
	dec := json.NewDecoder(bufio.NewReaderSize(f, 256<<10))
	mg := newMiniGPT(b, fileSplit, imgDir)
	err := walkArray(ctx, dec, func(i int) error {
		var rec refRecord
		if err := dec.Decode(&rec); err != nil {
			if isRecordError(err) {
				b.reject(KindRef, idOr(string(rec.RefID), i), "malformed ref: "+err.Error())
				return nil
			}
			return err
		}
		if rec.ImgID != "" {
			mg.add(rec, i)
			return nil
		}
		pending = append(pending, rec)
		return nil
	})
	return pending, err
}

// decodeRefsPickle reads a pickled list of REFER ref dicts.
func decodeRefsPickle(f io.Reader, pending []refRecord, b *builder) ([]refRecord, error) {
	v, err := pickle.Decode(f)
	if err != nil {
		return nil, err
	}
	list, ok := v.(*pickle.List)
	if !ok {
		return nil, fmt.Errorf("%w: refs pickle holds %T, want a list", errNotJSONShape, v)
	}
	for i, it := range list.Items {
		d, ok := it.(*pickle.Dict)
		if !ok {
			b.reject(KindRef, "#"+strconv.Itoa(i), fmt.Sprintf("ref is %T, want a dict", it))
			continue
		}
		rec := refRecord{
			RefID: flexID(pyID(d, "ref_id")), AnnID: flexID(pyID(d, "ann_id")),
			ImageID: flexID(pyID(d, "image_id")), CategoryID: flexID(pyID(d, "category_id")),
			Split: pyStr(d, "split"),
		}
		if sv, ok := d.Get("sentences"); ok {
			if sl, ok := sv.(*pickle.List); ok {
				for _, s := range sl.Items {
					if sd, ok := s.(*pickle.Dict); ok {
						rec.Sentences = append(rec.Sentences, refSentence{Sent: pyStr(sd, "sent"), Raw: pyStr(sd, "raw")})
					}
				}
			}
		}
		pending = append(pending, rec)
	}
	return pending, nil
}

func pyStr(d *pickle.Dict, key string) string {
	v, _ := d.Get(key)
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	}
	return ""
}

func pyID(d *pickle.Dict, key string) string {
	v, _ := d.Get(key)
	switch x := v.(type) {
	case int64:
		return strconv.FormatInt(x, 10)
	case *big.Int:
		return x.String()
	case string:
		return x
	case []byte:
		return string(x)
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return strconv.FormatInt(int64(x), 10)
		}
	case bool:
		if x {
			return "1"
		}
		return "0"
	}
	return ""
}

// addREFERRefs turns REFER records into refs and gives images the split of
// their refs (instances.json itself has no split).
func addREFERRefs(pending []refRecord, b *builder, firstImage int, setSplits bool) {
	imageSplit := map[string]string{}
	// A crowd box (iscrowd=1) marks a group: no expression refers to it as
	// one object.
	crowd := map[string]bool{}
	for _, o := range b.ds.Objects {
		if o.Attributes["iscrowd"] == "1" {
			crowd[o.ID] = true
		}
	}
	for i, rec := range pending {
		id := idOr(string(rec.RefID), i)
		if rec.AnnID == "" {
			b.reject(KindRef, id, "ref without ann_id")
			continue
		}
		if crowd[string(rec.AnnID)] {
			b.reject(KindRef, id, fmt.Sprintf("ref points at crowd annotation %s (iscrowd 1), not a single object", rec.AnnID))
			continue
		}
		var sents []string
		for _, s := range rec.Sentences {
			t := s.Sent
			if strings.TrimSpace(t) == "" {
				t = s.Raw
			}
			if strings.TrimSpace(t) != "" {
				sents = append(sents, t)
			}
		}
		if len(sents) == 0 {
			b.reject(KindRef, id, "ref without sentences")
			continue
		}
		split := rec.Split
		if split == "" {
			split = dataset.SplitTrain
		}
		if _, ok := imageSplit[string(rec.ImageID)]; !ok {
			imageSplit[string(rec.ImageID)] = split
		}
		b.ds.Refs = append(b.ds.Refs, dataset.Ref{
			ID: id, ImageID: string(rec.ImageID), ObjectID: string(rec.AnnID), Sentences: sents, Split: split,
		})
	}
	if setSplits {
		for i := firstImage; i < len(b.ds.Images); i++ {
			if s, ok := imageSplit[b.ds.Images[i].ID]; ok {
				b.ds.Images[i].Split = s
			}
		}
	}
}

// miniGPT collects the MiniGPT-v2 flat list: one entry per sentence,
// grouped by img_id ("COCO_train2014_<12-digit image id>_<ann id>").
type miniGPT struct {
	b       *builder
	split   string
	imgDir  string
	images  map[string]bool
	refs    map[string]int // img_id -> index in b.ds.Refs
	objects map[string]int // img_id -> index in b.ds.Objects
}

func newMiniGPT(b *builder, split, imgDir string) *miniGPT {
	return &miniGPT{b: b, split: split, imgDir: imgDir, images: map[string]bool{}, refs: map[string]int{}, objects: map[string]int{}}
}

func (m *miniGPT) add(rec refRecord, i int) {
	sents, err := sentsOf(rec.Sents)
	if err != nil {
		m.b.reject(KindRef, rec.ImgID, err.Error())
		return
	}
	box, err := xywh(rec.BBox)
	if err != nil {
		m.b.reject(KindRef, rec.ImgID, fmt.Sprintf("bbox %v: %v", rec.BBox, err))
		return
	}
	if ri, ok := m.refs[rec.ImgID]; ok {
		// The same object again, with another sentence.
		ref := &m.b.ds.Refs[ri]
		if o := m.b.ds.Objects[m.objects[rec.ImgID]]; o.Box != box {
			m.b.reject(KindRef, rec.ImgID, fmt.Sprintf("entry #%d: bbox %v differs from the bbox of the earlier entries with this img_id", i, rec.BBox))
			return
		}
		ref.Sentences = append(ref.Sentences, sents...)
		return
	}
	// img_id is "<image file stem>_<n>"; n is the COCO annotation id in
	// refcocog files but an index within the image in refcoco and refcoco+
	// files, so the object's id is the whole img_id: unique by
	// construction, whatever n means.
	stem := rec.ImgID
	if k := strings.LastIndexByte(rec.ImgID, '_'); k > 0 {
		stem = rec.ImgID[:k]
	}
	imageID := stem
	if k := strings.LastIndexByte(stem, '_'); k >= 0 {
		if n, err := strconv.ParseInt(stem[k+1:], 10, 64); err == nil {
			imageID = strconv.FormatInt(n, 10)
		}
	}
	if !m.images[imageID] {
		m.images[imageID] = true
		m.b.ds.Images = append(m.b.ds.Images, dataset.Image{
			ID: imageID, File: joinFile(m.imgDir, stem+".jpg"), Width: dim(rec.Width), Height: dim(rec.Height), Split: m.split,
		})
	}
	objectID := rec.ImgID
	m.objects[rec.ImgID] = len(m.b.ds.Objects)
	m.b.ds.Objects = append(m.b.ds.Objects, dataset.Object{ID: objectID, ImageID: imageID, Category: "object", Box: box})
	m.refs[rec.ImgID] = len(m.b.ds.Refs)
	m.b.ds.Refs = append(m.b.ds.Refs, dataset.Ref{ID: rec.ImgID, ImageID: imageID, ObjectID: objectID, Sentences: sents, Split: m.split})
}

// sentsOf accepts "sents" as one string or a list of strings.
func sentsOf(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("entry without sents")
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil || len(many) == 0 {
		return nil, fmt.Errorf("sents is neither a string nor a list of strings")
	}
	return many, nil
}
