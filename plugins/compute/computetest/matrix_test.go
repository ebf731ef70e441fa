package computetest

import (
	"slices"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/model"
)

// TestMatrixCoversEveryFeature holds the matrix to the model: every
// architecture option has a cell named after it that turns it on, and
// every cell has a checked-in reference of this matrix version.
func TestMatrixCoversEveryFeature(t *testing.T) {
	cells := map[string]MatrixCell{}
	for _, c := range MatrixCells() {
		if err := c.Config.Validate(); err != nil {
			t.Errorf("cell %s: %v", c.Name, err)
		}
		cells[c.Name] = c
		ref, err := ReadCellReference(c.Name)
		if err != nil {
			t.Errorf("cell %s: %v", c.Name, err)
			continue
		}
		if rc, err := model.ParseConfig(ref.ModelConfig); err != nil || rc.SHA256() != c.Config.SHA256() {
			t.Errorf("cell %s: its reference was recorded for another config (%v)", c.Name, err)
		}
	}
	for _, f := range model.AllFeatures() {
		c, ok := cells[f]
		if !ok {
			t.Errorf("feature %s has no matrix cell", f)
			continue
		}
		if !slices.Contains(c.Config.Features(), f) {
			t.Errorf("cell %s does not turn on its feature (it has %v)", f, c.Config.Features())
		}
	}
	if len(cells["base"].Config.Features()) != 0 {
		t.Errorf("cell base turns on %v", cells["base"].Config.Features())
	}
}

// TestCompareCellFails shows the comparison reports each kind of
// difference by what differs.
func TestCompareCellFails(t *testing.T) {
	want, err := ReadCellReference("grounder")
	if err != nil {
		t.Fatal(err)
	}
	if err := CompareCell(want, want, MatrixTolerance{}); err != nil {
		t.Fatalf("a reference differs from itself: %v", err)
	}
	for _, tc := range []struct {
		name, wantErr string
		edit          func(r *CellReference)
	}{
		{"logit", "prefill logits", func(r *CellReference) { r.Steps[0].Logits[1][5] += 0.01 }},
		{"decode", "decode step 2 logits", func(r *CellReference) { r.Steps[2].Logits[0][0] -= 1 }},
		{"head box", "prefill head box 0", func(r *CellReference) { r.Steps[0].HeadBoxes[0].Box[2] += 0.05 }},
		{"answer", "box_from_head answer 1", func(r *CellReference) { r.Answers["box_from_head"][1] = "[0.000, 0.000, 1.000, 1.000]" }},
		{"loss", "train all: step 2 loss", func(r *CellReference) { r.Train["all"].Losses[1] *= 1.01 }},
		{"moved", "moved differently from the reference: grounder.head.out.w", func(r *CellReference) {
			for k := range r.Train["all"].Sketch["grounder.head.out.w"] {
				r.Train["all"].Sketch["grounder.head.out.w"][k] += 10
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadCellReference("grounder")
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(got)
			err = CompareCell(got, want, MatrixTolerance{})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("CompareCell: %v; want an error about %q", err, tc.wantErr)
			}
		})
	}
}

// TestCompareCellShares: a quantized dtype's bounds let a stated share of
// answers and head boxes differ, and no more.
func TestCompareCellShares(t *testing.T) {
	want, err := ReadCellReference("grounder")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadCellReference("grounder")
	if err != nil {
		t.Fatal(err)
	}
	got.Answers["box_from_head"][1] = "[0.000, 0.000, 1.000, 1.000]" // 1 of 10
	got.Steps[0].HeadBoxes[0].Box[2] += 0.5                          // 1 of 2
	if err := CompareCell(got, want, MatrixTolerance{Answers: 0.9, Boxes: 0.5}); err != nil {
		t.Errorf("one answer and one box of two differ, 90%% and 50%% must match: %v", err)
	}
	got.Answers["box"][0] = "[0.000, 0.000, 1.000, 1.000]" // 2 of 10
	if err := CompareCell(got, want, MatrixTolerance{Answers: 0.9, Boxes: 0.5}); err == nil || !strings.Contains(err.Error(), "8 of 10 answers") {
		t.Errorf("two answers differ, 90%% must match: %v", err)
	}
	got.Steps[0].HeadBoxes[1].Box[2] += 0.5 // 2 of 2
	if err := CompareCell(got, want, MatrixTolerance{Answers: 0.5, Boxes: 0.5}); err == nil || !strings.Contains(err.Error(), "2 of 2 head boxes differ") {
		t.Errorf("both head boxes differ, 50%% must match: %v", err)
	}
}
