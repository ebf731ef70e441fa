package readers

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// Visual Genome (v1.2, https://homes.cs.washington.edu/~ranjay/visualgenome/api.html):
//   image_data.json:          [{"image_id" (v1.0: "id"), "width", "height", "url", "coco_id", "flickr_id"}]
//   objects.json:             [{"image_id", "objects": [{"object_id", "names": [...] (v1.0: "name"), "synsets", "x", "y", "w", "h"}]}]
//   attributes.json:          objects.json with "attributes": [...] per object
//   relationships.json:       [{"image_id", "relationships": [{"relationship_id", "predicate", "synsets",
//                               "subject": {object}, "object": {object}}]}]  (subject/object nest full
//                               object records with "name" instead of "names")
//   region_descriptions.json: [{"id" (the image id), "regions": [{"region_id", "image_id", "phrase",
//                               "x", "y", "width", "height"}]}]
// Files may carry a prefix ("..._objects.json"). Boxes are xywh in pixels.
// Category = the first name (v1.0 attributes.json: "object_names");
// Attributes: "names" (all names, "|"-joined, when more than one), "synset"
// (the first synset), "synsets" (all, "|"-joined, when more than one),
// "attributes" ("|"-joined). Relationship synsets go to
// Result.Extra.RelationSynsets.
// Images are <dir>/<id>.jpg from the url (VG_100K or VG_100K_2); VG has no
// official split: every image is "train".

var vgKinds = []string{"image_data", "objects", "attributes", "relationships", "region_descriptions"}

type vgObject struct {
	ObjectID   flexID   `json:"object_id"`
	ID         flexID   `json:"id"`
	Names      []string `json:"names"`
	Name       string   `json:"name"`
	ObjNames   []string `json:"object_names"` // v1.0 attributes.json
	Synsets    []string `json:"synsets"`
	Attributes []string `json:"attributes"`
	X          float64  `json:"x"`
	Y          float64  `json:"y"`
	W          float64  `json:"w"`
	H          float64  `json:"h"`
}

type vgEntry struct {
	ImageID       flexID            `json:"image_id"`
	ID            flexID            `json:"id"`
	Objects       []json.RawMessage `json:"objects"`
	Attributes    []json.RawMessage `json:"attributes"`
	Relationships []json.RawMessage `json:"relationships"`
	Regions       []json.RawMessage `json:"regions"`
}

type vgRelationship struct {
	RelationshipID flexID   `json:"relationship_id"`
	ID             flexID   `json:"id"`
	Predicate      string   `json:"predicate"`
	Synsets        []string `json:"synsets"`
	Subject        vgObject `json:"subject"`
	Object         vgObject `json:"object"`
}

type vgRegion struct {
	RegionID flexID  `json:"region_id"`
	ID       flexID  `json:"id"`
	ImageID  flexID  `json:"image_id"`
	Phrase   string  `json:"phrase"`
	X        float64 `json:"x"`
	Y        float64 `json:"y"`
	Width    float64 `json:"width"`
	Height   float64 `json:"height"`
}

type vgImageData struct {
	ImageID flexID  `json:"image_id"`
	ID      flexID  `json:"id"`
	Width   float64 `json:"width"`
	Height  float64 `json:"height"`
	URL     string  `json:"url"`
}

// vgState merges the VG files: relationships and attributes repeat objects
// that objects.json already holds, so objects are keyed by id.
type vgState struct {
	b         *builder
	prefix    string
	images    map[string]int
	objects   map[string]int
	autoImage bool // no image_data.json: images appear when first referenced
}

func newVGState(b *builder, prefix string) *vgState {
	return &vgState{b: b, prefix: prefix, images: map[string]int{}, objects: map[string]int{}, autoImage: true}
}

func (r *run) readVGDir() error {
	found := map[string]string{}
	for _, dir := range []string{"", "annotations"} {
		for _, kind := range vgKinds {
			if _, ok := found[kind]; ok {
				continue
			}
			m := r.glob(dir, func(n string) bool {
				n = strings.TrimSuffix(n, ".gz")
				return n == kind+".json" || strings.HasSuffix(n, "_"+kind+".json")
			})
			if len(m) > 0 {
				found[kind] = m[0]
			}
		}
	}
	if found["objects"] == "" && found["relationships"] == "" && found["region_descriptions"] == "" && found["attributes"] == "" {
		return fmt.Errorf("%w: no objects.json, attributes.json, relationships.json or region_descriptions.json under %s", ErrFormat, r.root)
	}
	prefix := r.opts.ImageDir
	if prefix == "" && !r.isDir("VG_100K") && !r.isDir("VG_100K_2") && r.isDir("images") {
		prefix = "images"
	}
	st := newVGState(r.b, strings.Trim(prefix, "/"))
	for _, kind := range vgKinds {
		rel, ok := found[kind]
		if !ok {
			continue
		}
		err := r.withFile(rel, func(f io.Reader) error {
			if err := decodeVG(r.ctx, f, kind, st); err != nil {
				return formatErr(rel, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// decodeVG streams one VG file of the given kind into st.
func decodeVG(ctx context.Context, f io.Reader, kind string, st *vgState) error {
	dec := json.NewDecoder(bufio.NewReaderSize(f, 256<<10))
	b := st.b
	return walkArray(ctx, dec, func(i int) error {
		if kind == "image_data" {
			var im vgImageData
			if err := dec.Decode(&im); err != nil {
				if isRecordError(err) {
					b.reject(KindImage, "#"+strconv.Itoa(i), "malformed image record: "+err.Error())
					return nil
				}
				return err
			}
			id := firstID(im.ImageID, im.ID)
			if id == "" {
				b.reject(KindImage, "#"+strconv.Itoa(i), "image without id")
				return nil
			}
			st.autoImage = false
			st.addImage(id, st.fileFor(id, im.URL), dim(im.Width), dim(im.Height))
			return nil
		}
		var e vgEntry
		if err := dec.Decode(&e); err != nil {
			if isRecordError(err) {
				b.reject(KindImage, "#"+strconv.Itoa(i), "malformed "+kind+" entry: "+err.Error())
				return nil
			}
			return err
		}
		imageID := firstID(e.ImageID, e.ID)
		if imageID == "" {
			b.reject(KindImage, "#"+strconv.Itoa(i), kind+" entry without image id")
			return nil
		}
		if st.autoImage {
			if _, ok := st.images[imageID]; !ok {
				st.addImage(imageID, st.fileFor(imageID, ""), 0, 0)
			}
		}
		switch kind {
		case "objects", "attributes":
			items := e.Objects
			if kind == "attributes" {
				items = e.Attributes
			}
			for k, raw := range items {
				var o vgObject
				if err := json.Unmarshal(raw, &o); err != nil {
					b.reject(KindObject, imageID+"#"+strconv.Itoa(k), "malformed object: "+err.Error())
					continue
				}
				st.object(o, imageID, kind == "objects")
			}
		case "relationships":
			for k, raw := range e.Relationships {
				var rel vgRelationship
				if err := json.Unmarshal(raw, &rel); err != nil {
					b.reject(KindRelation, imageID+"#"+strconv.Itoa(k), "malformed relationship: "+err.Error())
					continue
				}
				id := firstID(rel.RelationshipID, rel.ID)
				if id == "" {
					id = imageID + "#" + strconv.Itoa(k)
				}
				sid, ok1 := st.object(rel.Subject, imageID, false)
				oid, ok2 := st.object(rel.Object, imageID, false)
				if !ok1 || !ok2 {
					b.reject(KindRelation, id, "relationship subject or object unusable")
					continue
				}
				b.ds.Relations = append(b.ds.Relations, dataset.Relation{
					ID: id, ImageID: imageID, SubjectID: sid, Predicate: strings.TrimSpace(rel.Predicate), ObjectID: oid,
				})
				if len(rel.Synsets) > 0 {
					if b.extra.RelationSynsets == nil {
						b.extra.RelationSynsets = map[string][]string{}
					}
					b.extra.RelationSynsets[id] = rel.Synsets
				}
			}
		case "region_descriptions":
			for k, raw := range e.Regions {
				var rg vgRegion
				if err := json.Unmarshal(raw, &rg); err != nil {
					b.reject(KindRegion, imageID+"#"+strconv.Itoa(k), "malformed region: "+err.Error())
					continue
				}
				id := firstID(rg.RegionID, rg.ID)
				if id == "" {
					id = imageID + "#" + strconv.Itoa(k)
				}
				box, err := xywh([]float64{rg.X, rg.Y, rg.Width, rg.Height})
				if err != nil {
					b.reject(KindRegion, id, err.Error())
					continue
				}
				img := imageID
				if rg.ImageID != "" {
					img = string(rg.ImageID)
				}
				b.ds.Regions = append(b.ds.Regions, dataset.Region{ID: id, ImageID: img, Phrase: rg.Phrase, Box: box})
			}
		}
		return nil
	})
}

func firstID(ids ...flexID) string {
	for _, id := range ids {
		if id != "" {
			return string(id)
		}
	}
	return ""
}

func (st *vgState) addImage(id, file string, w, h int) {
	if i, ok := st.images[id]; ok && st.b.ds.Images[i].Width == 0 {
		// An auto-created image learns its size late; keep one record.
		st.b.ds.Images[i].Width, st.b.ds.Images[i].Height, st.b.ds.Images[i].File = w, h, file
		return
	}
	if _, ok := st.images[id]; !ok {
		st.images[id] = len(st.b.ds.Images)
	}
	st.b.ds.Images = append(st.b.ds.Images, dataset.Image{ID: id, File: file, Width: w, Height: h, Split: dataset.SplitTrain})
}

// fileFor derives the image path from the url's last two segments
// ("VG_100K_2/1.jpg"), or VG_100K/<id>.jpg without one.
func (st *vgState) fileFor(id, rawURL string) string {
	rel := "VG_100K/" + id + ".jpg"
	if rawURL != "" {
		if u, err := url.Parse(rawURL); err == nil && u.Path != "" {
			dir, file := path.Split(u.Path)
			if file != "" {
				rel = path.Base(dir) + "/" + file
			}
		}
	}
	return joinFile(st.prefix, rel)
}

// object adds o (or merges it into an object already seen) and returns its id.
// primary objects (objects.json) are appended even when their id repeats, so
// that the validator reports the duplicate.
func (st *vgState) object(o vgObject, imageID string, primary bool) (string, bool) {
	b := st.b
	id := firstID(o.ObjectID, o.ID)
	if id == "" {
		b.reject(KindObject, imageID+"#?", "object without object_id")
		return "", false
	}
	if i, ok := st.objects[id]; ok && !primary {
		if len(o.Attributes) > 0 {
			obj := &b.ds.Objects[i]
			if obj.Attributes == nil {
				obj.Attributes = map[string]string{}
			}
			obj.Attributes["attributes"] = joinTrim(o.Attributes)
		}
		return id, true
	}
	names := o.Names
	if len(names) == 0 {
		names = o.ObjNames
	}
	if len(names) == 0 && strings.TrimSpace(o.Name) != "" {
		names = []string{o.Name}
	}
	if len(names) == 0 || strings.TrimSpace(names[0]) == "" {
		b.reject(KindObject, id, "object without a name")
		return "", false
	}
	box, err := xywh([]float64{o.X, o.Y, o.W, o.H})
	if err != nil {
		b.reject(KindObject, id, err.Error())
		return "", false
	}
	attrs := map[string]string{}
	if len(names) > 1 {
		attrs["names"] = joinTrim(names)
	}
	if len(o.Synsets) > 0 {
		attrs["synset"] = strings.TrimSpace(o.Synsets[0])
	}
	if len(o.Synsets) > 1 {
		attrs["synsets"] = joinTrim(o.Synsets)
	}
	if len(o.Attributes) > 0 {
		attrs["attributes"] = joinTrim(o.Attributes)
	}
	if len(attrs) == 0 {
		attrs = nil
	}
	if _, ok := st.objects[id]; !ok {
		st.objects[id] = len(b.ds.Objects)
	}
	b.ds.Objects = append(b.ds.Objects, dataset.Object{
		ID: id, ImageID: imageID, Category: strings.TrimSpace(names[0]), Attributes: attrs, Box: box,
	})
	return id, true
}

func joinTrim(xs []string) string {
	out := make([]string, 0, len(xs))
	for _, x := range xs {
		if t := strings.TrimSpace(x); t != "" {
			out = append(out, t)
		}
	}
	return strings.Join(out, "|")
}
