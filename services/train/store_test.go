package train

import (
	"slices"
	"testing"
)

// A spec read back from jsonb (keys reordered, spacing gone) is the same
// spec; a changed value is named by its field.
func TestSpecDiff(t *testing.T) {
	req := []byte(`{"seed": 1, "stage2": {"steps": 200, "lr": 0.001}, "recipe": "demo"}`)
	stored := []byte(`{"recipe":"demo","seed":1,"stage2":{"lr":0.001,"steps":200}}`)
	if d := specDiff(stored, req); len(d) != 0 {
		t.Fatalf("same spec, reordered: diff %v", d)
	}
	changed := []byte(`{"recipe":"demo","seed":2,"stage2":{"lr":0.001,"steps":300}}`)
	if d := specDiff(changed, req); !slices.Equal(d, []string{"seed", "stage2.steps"}) {
		t.Fatalf("diff %v, want [seed stage2.steps]", d)
	}
	if d := specDiff([]byte(`{`), req); !slices.Equal(d, []string{"*"}) {
		t.Fatalf("undecodable: diff %v", d)
	}
}
