package scenes

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// File layout of a world (read by readers.Read with format "scenes").
const (
	SpecFile          = "scenes.json"
	RefsFile          = "annotations/refs(scenes).json"
	ObjectsFile       = "annotations/objects.json"
	AttributesFile    = "annotations/attributes.json"
	RelationshipsFile = "annotations/relationships.json"
	ImageDataFile     = "annotations/image_data.json"
)

// InstancesFile is the COCO instances file of a split.
func InstancesFile(split string) string { return "annotations/instances_" + split + ".json" }

// AllSplits are the splits a world writes, in order.
var AllSplits = []string{dataset.SplitTrain, dataset.SplitVal, dataset.SplitTest, dataset.SplitHeldOut}

// World is what Generate wrote.
type World struct {
	Spec   Spec
	Dir    string
	Scenes []*Scene
}

// Meta is the content of scenes.json.
type Meta struct {
	Generator string           `json:"generator"`
	Spec      Spec             `json:"spec"`
	Splits    map[string]int64 `json:"splits"`
	HeldOut   []Pair           `json:"heldout_pairs"`
	Shapes    []string         `json:"shapes"`
	Colors    []string         `json:"colors"`
	Sizes     []string         `json:"sizes"`
	Textures  []string         `json:"textures"`
	Relations []string         `json:"relations"`
}

// pngEncoder reuses its zlib writers: allocating a flate compressor per
// image was a third of generation time.
var pngEncoder = png.Encoder{CompressionLevel: png.BestSpeed, BufferPool: &pngBuffers{}}

type pngBuffers struct{ p sync.Pool }

func (b *pngBuffers) Get() *png.EncoderBuffer {
	if x, ok := b.p.Get().(*png.EncoderBuffer); ok {
		return x
	}
	return nil
}

func (b *pngBuffers) Put(x *png.EncoderBuffer) { b.p.Put(x) }

func encodePNG(img image.Image) ([]byte, error) {
	var buf bytes.Buffer
	if err := pngEncoder.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("encode png: %w", err)
	}
	return buf.Bytes(), nil
}

// Generate writes the world of spec into dir, which must not exist or be
// empty. It writes into a temporary sibling and renames it into place, so a
// dir that exists is complete. progress (may be nil) is called from the
// calling goroutine as images are written.
func Generate(ctx context.Context, dir string, spec Spec, progress func(done, total int64)) (*World, error) {
	spec = spec.WithDefaults()
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("generate scenes: %s exists and is not empty", dir)
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("generate scenes: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("generate scenes: %w", err)
	}
	defer os.RemoveAll(tmp) // no-op after the rename
	for _, s := range AllSplits {
		if err := os.MkdirAll(filepath.Join(tmp, "images", s), 0o755); err != nil {
			return nil, fmt.Errorf("generate scenes: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(tmp, "annotations"), 0o755); err != nil {
		return nil, fmt.Errorf("generate scenes: %w", err)
	}

	w := &World{Spec: spec, Scenes: make([]*Scene, spec.Images)}
	if err := w.render(ctx, tmp, progress); err != nil {
		return nil, err
	}
	if err := w.writeAnnotations(tmp); err != nil {
		return nil, err
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("generate scenes: replace empty %s: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, fmt.Errorf("generate scenes: publish %s: %w", dir, err)
	}
	w.Dir = dir
	return w, nil
}

// render generates and writes every image on all CPUs; each scene depends
// only on (seed, index), so the output does not depend on scheduling.
func (w *World) render(ctx context.Context, root string, progress func(done, total int64)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan int)
	done := make(chan error)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				sc, err := generateScene(w.Spec, i)
				if err == nil {
					err = os.WriteFile(filepath.Join(root, filepath.FromSlash(sc.File)), sc.png, 0o644)
					sc.png = nil
				}
				w.Scenes[i] = sc
				select {
				case done <- err:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	go func() {
		defer close(jobs)
		for i := range w.Spec.Images {
			select {
			case jobs <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	total := int64(w.Spec.Images)
	var err error
	for n := int64(1); n <= total; n++ {
		select {
		case e := <-done:
			if e != nil {
				err = fmt.Errorf("generate scenes: %w", e)
			}
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			break
		}
		if progress != nil {
			progress(n, total)
		}
	}
	cancel()
	wg.Wait()
	return err
}

// COCO, RefCOCO and VG record shapes, written in their published schemas.
type (
	cocoFile struct {
		Info        map[string]any `json:"info"`
		Licenses    []any          `json:"licenses"`
		Images      []cocoImage    `json:"images"`
		Annotations []cocoAnn      `json:"annotations"`
		Categories  []cocoCategory `json:"categories"`
	}
	cocoImage struct {
		ID       int64  `json:"id"`
		FileName string `json:"file_name"`
		Width    int    `json:"width"`
		Height   int    `json:"height"`
	}
	cocoAnn struct {
		ID           int64          `json:"id"`
		ImageID      int64          `json:"image_id"`
		CategoryID   int            `json:"category_id"`
		BBox         [4]float64     `json:"bbox"`
		Area         int            `json:"area"`
		IsCrowd      int            `json:"iscrowd"`
		Segmentation [][]float64    `json:"segmentation"`
		Attributes   map[string]any `json:"attributes"`
	}
	cocoCategory struct {
		ID            int    `json:"id"`
		Name          string `json:"name"`
		Supercategory string `json:"supercategory"`
	}
	referRef struct {
		RefID      int64           `json:"ref_id"`
		AnnID      int64           `json:"ann_id"`
		ImageID    int64           `json:"image_id"`
		Split      string          `json:"split"`
		CategoryID int             `json:"category_id"`
		FileName   string          `json:"file_name"`
		SentIDs    []int64         `json:"sent_ids"`
		Sentences  []referSentence `json:"sentences"`
	}
	referSentence struct {
		Tokens []string `json:"tokens"`
		Raw    string   `json:"raw"`
		SentID int64    `json:"sent_id"`
		Sent   string   `json:"sent"`
	}
	vgObject struct {
		ObjectID   int64    `json:"object_id"`
		Names      []string `json:"names,omitempty"`
		Name       string   `json:"name,omitempty"`
		Synsets    []string `json:"synsets"`
		Attributes []string `json:"attributes,omitempty"`
		X          int      `json:"x"`
		Y          int      `json:"y"`
		W          int      `json:"w"`
		H          int      `json:"h"`
	}
	vgImageObjects struct {
		ImageID    int64      `json:"image_id"`
		Objects    []vgObject `json:"objects,omitempty"`
		Attributes []vgObject `json:"attributes,omitempty"`
	}
	vgRelationship struct {
		RelationshipID int64    `json:"relationship_id"`
		Predicate      string   `json:"predicate"`
		Synsets        []string `json:"synsets"`
		Subject        vgObject `json:"subject"`
		Object         vgObject `json:"object"`
	}
	vgImageRelationships struct {
		ImageID       int64            `json:"image_id"`
		Relationships []vgRelationship `json:"relationships"`
	}
	vgImageData struct {
		ImageID  int64  `json:"image_id"`
		Width    int    `json:"width"`
		Height   int    `json:"height"`
		URL      string `json:"url"`
		CocoID   *int64 `json:"coco_id"`
		FlickrID *int64 `json:"flickr_id"`
	}
)

func atoi(s string) int64 {
	v, _ := strconv.ParseInt(s, 10, 64)
	return v
}

func (w *World) writeAnnotations(root string) error {
	cats := make([]cocoCategory, len(Shapes))
	catID := map[string]int{}
	for i, s := range Shapes {
		cats[i] = cocoCategory{ID: i + 1, Name: s, Supercategory: "shape"}
		catID[s] = i + 1
	}
	files := map[string]*cocoFile{}
	for _, s := range AllSplits {
		files[s] = &cocoFile{
			Info:     map[string]any{"description": "groundmesh scene world", "version": Generator, "seed": w.Spec.Seed},
			Licenses: []any{}, Images: []cocoImage{}, Annotations: []cocoAnn{}, Categories: cats,
		}
	}
	refs := []referRef{}
	objects, attributes := []vgImageObjects{}, []vgImageObjects{}
	rels := []vgImageRelationships{}
	imageData := []vgImageData{}
	meta := Meta{Generator: Generator, Spec: w.Spec, Splits: map[string]int64{}, HeldOut: HeldOut(),
		Shapes: Shapes, Colors: Colors, Sizes: Sizes, Textures: Textures, Relations: Predicates}
	for _, sc := range w.Scenes {
		meta.Splits[sc.Split]++
		f := files[sc.Split]
		name := filepath.Base(sc.File)
		f.Images = append(f.Images, cocoImage{ID: sc.ID, FileName: name, Width: sc.Size, Height: sc.Size})
		coco := sc.ID
		imageData = append(imageData, vgImageData{ImageID: sc.ID, Width: sc.Size, Height: sc.Size, URL: sc.File, CocoID: &coco})
		vo := vgImageObjects{ImageID: sc.ID}
		va := vgImageObjects{ImageID: sc.ID}
		vgByID := map[string]vgObject{}
		for k, o := range sc.Objects {
			b := o.Box
			attrs := map[string]any{}
			for key, v := range o.Attributes {
				attrs[key] = v
			}
			attrs[AttrOccluded] = o.Attributes[AttrOccluded] == "true"
			f.Annotations = append(f.Annotations, cocoAnn{
				ID: atoi(o.ID), ImageID: sc.ID, CategoryID: catID[o.Category],
				BBox: [4]float64{b.X1, b.Y1, b.W(), b.H()}, Area: sc.Visible[k],
				Segmentation: [][]float64{{b.X1, b.Y1, b.X2, b.Y1, b.X2, b.Y2, b.X1, b.Y2}},
				Attributes:   attrs,
			})
			v := vgObject{ObjectID: atoi(o.ID), Synsets: []string{}, X: int(b.X1), Y: int(b.Y1), W: int(b.W()), H: int(b.H())}
			v.Names = []string{o.Category}
			vo.Objects = append(vo.Objects, v)
			v.Attributes = []string{o.Attributes[AttrColor], o.Attributes[AttrSize], o.Attributes[AttrTexture]}
			va.Attributes = append(va.Attributes, v)
			nested := v
			nested.Names, nested.Name, nested.Attributes = nil, o.Category, nil
			vgByID[o.ID] = nested
		}
		objects = append(objects, vo)
		attributes = append(attributes, va)
		vr := vgImageRelationships{ImageID: sc.ID, Relationships: []vgRelationship{}}
		for _, r := range sc.Relations {
			vr.Relationships = append(vr.Relationships, vgRelationship{
				RelationshipID: atoi(r.ID), Predicate: r.Predicate, Synsets: []string{},
				Subject: vgByID[r.SubjectID], Object: vgByID[r.ObjectID],
			})
		}
		rels = append(rels, vr)
		for _, r := range sc.Refs {
			ann := atoi(r.ObjectID)
			rr := referRef{RefID: ann, AnnID: ann, ImageID: sc.ID, Split: sc.Split,
				FileName: strings.TrimSuffix(name, ".png") + "_" + r.ObjectID + ".png"}
			for _, o := range sc.Objects {
				if o.ID == r.ObjectID {
					rr.CategoryID = catID[o.Category]
				}
			}
			for j, s := range r.Sentences {
				id := ann*4 + int64(j)
				rr.SentIDs = append(rr.SentIDs, id)
				rr.Sentences = append(rr.Sentences, referSentence{Tokens: strings.Fields(s), Raw: s, SentID: id, Sent: s})
			}
			refs = append(refs, rr)
		}
	}
	for _, s := range AllSplits {
		if err := writeJSON(root, InstancesFile(s), files[s]); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		rel string
		v   any
	}{
		{RefsFile, refs}, {ObjectsFile, objects}, {AttributesFile, attributes},
		{RelationshipsFile, rels}, {ImageDataFile, imageData}, {SpecFile, meta},
	} {
		if err := writeJSON(root, f.rel, f.v); err != nil {
			return err
		}
	}
	return nil
}

func writeJSON(root, rel string, v any) error {
	p := filepath.Join(root, filepath.FromSlash(rel))
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("write %s: %w", rel, err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = json.NewEncoder(bw).Encode(v)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", rel, err)
	}
	return nil
}

// ReadMeta reads scenes.json of a world.
func ReadMeta(dir string) (*Meta, error) {
	b, err := os.ReadFile(filepath.Join(dir, SpecFile))
	if err != nil {
		return nil, fmt.Errorf("read scenes meta: %w", err)
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode scenes meta: %w", err)
	}
	return &m, nil
}
