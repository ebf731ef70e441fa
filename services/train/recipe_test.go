package train

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// TestRecipes: every recipe file parses over the defaults into a valid
// spec that differs from them; the request's own fields win over the
// recipe's; an unknown or malformed name is refused naming the recipes.
func TestRecipes(t *testing.T) {
	names := Recipes()
	if len(names) < 2 || names[0] != "demo" {
		t.Fatalf("recipes %v: want demo first and at least one more", names)
	}
	def, err := ParseSpec(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names[1:] {
		s, err := ParseSpec([]byte(`{"recipe": "` + n + `"}`))
		if err != nil {
			t.Fatalf("recipe %s: %v", n, err)
		}
		if s.Recipe != n {
			t.Errorf("recipe %s recorded as %q", n, s.Recipe)
		}
		s.Recipe = ""
		if slices.Equal(mustJSON(t, s), mustJSON(t, def)) {
			t.Errorf("recipe %s changes nothing", n)
		}
	}
	s, err := ParseSpec([]byte(`{"recipe": "paper-stage1", "stage1": {"steps": 70}}`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Stage1.Steps != 70 || !slices.Equal(s.Stage1.Data.Stages, []string{"stage1"}) {
		t.Errorf("stage1 %+v: want the request's steps over the recipe's data", s.Stage1)
	}
	for _, bad := range []string{"nope", "../spec", "Demo"} {
		_, err := ParseSpec([]byte(`{"recipe": "` + bad + `"}`))
		if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), bad) {
			t.Errorf("recipe %q: %v", bad, err)
		}
	}
	if _, err := ParseSpec([]byte(`{"recipe": "nope"}`)); !strings.Contains(err.Error(), "paper-stage1") {
		t.Errorf("unknown recipe's error does not list the recipes: %v", err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDemoModelInMatrix keeps the conformance matrix's "demo" cell on the
// demo model's architecture options: a default that turns an option on or
// off must change the cell (and record its reference) too, so that every
// backend is held to what the demo runs.
func TestDemoModelInMatrix(t *testing.T) {
	got := DefaultSpec().Model.Features()
	var cell []string
	for _, c := range computetest.MatrixCells() {
		if c.Name == "demo" {
			cell = c.Config.Features()
		}
	}
	slices.Sort(got)
	slices.Sort(cell)
	if !slices.Equal(got, cell) {
		t.Errorf("the demo model turns on %v; the matrix's demo cell %v (computetest.DemoCellConfig)", got, cell)
	}
}
