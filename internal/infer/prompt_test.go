package infer

import (
	"errors"
	"testing"

	"github.com/groundmesh/groundmesh/model"
)

func TestPromptOf(t *testing.T) {
	r := model.Record{Conversations: []model.Turn{
		{From: "human", Value: "first"}, {From: "gpt", Value: "a1"},
		{From: "human", Value: "<image>\nwhere?"}, {From: "gpt", Value: "[0.1, 0.2, 0.3, 0.4]"},
	}}
	p, ref := PromptOf(r)
	if p != "<image>\nwhere?" || ref != "[0.1, 0.2, 0.3, 0.4]" {
		t.Fatalf("PromptOf = %q, %q", p, ref)
	}
	if p, ref := PromptOf(model.Record{}); p != "" || ref != "" {
		t.Fatal("empty conversation")
	}
}

func TestRECPrompt(t *testing.T) {
	cases := []struct {
		expr, want string
		bad        bool
	}{
		{expr: "the red square", want: "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: the red square."},
		{expr: "  the  red\tsquare?  ", want: "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: the red square."},
		{expr: "", bad: true},
		{expr: " ... ", bad: true},
		{expr: "the <image> square", bad: true},
		{expr: "bell\a", bad: true},
		{expr: "\xff\xfe", bad: true},
	}
	for _, c := range cases {
		got, err := RECPrompt(c.expr)
		if c.bad {
			if !errors.Is(err, ErrBadExpression) {
				t.Errorf("RECPrompt(%q): err = %v, want ErrBadExpression", c.expr, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("RECPrompt(%q) = %q, %v; want %q", c.expr, got, err, c.want)
		}
	}
}

func TestDecodingOptions(t *testing.T) {
	d := Decoding{Attention: true, BatchSize: 4}
	g := d.Options(Ground, 0)
	if g.Constraint != model.ConstraintBox || !g.BoxFromHead || !g.WantAttention || g.BatchSize != 4 || g.MaxNew != 48 {
		t.Errorf("Ground: %+v", g)
	}
	if l := d.Options(Locate, 0); l.Constraint != model.ConstraintBox || l.BoxFromHead || l.WantAttention {
		t.Errorf("Locate: %+v", l)
	}
	if y := d.Options(YesNo, 0); y.Constraint != model.ConstraintYesNo || !y.YesNoFromHead {
		t.Errorf("YesNo: %+v", y)
	}
	if p := d.Options(Pick, 3); p.Constraint != model.ConstraintDigits(1, 3) {
		t.Errorf("Pick 3: %+v", p)
	}
	if p := d.Options(Pick, 12); p.Constraint != (model.Constraint{}) {
		t.Errorf("Pick 12 should be free text: %+v", p)
	}
	if dn := d.Options(Dense, 0); dn.MaxNew != 320 {
		t.Errorf("Dense: %+v", dn)
	}
	if OptionsKey(d.Options(Ground, 0)) == OptionsKey(d.Options(Locate, 0)) {
		t.Error("Ground and Locate share an options key")
	}
	if err := (Decoding{MaxNewText: -1}).Validate(); err == nil {
		t.Error("negative budget accepted")
	}
}
