package model

import (
	"fmt"
	"image"
)

// Record is one synthesized training or evaluation sample in LLaVA
// conversation form, one JSON object per line in the synth set's shards
// (gzip-compressed JSONL). services/synth writes it; the shard builder and
// the evaluator read it.
type Record struct {
	ID        string `json:"id"`
	Stage     string `json:"stage"`               // stage1, stage2, stage3
	Task      string `json:"task"`                // e.g. rec, reg, inventory, relation, caption, crop_name, crop_pick, crop_locate, box_pick, dense, conversation, pope
	Direction string `json:"direction,omitempty"` // T->C, C->T, I->T, T->I, I->C, C->I (stage 2)
	Scale     string `json:"scale,omitempty"`     // crop context: tight, 1.5x, 2.5x
	SizeBin   string `json:"size_bin,omitempty"`  // small, medium, large (COCO area thresholds)
	Split     string `json:"split"`               // train, val, test, heldout
	// Images are the images the sample reads, in the order their <image>
	// placeholders appear: Kind "image" paths are relative to the dataset
	// root; Kind "crop" paths are blob keys of PNG crops written by synth.
	Images        []ImageRef `json:"images"`
	Conversations []Turn     `json:"conversations"`
	// Answer holds the structured ground truth for scoring, so that
	// evaluation never re-parses the reference text.
	Answer  Answer  `json:"answer"`
	Lineage Lineage `json:"lineage"`
}

// ImageRef points at one image of a record.
type ImageRef struct {
	Kind   string `json:"kind"` // "image" or "crop"
	Path   string `json:"path"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
	// Source is the image id a crop came from and CropBox its pixel xyxy box
	// in that image (crops only).
	Source  string      `json:"source,omitempty"`
	CropBox *[4]float64 `json:"crop_box,omitempty"`
	// Transform is applied to the decoded pixels before anything else
	// reads them: "" (none) or TransformMirror. Width, Height and every
	// box of the record are in the transformed frame.
	Transform string `json:"transform,omitempty"`
}

// Key identifies the pixels ref resolves to (kind, path and transform),
// for the caches and groupings that share one decoded image.
func (ref ImageRef) Key() string { return ref.Kind + "\x00" + ref.Path + "\x00" + ref.Transform }

// TransformMirror mirrors an image left to right (a training
// augmentation: synth's mirror option).
const TransformMirror = "mirror"

// ApplyTransform returns img with transform t applied ("" returns img).
func ApplyTransform(img image.Image, t string) (image.Image, error) {
	switch t {
	case "":
		return img, nil
	case TransformMirror:
		b := img.Bounds()
		out := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
		for y := 0; y < b.Dy(); y++ {
			for x := 0; x < b.Dx(); x++ {
				out.Set(b.Dx()-1-x, y, img.At(b.Min.X+x, b.Min.Y+y))
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("image transform %q: unknown (want \"\" or %q)", t, TransformMirror)
}

// MirrorBox is box b (pixel xyxy) in an image of width w mirrored left to
// right.
func MirrorBox(b [4]float64, w int) [4]float64 {
	return [4]float64{float64(w) - b[2], b[1], float64(w) - b[0], b[3]}
}

// Turn is one LLaVA conversation turn: From is "human" or "gpt".
type Turn struct {
	From  string `json:"from"`
	Value string `json:"value"`
}

// Answer is the structured ground truth of a record's (last) answer.
type Answer struct {
	// Boxes in pixel xyxy of the first image (the full image), for box answers.
	Boxes [][4]float64 `json:"boxes,omitempty"`
	// Phrases paired with Boxes for grounded descriptions.
	Phrases []string `json:"phrases,omitempty"`
	// Index of the correct candidate for pick tasks (T->I, C->I), 0-based.
	Index *int `json:"index,omitempty"`
	// YesNo is "yes" or "no" for POPE probes; PopeSplit is random, popular or adversarial.
	YesNo     string `json:"yes_no,omitempty"`
	PopeSplit string `json:"pope_split,omitempty"`
	// Text is the canonical short answer (category name, attributes) for text answers.
	Text string `json:"text,omitempty"`
	// Others, for REC, are the boxes of every other object of the first
	// image (pixel xyxy): evaluation tells a wrong choice of object
	// (selection) from an imprecise box around the right one (precision).
	Others [][4]float64 `json:"others,omitempty"`
	// Names, for REC, name the referent and then each of Others in order
	// (its attribute values and category, "small red striped circle"):
	// free per-cell labels of what is where (Config.Grounder).
	Names []string `json:"names,omitempty"`
}

// Lineage ties a sample to its sources.
type Lineage struct {
	DatasetID     string            `json:"dataset_id"`
	ImageID       string            `json:"image_id"`
	AnnotationIDs []string          `json:"annotation_ids"`
	SourceFiles   map[string]string `json:"source_files"` // path -> sha256
}
