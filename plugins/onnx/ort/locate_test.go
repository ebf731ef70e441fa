//go:build onnx

package ort

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLocate: the explicit path wins over the environment's, which wins
// over the candidates; with none found, the error names every path tried.
func TestLocate(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a", "libonnxruntime.so.1")
	b := filepath.Join(dir, "b", "libonnxruntime.so.1.30.0")
	for _, p := range []string{a, b} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("elf"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	missing := filepath.Join(dir, "none", "libonnxruntime.so.1")
	glob := filepath.Join(dir, "b", "libonnxruntime.so*")

	for _, tc := range []struct {
		explicit, env string
		candidates    []string
		want          string
	}{
		{a, b, []string{b}, a},
		{"", b, []string{a}, b},
		{"", "", []string{missing, glob, a}, b},
		{"", "", []string{missing, a}, a},
	} {
		got, err := locate(tc.explicit, tc.env, tc.candidates)
		if err != nil || got != tc.want {
			t.Errorf("locate(%q, %q, %q) = %q, %v; want %q", tc.explicit, tc.env, tc.candidates, got, err, tc.want)
		}
	}

	none := filepath.Join(dir, "none", "*.so*")
	_, err := locate("", "", []string{missing, none})
	if !errors.Is(err, ErrLibraryNotFound) {
		t.Fatalf("nothing found: %v", err)
	}
	for _, w := range []string{missing, none, "$" + EnvLibrary, "make onnxruntime", PlacedLibrary} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if _, err := locate(missing, b, nil); !errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), missing) {
		t.Errorf("explicit path missing: %v", err)
	}
	if _, err := locate("", dir, nil); !errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), "directory") {
		t.Errorf("env names a directory: %v", err)
	}
}

// TestLibraryCandidates: the repository's placement is among the standard
// paths when run inside the repository (go test runs in the package's
// directory).
func TestLibraryCandidates(t *testing.T) {
	wd, _ := os.Getwd()
	want := filepath.Join(moduleRoot(wd), PlacedLibrary)
	c := LibraryCandidates()
	found := false
	for _, p := range c {
		found = found || p == want
	}
	if !found {
		t.Errorf("candidates %q lack %s", c, want)
	}
	t.Log(c)
}
