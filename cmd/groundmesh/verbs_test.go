package main

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
)

func TestParseTaskWeights(t *testing.T) {
	got, err := parseTaskWeights(" rec=3, box_pick=0.5 ")
	if err != nil || !maps.Equal(got, map[string]float64{"rec": 3, "box_pick": 0.5}) {
		t.Fatalf("parse: %v, %v", got, err)
	}
	if got, err := parseTaskWeights(""); err != nil || got != nil {
		t.Fatalf("empty: %v, %v", got, err)
	}
	for in, want := range map[string]string{
		"rec":          `"rec": want task=weight`,
		"rec=x":        `"rec=x": want task=weight`,
		"=2":           `"=2": want task=weight`,
		"rec=1,rec=2":  `task "rec" given twice`,
		"rec=1,,reg=2": `"": want task=weight`,
	} {
		if _, err := parseTaskWeights(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to say %s", in, err, want)
		}
	}
}

func TestWithBackend(t *testing.T) {
	empty := t.TempDir()
	cases := []struct {
		input, backend, device string
		want, wantDevice, line string
		err                    bool
	}{
		{`{}`, "auto", "", "gomlx", "", "gomlx (auto: the libtorch plugin is not built here", false},
		{`{}`, "libtorch", "cuda", "libtorch", "cuda", "libtorch on cuda", false},
		{`{"train":{"backend":"gomlx"}}`, "libtorch", "", "gomlx", "", "gomlx (from the input)", false},
		{`{}`, "onnx", "", "", "", "", true},
		{`[]`, "auto", "", "", "", "", true},
	}
	for _, c := range cases {
		out, line, err := withBackend([]byte(c.input), c.backend, c.device, empty)
		if c.err {
			if err == nil {
				t.Errorf("withBackend(%s, %s): no error", c.input, c.backend)
			}
			continue
		}
		if err != nil {
			t.Fatalf("withBackend(%s, %s): %v", c.input, c.backend, err)
		}
		var in struct {
			Train struct{ Backend, Device string }
		}
		if err := json.Unmarshal(out, &in); err != nil {
			t.Fatal(err)
		}
		if in.Train.Backend != c.want || in.Train.Device != c.wantDevice || !strings.HasPrefix(line, c.line) {
			t.Errorf("withBackend(%s, %s, %s) = %s / %q, want backend %s device %q, line %q...", c.input, c.backend, c.device, out, line, c.want, c.wantDevice, c.line)
		}
	}
}

func TestWithLibtorchBudget(t *testing.T) {
	out, sized, err := withLibtorchBudget([]byte(`{"eval":{"max_samples":50}}`))
	if err != nil || !sized {
		t.Fatalf("plain input: sized %v, %v", sized, err)
	}
	var in struct {
		Synth struct{ Samples int }
		Train struct {
			Spec struct{ Recipe string }
		}
		Eval struct {
			MaxSamples int `json:"max_samples"`
		}
	}
	if err := json.Unmarshal(out, &in); err != nil {
		t.Fatal(err)
	}
	if in.Synth.Samples != 300000 || in.Train.Spec.Recipe != "demo-libtorch" || in.Eval.MaxSamples != 50 {
		t.Errorf("sized input %s", out)
	}
	for _, keep := range []string{
		`{"train":{"spec":{"recipe":"long"}}}`,
		`{"train":{"spec":{"stage1":{"steps":100}}}}`,
	} {
		out, sized, err := withLibtorchBudget([]byte(keep))
		if err != nil || sized || string(out) != keep {
			t.Errorf("%s: sized %v (%s), %v; want it kept", keep, sized, out, err)
		}
	}
	// The sample count of an input is kept; the recipe is still set.
	out, _, _ = withLibtorchBudget([]byte(`{"synth":{"samples":1000}}`))
	if err := json.Unmarshal(out, &in); err != nil || in.Synth.Samples != 1000 || in.Train.Spec.Recipe != "demo-libtorch" {
		t.Errorf("samples kept: %s", out)
	}
}

func TestWithRecipeData(t *testing.T) {
	type input struct {
		Dataset struct {
			Format string
			Images int
		}
		Synth struct{ Samples int }
	}
	read := func(b []byte) input {
		t.Helper()
		var in input
		if err := json.Unmarshal(b, &in); err != nil {
			t.Fatal(err)
		}
		return in
	}
	out, sized, err := withRecipeData([]byte(`{"train":{"spec":{"recipe":"long"}}}`), "long")
	if in := read(out); err != nil || in.Dataset.Images != 18000 || in.Synth.Samples != 900000 || !strings.Contains(sized, "18000 scene images") {
		t.Fatalf("long: %s, %q, %v", out, sized, err)
	}
	// What the input sets, it keeps; a dataset that is not the scene world
	// gets no image count.
	out, sized, err = withRecipeData([]byte(`{"synth":{"samples":1000},"dataset":{"format":"coco","path":"x"}}`), "long")
	if in := read(out); err != nil || in.Dataset.Images != 0 || in.Synth.Samples != 1000 || sized != "" {
		t.Fatalf("kept: %s, %q, %v", out, sized, err)
	}
	out, sized, err = withRecipeData([]byte(`{"dataset":{"images":100}}`), "long")
	if in := read(out); err != nil || in.Dataset.Images != 100 || in.Synth.Samples != 900000 || sized != "900000 synthesized samples" {
		t.Fatalf("images kept: %s, %q, %v", out, sized, err)
	}
	// A recipe without data of its own changes nothing.
	if out, sized, err := withRecipeData([]byte(`{}`), "demo-libtorch"); err != nil || sized != "" || string(out) != `{}` {
		t.Fatalf("demo-libtorch: %s, %q, %v", out, sized, err)
	}
}
