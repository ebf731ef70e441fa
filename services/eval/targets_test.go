package eval

import "testing"

func TestDemoTargets(t *testing.T) {
	m := map[string]float64{
		"stage2/rec/test/acc@0.5":             0.99, // an earlier stage is not read
		"stage3@gguf-q8_0/rec/test/acc@0.5":   0.10, // nor an export
		"stage3/rec/test/acc@0.5":             0.80,
		"stage3/rec/heldout/acc@0.5":          0.60,
		"stage3/pope_random/test/f1":          0.85,
		"stage3/pope_random/test/yes_ratio":   0.70,
		"stage3/pope_popular/test/f1":         0.81,
		"stage3/pope_popular/test/yes_ratio":  0.50,
		"stage3/crop_name/test/accuracy":      0.71,
		"stage3/pope_adversarial/test/recall": 1,
	}
	got := map[string]Target{}
	for _, tg := range DemoTargets(m) {
		got[tg.Key] = tg
	}
	for key, met := range map[string]bool{
		"stage3/rec/test/acc@0.5": true, "stage3/rec/heldout/acc@0.5": false,
		"stage3/pope_random/test/f1": true, "stage3/pope_random/test/yes_ratio": false,
		"stage3/pope_popular/test/yes_ratio": true, "stage3/pope_adversarial/test/f1": false,
		"stage3/crop_name/test/accuracy": true,
	} {
		tg, ok := got[key]
		if !ok || tg.Met() != met {
			t.Errorf("%s: present %v, met %v, want met %v", key, ok, tg.Met(), met)
		}
	}
	if tg := got["stage3/pope_adversarial/test/f1"]; tg.Present {
		t.Errorf("adversarial F1 was not measured but reads %v", tg.Value)
	}
	if len(got) != 9 {
		t.Errorf("%d targets, want 9", len(got))
	}
	if DemoTargets(map[string]float64{"x": 1}) != nil {
		t.Error("targets without a stage")
	}
}
