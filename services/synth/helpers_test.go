package synth_test

import (
	"context"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

var tmpRoot string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "synth-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "synth tests:", err)
		os.Exit(1)
	}
	tmpRoot = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

// fixture is one world and one set built from it, shared by the tests that
// only read (building is the slow part).
type fixture struct {
	ds   *dataset.Dataset
	b    *blob.Local
	m    synth.Manifest
	recs []*model.Record
	img  map[string]*dataset.Image
	objs map[string]*dataset.Object   // by id
	byIm map[string][]*dataset.Object // by image id
}

var (
	shared     *fixture
	sharedErr  error
	sharedOnce sync.Once
)

const sharedSamples = 6000

func sharedSet(t *testing.T) *fixture {
	t.Helper()
	sharedOnce.Do(func() {
		ds, err := synthtest.World(filepath.Join(tmpRoot, "world"), synthtest.Options{Seed: 3, Images: 160, Size: 128})
		if err != nil {
			sharedErr = err
			return
		}
		b, err := blob.NewLocal(filepath.Join(tmpRoot, "blob"))
		if err != nil {
			sharedErr = err
			return
		}
		m, err := synth.Build(context.Background(), ds, synth.BuildOptions{DatasetID: "ds-test", Seed: 11, Samples: sharedSamples}, b, "sets/shared", nil)
		if err != nil {
			sharedErr = err
			return
		}
		shared = newFixture(ds, b, m)
		sharedErr = synth.ReadRecords(context.Background(), b, m, nil, func(r *model.Record) error {
			shared.recs = append(shared.recs, r)
			return nil
		})
	})
	if sharedErr != nil {
		t.Fatalf("build shared set: %v", sharedErr)
	}
	return shared
}

func newFixture(ds *dataset.Dataset, b *blob.Local, m synth.Manifest) *fixture {
	f := &fixture{ds: ds, b: b, m: m, img: map[string]*dataset.Image{}, objs: map[string]*dataset.Object{}, byIm: map[string][]*dataset.Object{}}
	for i := range ds.Images {
		f.img[ds.Images[i].ID] = &ds.Images[i]
	}
	for i := range ds.Objects {
		o := &ds.Objects[i]
		f.objs[o.ID] = o
		f.byIm[o.ImageID] = append(f.byIm[o.ImageID], o)
	}
	return f
}

func (f *fixture) of(task string) []*model.Record {
	var out []*model.Record
	for _, r := range f.recs {
		if r.Task == task {
			out = append(out, r)
		}
	}
	return out
}

// humanText joins a record's human turns.
func humanText(r *model.Record) string {
	var sb strings.Builder
	for _, t := range r.Conversations {
		if t.From == "human" {
			sb.WriteString(t.Value)
			sb.WriteByte('\n')
		}
	}
	return sb.String()
}

func lastGPT(r *model.Record) string {
	for i := len(r.Conversations) - 1; i >= 0; i-- {
		if r.Conversations[i].From == "gpt" {
			return r.Conversations[i].Value
		}
	}
	return ""
}

var boxRe = regexp.MustCompile(`\[\d\.\d{3}, \d\.\d{3}, \d\.\d{3}, \d\.\d{3}\]`)

// desc is the documented description: size, color, texture, category.
func desc(o *dataset.Object) string {
	var parts []string
	for _, k := range []string{"size", "color", "texture"} {
		if v := o.Attributes[k]; v != "" {
			parts = append(parts, v)
		}
	}
	return strings.Join(append(parts, o.Category), " ")
}

func boxOf(b dataset.Box) [4]float64 { return [4]float64{b.X1, b.Y1, b.X2, b.Y2} }

// expectedCrop re-derives the documented crop rule: the box grown about its
// centre by the scale factor, rounded outwards, clipped to the image.
func expectedCrop(b dataset.Box, scale string, w, h int) [4]float64 {
	f := map[string]float64{synth.ScaleTight: 1, synth.Scale15: 1.5, synth.Scale25: 2.5}[scale]
	cx, cy := (b.X1+b.X2)/2, (b.Y1+b.Y2)/2
	hw, hh := b.W()*f/2, b.H()*f/2
	return [4]float64{
		math.Max(0, math.Floor(cx-hw)), math.Max(0, math.Floor(cy-hh)),
		math.Min(float64(w), math.Ceil(cx+hw)), math.Min(float64(h), math.Ceil(cy+hh)),
	}
}

// objectForCrop finds the object of img whose crop at scale is box.
func (f *fixture) objectForCrop(imgID string, box [4]float64, scale string) *dataset.Object {
	im := f.img[imgID]
	for _, o := range f.byIm[imgID] {
		if expectedCrop(o.Box, scale, im.Width, im.Height) == box {
			return o
		}
	}
	return nil
}

// objectAt returns the object of img that best overlaps b and that IoU.
func (f *fixture) objectAt(imgID string, b dataset.Box) (*dataset.Object, float64) {
	var best *dataset.Object
	bi := 0.0
	for _, o := range f.byIm[imgID] {
		if v := o.Box.IoU(b); v > bi {
			best, bi = o, v
		}
	}
	return best, bi
}

// parseBoxPixels parses the first box text in s back to pixels of img.
func (f *fixture) parseBoxPixels(t *testing.T, s, imgID string) dataset.Box {
	t.Helper()
	n, err := model.ParseBox(s)
	if err != nil {
		t.Fatalf("parse box in %q: %v", s, err)
	}
	im := f.img[imgID]
	return model.Denormalize(n, im.Width, im.Height)
}

func near(a, b [4]float64, tol float64) bool {
	for i := range a {
		if math.Abs(a[i]-b[i]) > tol {
			return false
		}
	}
	return true
}

// codecTol is the pixel error of three-decimal box text on the padded square.
func codecTol(w, h int) float64 { return 0.0005*float64(max(w, h)) + 1e-9 }

func decodeBlobPNG(t *testing.T, b *blob.Local, key string) image.Image {
	t.Helper()
	f, err := b.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode crop %s: %v", key, err)
	}
	return img
}

func decodeFile(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
