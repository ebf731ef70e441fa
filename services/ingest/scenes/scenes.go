// Package scenes is groundmesh's built-in scene world: a deterministic,
// seeded generator of small PNG images of coloured, textured shapes, with
// occlusion and clutter, spatial and size relations, and referring
// expressions that single out one object among same-shape distractors. It
// writes standard files (COCO instances, RefCOCO refs, Visual Genome
// objects/attributes/relationships; see package readers for the layout) so
// that the world is ingested through the same readers as real data, and so
// that everything runs without a download.
//
// Splits: train, val and test never contain the held-out colour+shape pairs
// (HeldOut); every heldout image contains at least one of them, so the
// heldout split measures compositional generalization.
//
// Boxes are pixel-tight boxes of each whole shape (amodal): occlusion is
// bounded so that at least MinVisible of every shape stays visible.
// Expressions are verified when generated: each one, parsed back and
// resolved against the image's objects (Resolve), selects exactly its
// target.
package scenes

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// Generator identifies the generator version written into scenes.json;
// bump it when output for the same spec changes.
const Generator = "groundmesh-scenes/2"

// MinVisible is the smallest visible fraction of any object's pixels.
const MinVisible = 0.6

// Spec configures a world. Zero fields take defaults.
type Spec struct {
	// Seed makes the world reproducible: the same spec writes the same bytes.
	Seed int64 `json:"seed"`
	// Images is the total over all splits (default 1000, at most 1,000,000).
	Images int `json:"images"`
	// Size is the image side in pixels (default 64, 32..512).
	Size int `json:"size"`
}

// WithDefaults fills zero fields.
func (s Spec) WithDefaults() Spec {
	if s.Images == 0 {
		s.Images = 1000
	}
	if s.Size == 0 {
		s.Size = 64
	}
	return s
}

// Validate checks the ranges.
func (s Spec) Validate() error {
	if s.Images < 1 || s.Images > 1_000_000 {
		return fmt.Errorf("scenes spec: images %d out of range 1..1000000", s.Images)
	}
	if s.Size < 32 || s.Size > 512 {
		return fmt.Errorf("scenes spec: size %d out of range 32..512", s.Size)
	}
	return nil
}

// Pair is a colour+shape combination.
type Pair struct{ Color, Shape string }

// HeldOut returns the colour+shape pairs that only the heldout split shows:
// one colour per shape, each colour once.
func HeldOut() []Pair {
	out := make([]Pair, len(Shapes))
	for i, s := range Shapes {
		out[i] = Pair{Color: Colors[heldColor(i)], Shape: s}
	}
	return out
}

func heldColor(shape int) int { return (shape*3 + 2) % len(Colors) }

// SplitOf returns the split of image index i (0-based): of every ten
// images, seven train, one val, one test, one heldout.
func SplitOf(i int) string {
	switch i % 10 {
	case 7:
		return dataset.SplitVal
	case 8:
		return dataset.SplitTest
	case 9:
		return dataset.SplitHeldOut
	}
	return dataset.SplitTrain
}

// Scene is one generated image and its annotations.
type Scene struct {
	ID        int64
	Split     string
	File      string // relative to the world root
	Size      int
	Objects   []dataset.Object // ids are decimal COCO annotation ids
	Visible   []int            // visible pixels per object (COCO "area")
	Refs      []SceneRef
	Relations []dataset.Relation
	png       []byte
}

// SceneRef is one referring expression set for one object.
type SceneRef struct {
	ObjectID  string
	Exprs     []Expr
	Sentences []string
}

// placed is an object during generation.
type placed struct {
	shape, color, size, texture int
	m                           *mask
	visible                     int
}

const maxObjects = 16 // object ids are image*maxObjects + k + 1

// generateScene builds scene i of the world deterministically.
func generateScene(spec Spec, i int) (*Scene, error) {
	rng := rand.New(rand.NewPCG(uint64(spec.Seed), uint64(i)))
	split := SplitOf(i)
	held := split == dataset.SplitHeldOut
	size := spec.Size
	owner := make([]int16, size*size)
	for k := range owner {
		owner[k] = -1
	}
	var objs []*placed

	// allowed reports whether a colour+shape pair may appear in this split.
	allowed := func(shape, color int) bool { return held || heldColor(shape) != color }
	randColor := func(shape int) int {
		for {
			c := rng.IntN(len(Colors))
			if allowed(shape, c) {
				return c
			}
		}
	}
	place := func(p placed, within *mask) bool {
		for try := 0; try < 60; try++ {
			lo, hi := sizeRange[p.size][0], sizeRange[p.size][1]
			side := float64(size) * (lo + (hi-lo)*rng.Float64())
			var cx, cy float64
			if within != nil {
				// Inside a container: centre so the square fits in its box.
				bw, bh := float64(within.bx2-within.bx1), float64(within.by2-within.by1)
				if bw < side+2 || bh < side+2 {
					return false
				}
				cx = float64(within.bx1) + side/2 + 1 + rng.Float64()*(bw-side-2)
				cy = float64(within.by1) + side/2 + 1 + rng.Float64()*(bh-side-2)
			} else {
				cx = side/2 + 1 + rng.Float64()*(float64(size)-side-2)
				cy = side/2 + 1 + rng.Float64()*(float64(size)-side-2)
			}
			m, ok := rasterize(Shapes[p.shape], cx, cy, side, size, size)
			if !ok {
				continue
			}
			if within != nil && (m.bx1 < within.bx1 || m.by1 < within.by1 || m.bx2 > within.bx2 || m.by2 > within.by2) {
				continue
			}
			// Bounded occlusion: no earlier object may drop below MinVisible.
			lost := make([]int, len(objs))
			for y := 0; y < m.h; y++ {
				for x := 0; x < m.w; x++ {
					if m.on[y*m.w+x] {
						if o := owner[(m.y0+y)*size+m.x0+x]; o >= 0 {
							lost[o]++
						}
					}
				}
			}
			ok = true
			for k, o := range objs {
				if float64(o.visible-lost[k]) < MinVisible*float64(o.m.count) {
					ok = false
					break
				}
			}
			if !ok {
				continue
			}
			for k := range objs {
				objs[k].visible -= lost[k]
			}
			p.m, p.visible = m, m.count
			idx := int16(len(objs))
			for y := 0; y < m.h; y++ {
				for x := 0; x < m.w; x++ {
					if m.on[y*m.w+x] {
						owner[(m.y0+y)*size+m.x0+x] = idx
					}
				}
			}
			objs = append(objs, &p)
			return true
		}
		return false
	}

	// The focus shape gets one to two same-shape distractors that share some
	// (sometimes all) of its attributes, so that expressions need more than
	// the category, and sometimes a relation.
	n := 3 + rng.IntN(4)
	focus := placed{shape: rng.IntN(len(Shapes)), size: rng.IntN(len(Sizes)), texture: rng.IntN(len(Textures))}
	if held {
		focus.color = heldColor(focus.shape)
	} else {
		focus.color = randColor(focus.shape)
	}
	place(focus, nil)
	for d := 1 + rng.IntN(2); d > 0 && len(objs) < n; d-- {
		p := focus
		switch rng.IntN(5) {
		case 0: // identical: only a relation can tell them apart
		case 1:
			p.color = randColor(p.shape)
		case 2:
			p.size = rng.IntN(len(Sizes))
		case 3:
			p.texture = rng.IntN(len(Textures))
		default:
			p.color, p.size = randColor(p.shape), rng.IntN(len(Sizes))
		}
		place(p, nil)
	}
	for tries := 0; len(objs) < n && tries < 4*n; tries++ {
		s := rng.IntN(len(Shapes))
		place(placed{shape: s, color: randColor(s), size: rng.IntN(len(Sizes)), texture: rng.IntN(len(Textures))}, nil)
	}
	// Sometimes a small object inside a large one.
	if rng.IntN(3) == 0 && len(objs) < maxObjects {
		for _, c := range objs {
			if c.size == 2 {
				s := rng.IntN(len(Shapes))
				place(placed{shape: s, color: randColor(s), size: 0, texture: rng.IntN(len(Textures))}, c.m)
				break
			}
		}
	}
	if len(objs) == 0 {
		return nil, fmt.Errorf("scene %d: no object could be placed", i)
	}

	sc := &Scene{ID: int64(i + 1), Split: split, Size: size}
	sc.File = "images/" + split + "/" + fmt.Sprintf("%06d.png", sc.ID)
	for k, p := range objs {
		sc.Objects = append(sc.Objects, dataset.Object{
			ID:       strconv.FormatInt(int64(i)*maxObjects+int64(k)+1, 10),
			ImageID:  strconv.FormatInt(sc.ID, 10),
			Category: Shapes[p.shape],
			Attributes: map[string]string{
				AttrColor: Colors[p.color], AttrSize: Sizes[p.size], AttrTexture: Textures[p.texture],
				AttrOccluded: strconv.FormatBool(p.visible < p.m.count),
			},
			Box: dataset.Box{X1: float64(p.m.bx1), Y1: float64(p.m.by1), X2: float64(p.m.bx2), Y2: float64(p.m.by2)},
		})
		sc.Visible = append(sc.Visible, p.visible)
	}
	sc.Relations = relations(sc)
	if err := sc.describe(rng); err != nil {
		return nil, err
	}
	img := paint(rng, size, objs, owner)
	var err error
	if sc.png, err = encodePNG(img); err != nil {
		return nil, fmt.Errorf("scene %d: %w", i, err)
	}
	return sc, nil
}

// relations lists, per pair of objects, the dominant-axis spatial relation
// (when it holds), "next to", "inside" and "bigger than".
func relations(sc *Scene) []dataset.Relation {
	var out []dataset.Relation
	add := func(a, b dataset.Object, pred string) {
		out = append(out, dataset.Relation{
			ID:      strconv.FormatInt(sc.ID*1024+int64(len(out)), 10),
			ImageID: a.ImageID, SubjectID: a.ID, Predicate: pred, ObjectID: b.ID,
		})
	}
	objs := sc.Objects
	for i := range objs {
		for j := i + 1; j < len(objs); j++ {
			a, b := objs[i], objs[j]
			dx := (a.Box.X1 + a.Box.X2 - b.Box.X1 - b.Box.X2) / 2
			dy := (a.Box.Y1 + a.Box.Y2 - b.Box.Y1 - b.Box.Y2) / 2
			preds := []string{"above", "below"}
			if dx*dx >= dy*dy {
				preds = []string{"left of", "right of"}
			}
			for _, p := range preds {
				if Holds(p, a, b, sc.Size, sc.Size) {
					add(a, b, p)
				}
			}
			if Holds("next to", a, b, sc.Size, sc.Size) {
				add(a, b, "next to")
			}
			for _, pair := range [][2]dataset.Object{{a, b}, {b, a}} {
				for _, p := range []string{"inside", "bigger than"} {
					if Holds(p, pair[0], pair[1], sc.Size, sc.Size) {
						add(pair[0], pair[1], p)
					}
				}
			}
		}
	}
	return out
}

var attrSubsets = [][]string{
	{}, {AttrColor}, {AttrSize}, {AttrTexture},
	{AttrSize, AttrColor}, {AttrColor, AttrTexture}, {AttrSize, AttrTexture},
	{AttrSize, AttrColor, AttrTexture},
}

func descOf(o dataset.Object, attrs []string) Desc {
	d := Desc{Shape: o.Category}
	for _, a := range attrs {
		switch a {
		case AttrColor:
			d.Color = o.Attributes[AttrColor]
		case AttrSize:
			d.Size = o.Attributes[AttrSize]
		case AttrTexture:
			d.Texture = o.Attributes[AttrTexture]
		}
	}
	return d
}

// minimal returns the shortest attribute description that selects only o.
func minimal(o dataset.Object, objs []dataset.Object) (Desc, bool) {
	return shortest(o, objs, attrSubsets)
}

// colourSubsets are the attribute subsets that name the colour, shortest
// first.
var colourSubsets = func() [][]string {
	var out [][]string
	for _, s := range attrSubsets {
		if slices.Contains(s, AttrColor) {
			out = append(out, s)
		}
	}
	return out
}()

// spoken returns the shortest description that names o's colour and
// selects only o: "the red circle" where "the circle" would do, as
// RefCOCO's annotators name the colour of what they point at more often
// than not. Whenever any attribute description selects only o, one with
// the colour does too (adding an attribute never selects more).
func spoken(o dataset.Object, objs []dataset.Object) (Desc, bool) {
	return shortest(o, objs, colourSubsets)
}

func shortest(o dataset.Object, objs []dataset.Object, subsets [][]string) (Desc, bool) {
	for _, s := range subsets {
		d := descOf(o, s)
		if len(Resolve(Expr{Head: d}, objs, 0, 0)) == 1 {
			return d, true
		}
	}
	return Desc{}, false
}

// describe writes up to four expressions per object: the shortest
// attribute description, the shortest that names the colour, one with a
// relation to a uniquely described landmark, and the full attribute
// description; each verified to select exactly its object. Duplicates
// are written once.
func (sc *Scene) describe(rng *rand.Rand) error {
	objs := sc.Objects
	mins := make([]*Desc, len(objs))
	for i, o := range objs {
		if d, ok := minimal(o, objs); ok {
			mins[i] = &d
		}
	}
	for ti, t := range objs {
		var exprs []Expr
		seen := map[string]bool{}
		add := func(e Expr) error {
			s := e.String()
			if seen[s] {
				return nil
			}
			back, err := ParseExpr(s)
			if err != nil || back != e {
				return fmt.Errorf("scene %d: expression %q does not parse back: %v", sc.ID, s, err)
			}
			if got := Resolve(back, objs, sc.Size, sc.Size); len(got) != 1 || got[0] != t.ID {
				return fmt.Errorf("scene %d: expression %q selects %v, want [%s]", sc.ID, s, got, t.ID)
			}
			seen[s] = true
			exprs = append(exprs, e)
			return nil
		}
		if mins[ti] != nil {
			if err := add(Expr{Head: *mins[ti]}); err != nil {
				return err
			}
		}
		if d, ok := spoken(t, objs); ok {
			if err := add(Expr{Head: d}); err != nil {
				return err
			}
		}
		if e, ok := relational(rng, ti, objs, mins, sc.Size); ok {
			if err := add(e); err != nil {
				return err
			}
		}
		if full := descOf(t, attrSubsets[len(attrSubsets)-1]); len(Resolve(Expr{Head: full}, objs, 0, 0)) == 1 {
			if err := add(Expr{Head: full}); err != nil {
				return err
			}
		}
		if len(exprs) == 0 {
			continue // identical twins with no telling relation: no ref
		}
		r := SceneRef{ObjectID: t.ID, Exprs: exprs}
		for _, e := range exprs {
			r.Sentences = append(r.Sentences, e.String())
		}
		sc.Refs = append(sc.Refs, r)
	}
	return nil
}

// relational finds "<head> <pred> <landmark>" selecting only objs[ti], with
// the fewest head attributes, trying predicates and landmarks in a random
// order.
func relational(rng *rand.Rand, ti int, objs []dataset.Object, mins []*Desc, size int) (Expr, bool) {
	preds := append([]string(nil), Predicates...)
	rng.Shuffle(len(preds), func(i, j int) { preds[i], preds[j] = preds[j], preds[i] })
	lands := rng.Perm(len(objs))
	t := objs[ti]
	for _, s := range attrSubsets {
		head := descOf(t, s)
		for _, p := range preds {
			for _, li := range lands {
				if li == ti || !Holds(p, t, objs[li], size, size) {
					continue
				}
				if mins[li] == nil {
					continue
				}
				e := Expr{Head: head, Pred: p, Landmark: *mins[li]}
				if got := Resolve(e, objs, size, size); len(got) == 1 && got[0] == t.ID {
					return e, true
				}
			}
		}
	}
	return Expr{}, false
}
