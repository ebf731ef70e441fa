package infer

import (
	"fmt"

	"github.com/groundmesh/groundmesh/model"
)

// Question is the kind of answer a prompt asks for; it picks the grammar.
type Question int

// Questions.
const (
	// Text is a free-text answer (names, descriptions).
	Text Question = iota
	// Ground asks for the box of what the text before the image names
	// (REC): the box grammar, its numbers from the grounding head where
	// the model has one.
	Ground
	// Locate asks for the box of something shown, not named (a crop in
	// the full image): the box grammar, numbers from the language model,
	// since the head reads the text.
	Locate
	// YesNo asks whether the thing named is in the image (POPE): yes or
	// no, from the head's existence probability where the model has one.
	YesNo
	// Pick asks for the number of one of several candidate images.
	Pick
	// Dense asks for a grounded description of the whole image.
	Dense
	// Name asks for the name and attributes of the object at the centre
	// of the image (a crop): free text, the name head's words where the
	// model has one (model.Config.GrounderNameSlots).
	Name
)

// Decoding holds the budgets and switches of a service's decoding.
type Decoding struct {
	// MaxNewText bounds free-text answers; default 48.
	MaxNewText int
	// MaxNewDense bounds grounded descriptions; default 320.
	MaxNewDense int
	// BatchSize is the backend batch; 0 sends each call as one batch.
	BatchSize int
	// Attention asks for the attention maps of Ground answers.
	Attention bool
}

// WithDefaults fills the zero budgets.
func (d Decoding) WithDefaults() Decoding {
	if d.MaxNewText == 0 {
		d.MaxNewText = 48
	}
	if d.MaxNewDense == 0 {
		d.MaxNewDense = 320
	}
	return d
}

// Validate refuses negative budgets.
func (d Decoding) Validate() error {
	if d.MaxNewText < 0 || d.MaxNewDense < 0 || d.BatchSize < 0 {
		return fmt.Errorf("decoding: negative limit (max new text %d, dense %d, batch %d)", d.MaxNewText, d.MaxNewDense, d.BatchSize)
	}
	return nil
}

// Options returns the generation options of a question. candidates is the
// number of candidates a Pick question offers (numbered from 1 in the
// prompt); outside 1..9 the answer is free text.
func (d Decoding) Options(q Question, candidates int) model.GenerateOptions {
	d = d.WithDefaults()
	o := model.GenerateOptions{MaxNew: d.MaxNewText, BatchSize: d.BatchSize}
	switch q {
	case Ground:
		o.Constraint = model.ConstraintBox
		o.WantAttention = d.Attention
		o.BoxFromHead = true
	case Locate:
		o.Constraint = model.ConstraintBox
	case YesNo:
		o.Constraint = model.ConstraintYesNo
		o.YesNoFromHead = true
	case Pick:
		if candidates >= 1 && candidates <= 9 {
			o.Constraint = model.ConstraintDigits(1, candidates)
		}
	case Dense:
		o.MaxNew = d.MaxNewDense
	case Name:
		o.NameFromHead = true
	}
	return o
}

// OptionsKey identifies options that can share one Generate call.
func OptionsKey(o model.GenerateOptions) string {
	return fmt.Sprintf("%s|%d|%v|%v|%v|%v|%d", o.Constraint, o.MaxNew, o.WantAttention, o.BoxFromHead, o.YesNoFromHead, o.NameFromHead, o.BatchSize)
}
