// Package dataset is groundmesh's internal representation of an annotated
// image collection: what every reader produces and what synthesis consumes.
//
// Boxes are always pixel xyxy in the coordinate frame of the original image,
// and every image carries its size, so that no consumer has to guess a
// convention. Readers convert from their source conventions (COCO xywh,
// Flickr30k xmin/xmax, VG x/y/w/h) exactly once, on the way in.
package dataset

// Split names used across the system. Readers may produce other split names
// taken from the source (e.g. RefCOCO "testA"); these are the ones the
// built-in scene world writes.
const (
	SplitTrain = "train"
	SplitVal   = "val"
	SplitTest  = "test"
	// SplitHeldOut holds attribute combinations never seen in training
	// (compositional generalization).
	SplitHeldOut = "heldout"
)

// Box is a pixel-space box, xyxy, in the original image frame.
type Box struct {
	X1, Y1, X2, Y2 float64
}

// W returns the box width.
func (b Box) W() float64 { return b.X2 - b.X1 }

// H returns the box height.
func (b Box) H() float64 { return b.Y2 - b.Y1 }

// Area returns the box area (0 for degenerate boxes).
func (b Box) Area() float64 {
	if b.X2 <= b.X1 || b.Y2 <= b.Y1 {
		return 0
	}
	return (b.X2 - b.X1) * (b.Y2 - b.Y1)
}

// IoU returns the intersection over union of two boxes.
func (b Box) IoU(o Box) float64 {
	ix1, iy1 := max(b.X1, o.X1), max(b.Y1, o.Y1)
	ix2, iy2 := min(b.X2, o.X2), min(b.Y2, o.Y2)
	inter := Box{ix1, iy1, ix2, iy2}.Area()
	union := b.Area() + o.Area() - inter
	if union <= 0 {
		return 0
	}
	return inter / union
}

// Image is one image of a dataset.
type Image struct {
	ID     string `json:"id"`     // stable id within the dataset (source id as text)
	File   string `json:"file"`   // path relative to the dataset root, slash-separated
	Width  int    `json:"width"`  // pixels
	Height int    `json:"height"` // pixels
	SHA256 string `json:"sha256"` // hex of the file content; empty when the file is absent
	Split  string `json:"split"`
}

// Object is one annotated object instance.
type Object struct {
	ID         string            `json:"id"`
	ImageID    string            `json:"image_id"`
	Category   string            `json:"category"`             // category name, e.g. "circle"
	Attributes map[string]string `json:"attributes,omitempty"` // e.g. color=red, size=small, texture=striped
	Box        Box               `json:"box"`
}

// Ref is a referring expression set for one object (RefCOCO "ref").
type Ref struct {
	ID        string   `json:"id"`
	ImageID   string   `json:"image_id"`
	ObjectID  string   `json:"object_id"`
	Sentences []string `json:"sentences"`
	Split     string   `json:"split"`
}

// Relation is a (subject, predicate, object) triplet between two objects.
type Relation struct {
	ID        string `json:"id"`
	ImageID   string `json:"image_id"`
	SubjectID string `json:"subject_id"`
	Predicate string `json:"predicate"`
	ObjectID  string `json:"object_id"`
}

// Region is a free-text description of an image region (VG region
// descriptions, Flickr30k phrases).
type Region struct {
	ID      string `json:"id"`
	ImageID string `json:"image_id"`
	Phrase  string `json:"phrase"`
	Box     Box    `json:"box"`
}

// Dataset is a whole ingested collection held in memory. Large sources are
// streamed by readers; a Dataset is what the smaller, already validated
// collections (and the synthesis pipeline's input) look like.
type Dataset struct {
	Name      string     `json:"name"`
	Format    string     `json:"format"` // coco, refcoco, vg, flickr30k, odvg, scenes
	Root      string     `json:"root"`   // directory that image files are relative to
	Images    []Image    `json:"images"`
	Objects   []Object   `json:"objects"`
	Refs      []Ref      `json:"refs"`
	Relations []Relation `json:"relations"`
	Regions   []Region   `json:"regions"`
}
