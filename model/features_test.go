package model

import (
	"slices"
	"strings"
	"testing"
)

func TestFeatures(t *testing.T) {
	c := DefaultConfig(500)
	c.ImagesAfterText, c.PatchPositions, c.Grounder = true, true, true
	if got := c.Features(); !slices.Equal(got, []string{"box_label_sigma", "images_after_text", "patch_positions", "grounder"}) {
		t.Errorf("features %v", got)
	}
	if err := c.Unsupported("full", AllFeatures()); err != nil {
		t.Errorf("a backend declaring every feature: %v", err)
	}
	err := c.Unsupported("partial", []string{"box_label_sigma", "images_after_text"})
	if err == nil || !strings.Contains(err.Error(), "patch_positions, grounder") || !strings.Contains(err.Error(), `"partial"`) {
		t.Errorf("missing features: %v", err)
	}
	if n := len(AllFeatures()); n != 18 {
		t.Errorf("%d features; a new architecture option must be listed in Config.Features", n)
	}
}
