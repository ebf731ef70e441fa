package model

import (
	"math"
	"slices"
	"strings"
	"testing"
)

// TestNameHead: the name head's parameters come from the definition (its
// convolutions, pools and output), its FLOPs are counted, its config is
// validated, and its labels and answers round-trip through NameLabel and
// NameTokens.
func TestNameHead(t *testing.T) {
	c := DefaultConfig(500)
	c.ImageSize, c.MaxSeq, c.VisionDepth, c.ImagesAfterText = 64, 320, 0, true
	c.Grounder, c.GrounderQueries, c.GrounderLossWeight = true, 2, 1
	without := c.GrounderFLOPsPerImage()
	n0 := len(c.Params())
	c.GrounderNameSlots = 6
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range c.Params() {
		if strings.HasPrefix(p.Name, "grounder.name.") {
			names = append(names, p.Name)
		}
		if p.Name == "grounder.name.out.w" && !slices.Equal(p.Shape, []int{c.Width, 6 * c.Width}) {
			t.Errorf("grounder.name.out.w %v", p.Shape)
		}
		if p.Name == "grounder.name.pool" && !slices.Equal(p.Shape, []int{64}) {
			t.Errorf("grounder.name.pool %v, want the 8 x 8 cells", p.Shape)
		}
	}
	if len(c.Params())-n0 != len(names) || len(names) != 22 {
		t.Errorf("name head parameters %v", names)
	}
	// Convolutions: 32 x 32 x 12 -> 16 x 16 x 32 (two) -> 8 x 8 x 64 (two),
	// two coordinate channels beside each input.
	convs := 2 * (16*16*9*14*32 + 16*16*9*34*32 + 8*8*9*34*64 + 8*8*9*66*64.0)
	rest := 2 * (2*64*96 + 96*6*96 + 6*(2*96*96+96*500.0))
	if got := c.GrounderFLOPsPerImage() - without; math.Abs(got-(convs+rest)) > 1 {
		t.Errorf("name head FLOPs %v, want %v", got, convs+rest)
	}
	if !slices.Contains(c.Features(), "grounder_name_slots") {
		t.Errorf("features %v", c.Features())
	}
	for want, mod := range map[string]func(*Config){
		"grounder_name_slots 9 must be in 0..8":  func(c *Config) { c.GrounderNameSlots = 9 },
		"grounder_name_slots -1 must be in 0..8": func(c *Config) { c.GrounderNameSlots = -1 },
		"grounder_name_slots need grounder":      func(c *Config) { c.Grounder, c.GrounderQueries, c.GrounderLossWeight = false, 0, 0 },
	} {
		bad := c
		mod(&bad)
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want it to say %q", err, want)
		}
	}

	tok, err := NewTokenizer([]string{" small", " red", " striped", " circle", "small"})
	if err != nil {
		t.Fatal(err)
	}
	label := NameLabel(tok, "small red striped circle", 6)
	want := append(tok.Encode(" small red striped circle"), tok.EOSID(), NoNameWord)
	if len(want) != 6 {
		t.Fatalf("encoding %v", want)
	}
	if !slices.Equal(label, want) {
		t.Fatalf("NameLabel %v, want %v", label, want)
	}
	if NameLabel(tok, "small red striped circle", 4) != nil || NameLabel(tok, "  ", 6) != nil || NameLabel(tok, "red ox", 6) != nil {
		t.Error("NameLabel of a name longer than its slots, of none, or with a word outside the vocabulary is not nil")
	}
	// Logits that put each label on top decode to the name; a first slot
	// whose best is <eos> still names something (its best word), and
	// markers and box numbers are never a name's words.
	v := tok.VocabSize()
	logits := make([]float32, 6*v)
	for s, id := range label {
		if id >= 0 {
			logits[s*v+int(id)] = 5
		}
	}
	if got := NameTokens(logits, 6, v); !slices.Equal(got, label[:4]) || tok.Decode(got) != " small red striped circle" {
		t.Errorf("NameTokens %v (%q), want %v", got, tok.Decode(got), label[:4])
	}
	first := make([]float32, 2*v)
	first[tok.EOSID()], first[tok.CoarseID(3)], first[tok.ImageID()], first[tok.ByteID('x')] = 9, 8, 8, 8
	first[int(label[1])] = 1
	first[v+int(tok.EOSID())] = 1
	if got := NameTokens(first, 2, v); !slices.Equal(got, label[1:2]) {
		t.Errorf("NameTokens with <eos> and markers first: %v, want %v", got, label[1:2])
	}
}
