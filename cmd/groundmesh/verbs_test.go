package main

import (
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
