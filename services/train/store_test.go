package train

import (
	"slices"
	"testing"

	"github.com/groundmesh/groundmesh/internal/events"
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

func TestThinLosses(t *testing.T) {
	var pts []events.LossPoint
	for i := range 1000 {
		pts = append(pts, events.LossPoint{Step: i + 1, Loss: float64(1000 - i)})
	}
	got := thinLosses(pts, 10)
	if len(got) != 10 || got[0] != pts[0] || got[9] != pts[999] {
		t.Fatalf("thinned to %d points, first %+v last %+v", len(got), got[0], got[len(got)-1])
	}
	for i := 1; i < len(got); i++ {
		if got[i].Step <= got[i-1].Step {
			t.Fatalf("steps out of order: %+v", got)
		}
	}
	if short := thinLosses(pts[:5], 10); len(short) != 5 {
		t.Fatalf("%d points of 5 kept", len(short))
	}
}
