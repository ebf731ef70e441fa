package scenes

import (
	"fmt"
	"math"
	"strings"

	"github.com/groundmesh/groundmesh/internal/dataset"
)

// Vocabulary of the scene world.
var (
	// Shapes are the object categories.
	Shapes = []string{"circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon"}
	// Colors are the colour attribute values.
	Colors = []string{"red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink"}
	// Sizes are the size attribute values, smallest first.
	Sizes = []string{"small", "medium", "large"}
	// Textures are the texture attribute values.
	Textures = []string{"solid", "striped", "dotted"}
	// Predicates are the relations expressions and relationships use.
	Predicates = []string{"left of", "right of", "above", "below", "next to", "inside", "bigger than"}
)

// Attribute keys on dataset.Object.Attributes.
const (
	AttrColor    = "color"
	AttrSize     = "size"
	AttrTexture  = "texture"
	AttrOccluded = "occluded"
)

// Desc describes objects by shape and optional attributes (empty = any).
type Desc struct {
	Shape, Size, Color, Texture string
}

// Expr is a referring expression: a description, optionally constrained by
// a relation to a landmark that must itself be unique in the image.
type Expr struct {
	Head     Desc
	Pred     string // "" for none
	Landmark Desc
}

// String writes the description as English: "the small red striped circle".
func (d Desc) String() string {
	parts := []string{"the"}
	for _, w := range []string{d.Size, d.Color, d.Texture, d.Shape} {
		if w != "" {
			parts = append(parts, w)
		}
	}
	return strings.Join(parts, " ")
}

// String writes the expression: "the small red circle left of the blue square".
func (e Expr) String() string {
	if e.Pred == "" {
		return e.Head.String()
	}
	return e.Head.String() + " " + e.Pred + " " + e.Landmark.String()
}

func indexOf(xs []string, x string) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	return -1
}

// ParseExpr parses what Expr.String writes.
func ParseExpr(s string) (Expr, error) {
	words := strings.Fields(s)
	head, rest, err := parseDesc(words)
	if err != nil {
		return Expr{}, fmt.Errorf("parse %q: %w", s, err)
	}
	e := Expr{Head: head}
	if len(rest) == 0 {
		return e, nil
	}
	for _, p := range Predicates {
		pw := strings.Fields(p)
		if len(rest) >= len(pw) && strings.Join(rest[:len(pw)], " ") == p {
			e.Pred = p
			rest = rest[len(pw):]
			break
		}
	}
	if e.Pred == "" {
		return Expr{}, fmt.Errorf("parse %q: unknown relation at %q", s, strings.Join(rest, " "))
	}
	e.Landmark, rest, err = parseDesc(rest)
	if err != nil {
		return Expr{}, fmt.Errorf("parse %q: landmark: %w", s, err)
	}
	if len(rest) != 0 {
		return Expr{}, fmt.Errorf("parse %q: trailing %q", s, strings.Join(rest, " "))
	}
	return e, nil
}

func parseDesc(words []string) (Desc, []string, error) {
	if len(words) == 0 || words[0] != "the" {
		return Desc{}, nil, fmt.Errorf("want \"the\"")
	}
	var d Desc
	for i := 1; i < len(words); i++ {
		w := words[i]
		switch {
		case indexOf(Shapes, w) >= 0:
			d.Shape = w
			return d, words[i+1:], nil
		case indexOf(Sizes, w) >= 0 && d.Size == "":
			d.Size = w
		case indexOf(Colors, w) >= 0 && d.Color == "":
			d.Color = w
		case indexOf(Textures, w) >= 0 && d.Texture == "":
			d.Texture = w
		default:
			return Desc{}, nil, fmt.Errorf("unexpected word %q", w)
		}
	}
	return Desc{}, nil, fmt.Errorf("no shape")
}

// Matches reports whether o fits d.
func (d Desc) Matches(o dataset.Object) bool {
	return o.Category == d.Shape &&
		(d.Size == "" || o.Attributes[AttrSize] == d.Size) &&
		(d.Color == "" || o.Attributes[AttrColor] == d.Color) &&
		(d.Texture == "" || o.Attributes[AttrTexture] == d.Texture)
}

// Margin is the spatial tolerance of the relations, in pixels, for an
// image of the given size: a sixteenth of its shorter side.
func Margin(w, h int) float64 {
	return math.Max(1, float64(min(w, h))/16)
}

// Holds reports whether "a <pred> b" is true in an image of size w x h.
// Spatial predicates compare box centres with a margin; "next to" means
// disjoint boxes at most a margin apart; "inside" means box containment;
// "bigger than" compares the size attribute (classes whose box areas differ
// by at least 1.5x by construction).
func Holds(pred string, a, b dataset.Object, w, h int) bool {
	m := Margin(w, h)
	ax, ay := (a.Box.X1+a.Box.X2)/2, (a.Box.Y1+a.Box.Y2)/2
	bx, by := (b.Box.X1+b.Box.X2)/2, (b.Box.Y1+b.Box.Y2)/2
	switch pred {
	case "left of":
		return ax+m <= bx
	case "right of":
		return ax >= bx+m
	case "above":
		return ay+m <= by
	case "below":
		return ay >= by+m
	case "next to":
		if inter(a.Box, b.Box) > 0 {
			return false
		}
		dx := math.Max(0, math.Max(b.Box.X1-a.Box.X2, a.Box.X1-b.Box.X2))
		dy := math.Max(0, math.Max(b.Box.Y1-a.Box.Y2, a.Box.Y1-b.Box.Y2))
		return math.Max(dx, dy) <= m
	case "inside":
		return a.Box.X1 >= b.Box.X1 && a.Box.Y1 >= b.Box.Y1 && a.Box.X2 <= b.Box.X2 && a.Box.Y2 <= b.Box.Y2 &&
			a.Box.Area() < b.Box.Area()
	case "bigger than":
		return indexOf(Sizes, a.Attributes[AttrSize]) > indexOf(Sizes, b.Attributes[AttrSize])
	}
	return false
}

func inter(a, b dataset.Box) float64 {
	return dataset.Box{X1: math.Max(a.X1, b.X1), Y1: math.Max(a.Y1, b.Y1), X2: math.Min(a.X2, b.X2), Y2: math.Min(a.Y2, b.Y2)}.Area()
}

// Resolve returns the ids of the objects of one image that e selects: those
// matching the head, related by the predicate to the single object matching
// the landmark. An expression whose landmark is not unique selects nothing.
func Resolve(e Expr, objs []dataset.Object, w, h int) []string {
	var land *dataset.Object
	if e.Pred != "" {
		for i := range objs {
			if e.Landmark.Matches(objs[i]) {
				if land != nil {
					return nil
				}
				land = &objs[i]
			}
		}
		if land == nil {
			return nil
		}
	}
	var out []string
	for _, o := range objs {
		if !e.Head.Matches(o) {
			continue
		}
		if land != nil && (o.ID == land.ID || !Holds(e.Pred, o, *land, w, h)) {
			continue
		}
		out = append(out, o.ID)
	}
	return out
}
