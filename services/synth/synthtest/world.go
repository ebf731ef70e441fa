// Package synthtest draws small scene datasets (PNG images of coloured,
// textured shapes with boxes, attributes, referring expressions and spatial
// relations) for tests and benchmarks of services/synth that must not depend
// on the ingest service.
package synthtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// Options configures World.
type Options struct {
	Seed int64
	// Images is the number of images (default 50).
	Images int
	// Size is the image side in pixels (default 128).
	Size int
	// MinObjects and MaxObjects bound the objects per image (default 2 and 6).
	MinObjects, MaxObjects int
	// Workers draws images in parallel (default GOMAXPROCS).
	Workers int
}

// Categories, colors and textures of the world.
var (
	Categories = []string{"circle", "square", "triangle", "diamond", "cross", "ring"}
	Colors     = map[string]color.NRGBA{
		"red": {220, 40, 40, 255}, "green": {40, 170, 60, 255}, "blue": {40, 80, 220, 255},
		"yellow": {230, 200, 30, 255}, "purple": {140, 60, 170, 255}, "orange": {240, 130, 20, 255},
		"cyan": {30, 190, 200, 255}, "black": {20, 20, 20, 255},
	}
	ColorNames = []string{"black", "blue", "cyan", "green", "orange", "purple", "red", "yellow"}
	Textures   = []string{"solid", "striped", "dotted"}
	// HeldOut combinations appear only in heldout-split images.
	HeldOut = [][2]string{{"purple", "triangle"}, {"orange", "ring"}}
)

// World writes a scene dataset under dir (images/<split>/<id>.png) and
// returns it with Root = dir and every image's SHA256 set. The same options
// give the same files.
func World(dir string, o Options) (*dataset.Dataset, error) {
	if o.Images <= 0 {
		o.Images = 50
	}
	if o.Size <= 0 {
		o.Size = 128
	}
	if o.MinObjects <= 0 {
		o.MinObjects = 2
	}
	if o.MaxObjects < o.MinObjects {
		o.MaxObjects = max(o.MinObjects, 6)
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	ds := &dataset.Dataset{Name: "synthtest-world", Format: "scenes", Root: dir}
	type drawn struct {
		img  dataset.Image
		objs []dataset.Object
		rels []dataset.Relation
		refs []dataset.Ref
		err  error
	}
	out := make([]drawn, o.Images)
	var wg sync.WaitGroup
	next := make(chan int)
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				im, objs, rels, refs, err := drawScene(dir, o, i)
				out[i] = drawn{im, objs, rels, refs, err}
			}
		}()
	}
	for i := range o.Images {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, d := range out {
		if d.err != nil {
			return nil, d.err
		}
		ds.Images = append(ds.Images, d.img)
		ds.Objects = append(ds.Objects, d.objs...)
		ds.Relations = append(ds.Relations, d.rels...)
		ds.Refs = append(ds.Refs, d.refs...)
	}
	return ds, nil
}

func splitFor(r *rand.Rand) string {
	switch x := r.IntN(100); {
	case x < 80:
		return dataset.SplitTrain
	case x < 90:
		return dataset.SplitVal
	case x < 95:
		return dataset.SplitTest
	default:
		return dataset.SplitHeldOut
	}
}

func isHeldOut(col, cat string) bool {
	for _, h := range HeldOut {
		if h[0] == col && h[1] == cat {
			return true
		}
	}
	return false
}

// Object sizes (box side) relative to the image side, chosen so that the
// COCO-scaled size bins see all three: small < 0.05, medium < 0.15.
var sizeRanges = map[string][2]float64{"small": {0.035, 0.048}, "medium": {0.07, 0.14}, "large": {0.18, 0.3}}
var sizeNames = []string{"small", "medium", "large"}

func drawScene(dir string, o Options, i int) (dataset.Image, []dataset.Object, []dataset.Relation, []dataset.Ref, error) {
	r := rand.New(rand.NewPCG(uint64(o.Seed), uint64(i)*0x9e3779b97f4a7c15+1))
	id := "img" + pad(i)
	split := splitFor(r)
	S := o.Size
	img := image.NewNRGBA(image.Rect(0, 0, S, S))
	bg := color.NRGBA{uint8(200 + r.IntN(40)), uint8(200 + r.IntN(40)), uint8(200 + r.IntN(40)), 255}
	draw.Draw(img, img.Bounds(), &image.Uniform{bg}, image.Point{}, draw.Src)

	n := o.MinObjects + r.IntN(o.MaxObjects-o.MinObjects+1)
	var objs []dataset.Object
	var boxes []dataset.Box
	for k := 0; k < n*8 && len(objs) < n; k++ {
		cat := Categories[r.IntN(len(Categories))]
		col := ColorNames[r.IntN(len(ColorNames))]
		if split == dataset.SplitHeldOut && len(objs) == 0 {
			h := HeldOut[r.IntN(len(HeldOut))]
			col, cat = h[0], h[1]
		} else if isHeldOut(col, cat) {
			continue
		}
		sz := sizeNames[r.IntN(3)]
		rg := sizeRanges[sz]
		side := math.Max(3, math.Round((rg[0]+r.Float64()*(rg[1]-rg[0]))*float64(S)))
		x := float64(r.IntN(S - int(side)))
		y := float64(r.IntN(S - int(side)))
		b := dataset.Box{X1: x, Y1: y, X2: x + side, Y2: y + side}
		overlap := false
		for _, ob := range boxes {
			if ob.IoU(b) > 0.1 || (b.X1 < ob.X2 && ob.X1 < b.X2 && b.Y1 < ob.Y2 && ob.Y1 < b.Y2) {
				overlap = true
				break
			}
		}
		if overlap {
			continue
		}
		tex := Textures[r.IntN(len(Textures))]
		if sz == "small" {
			tex = "solid"
		}
		drawShape(img, cat, Colors[col], tex, b)
		boxes = append(boxes, b)
		objs = append(objs, dataset.Object{
			ID: id + "_o" + strconv.Itoa(len(objs)), ImageID: id, Category: cat, Box: b,
			Attributes: map[string]string{"color": col, "size": sz, "texture": tex},
		})
	}
	var rels []dataset.Relation
	for a := 0; a < len(objs) && len(rels) < 4; a++ {
		for b := a + 1; b < len(objs) && len(rels) < 4; b++ {
			if r.IntN(2) == 0 {
				continue
			}
			pred := relate(objs[a].Box, objs[b].Box)
			rels = append(rels, dataset.Relation{ID: id + "_r" + strconv.Itoa(len(rels)), ImageID: id, SubjectID: objs[a].ID, Predicate: pred, ObjectID: objs[b].ID})
		}
	}
	var refs []dataset.Ref
	for k, ob := range objs {
		if r.IntN(3) != 0 {
			continue
		}
		unique := true
		for j, other := range objs {
			if j != k && other.Category == ob.Category && other.Attributes["color"] == ob.Attributes["color"] {
				unique = false
			}
		}
		if unique {
			refs = append(refs, dataset.Ref{ID: ob.ID + "_ref", ImageID: id, ObjectID: ob.ID, Split: split,
				Sentences: []string{ob.Attributes["color"] + " " + ob.Category, "the " + ob.Attributes["color"] + " " + ob.Category}})
		}
	}

	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&buf, img); err != nil {
		return dataset.Image{}, nil, nil, nil, fmt.Errorf("encode %s: %w", id, err)
	}
	rel := "images/" + split + "/" + id + ".png"
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return dataset.Image{}, nil, nil, nil, fmt.Errorf("write %s: %w", rel, err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		return dataset.Image{}, nil, nil, nil, fmt.Errorf("write %s: %w", rel, err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return dataset.Image{ID: id, File: rel, Width: S, Height: S, SHA256: hex.EncodeToString(sum[:]), Split: split}, objs, rels, refs, nil
}

func relate(a, b dataset.Box) string {
	dx := (a.X1 + a.X2 - b.X1 - b.X2) / 2
	dy := (a.Y1 + a.Y2 - b.Y1 - b.Y2) / 2
	if math.Abs(dx) >= math.Abs(dy) {
		if dx < 0 {
			return "to the left of"
		}
		return "to the right of"
	}
	if dy < 0 {
		return "above"
	}
	return "below"
}

func pad(i int) string {
	s := strconv.Itoa(i)
	for len(s) < 6 {
		s = "0" + s
	}
	return s
}

// drawShape fills the shape of cat inside b with c and the texture.
func drawShape(img *image.NRGBA, cat string, c color.NRGBA, texture string, b dataset.Box) {
	x0, y0, x1, y1 := int(b.X1), int(b.Y1), int(b.X2), int(b.Y2)
	w, h := float64(x1-x0), float64(y1-y0)
	dark := color.NRGBA{c.R / 2, c.G / 2, c.B / 2, 255}
	for y := y0; y < y1; y++ {
		for x := x0; x < x1; x++ {
			u := (float64(x-x0) + 0.5) / w // 0..1
			v := (float64(y-y0) + 0.5) / h
			if !inside(cat, u, v) {
				continue
			}
			col := c
			switch texture {
			case "striped":
				if (y-y0)/2%2 == 1 {
					col = dark
				}
			case "dotted":
				if (x-x0)%4 == 1 && (y-y0)%4 == 1 {
					col = dark
				}
			}
			img.SetNRGBA(x, y, col)
		}
	}
}

func inside(cat string, u, v float64) bool {
	du, dv := u-0.5, v-0.5
	switch cat {
	case "circle":
		return du*du+dv*dv <= 0.25
	case "ring":
		d := du*du + dv*dv
		return d <= 0.25 && d >= 0.08
	case "square":
		return true
	case "triangle":
		return math.Abs(du) <= v/2 // apex at the top, base at the bottom
	case "diamond":
		return math.Abs(du)+math.Abs(dv) <= 0.5
	case "cross":
		return math.Abs(du) <= 0.17 || math.Abs(dv) <= 0.17
	}
	return true
}
