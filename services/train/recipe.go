package train

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strings"
)

// recipeFiles are the named training recipes: each a run spec in JSON laid
// over DefaultSpec (fields it leaves out keep the defaults). recipes/README.md
// says what each is for and what it measured.
//
//go:embed recipes/*.json
var recipeFiles embed.FS

var recipeName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,40}$`)

// Recipes lists the recipe names, "demo" (the defaults) first.
func Recipes() []string {
	names := []string{"demo"}
	ents, _ := fs.ReadDir(recipeFiles, "recipes")
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && n != "demo" {
			names = append(names, n)
		}
	}
	slices.Sort(names[1:])
	return names
}

// applyRecipe lays the named recipe over spec; "" and "demo" change
// nothing.
func applyRecipe(spec *RunSpec, name string) error {
	if name == "" || name == "demo" {
		return nil
	}
	if !recipeName.MatchString(name) {
		return fmt.Errorf("run spec: recipe %q: not a recipe name: %w", name, ErrInvalidRequest)
	}
	b, err := recipeFiles.ReadFile(path.Join("recipes", name+".json"))
	if err != nil {
		return fmt.Errorf("run spec: recipe %q: unknown (have %s): %w", name, strings.Join(Recipes(), ", "), ErrInvalidRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(spec); err != nil {
		return fmt.Errorf("run spec: recipe %q: %v: %w", name, err, ErrInvalidRequest)
	}
	spec.Recipe = name
	return nil
}
