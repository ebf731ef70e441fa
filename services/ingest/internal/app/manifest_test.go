package app

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestManifestVersion(t *testing.T) {
	h := ManifestHeader{Schema: ManifestSchema, Name: "n", Format: "coco", Root: "/r", Source: "/r", Options: map[string]string{"b": "2", "a": "1"}}
	files := []FileEntry{
		{Path: "b.json", Kind: KindAnnotation, SHA256: "bb", Bytes: 2},
		{Path: "a/x.png", Kind: KindImage, SHA256: "aa", Bytes: 1},
	}
	v := ManifestVersion(h, files)
	// Order of files and options does not matter.
	rev := []FileEntry{files[1], files[0]}
	h2 := h
	h2.Options = map[string]string{"a": "1", "b": "2"}
	if ManifestVersion(h2, rev) != v {
		t.Fatal("version depends on input order")
	}
	text := string(Canonical(h, files))
	if !strings.HasPrefix(text, ManifestSchema+"\nname \"n\"\n") || strings.Index(text, "a/x.png") > strings.Index(text, "b.json") ||
		strings.Index(text, "option a") > strings.Index(text, "option b") {
		t.Fatalf("canonical text:\n%s", text)
	}
	// Everything recorded changes the version.
	changes := map[string]func() string{
		"hash": func() string {
			f := append([]FileEntry(nil), files...)
			f[0].SHA256 = "bc"
			return ManifestVersion(h, f)
		},
		"size":  func() string { f := append([]FileEntry(nil), files...); f[0].Bytes = 3; return ManifestVersion(h, f) },
		"added": func() string { return ManifestVersion(h, append(files, FileEntry{Path: "c", Kind: KindImage})) },
		"name":  func() string { x := h; x.Name = "m"; return ManifestVersion(x, files) },
		"option": func() string {
			x := h
			x.Options = map[string]string{"a": "1", "b": "3"}
			return ManifestVersion(x, files)
		},
		// A newline in a name must not forge another header line.
		"quoted": func() string { x := h; x.Name = "n\"\nformat \"coco"; return ManifestVersion(x, files) },
	}
	for name, f := range changes {
		if f() == v {
			t.Errorf("%s: version unchanged", name)
		}
	}
}

func TestHashingOpenerHashesWholeFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.json"), []byte(`{"x": 1}   trailing bytes the decoder never reads`), 0o644); err != nil {
		t.Fatal(err)
	}
	var last int64
	o := newHashingOpener(dir, func(done, total int64, msg string) { last = done })
	f, err := o.Open("a.json")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(f, buf); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got := o.Files()
	// sha256 of the whole file, computed independently.
	if len(got) != 1 || got[0].Bytes != 49 || last != 49 {
		t.Fatalf("files %+v, progress %d", got, last)
	}
	want := sha256hex(t, filepath.Join(dir, "a.json"))
	if got[0].SHA256 != want {
		t.Fatalf("sha256 %s, want %s", got[0].SHA256, want)
	}
}

func sha256hex(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Each file is its own progress phase: done and total are that file's
// bytes, not running sums across the files of a folder.
func TestHashingOpenerReportsEachFileOnItsOwn(t *testing.T) {
	dir := t.TempDir()
	sizes := map[string]int{"a.json": 100, "b.json": 30}
	for name, n := range sizes {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.Repeat(" ", n)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	type call struct {
		done, total int64
		msg         string
	}
	var calls []call
	o := newHashingOpener(dir, func(done, total int64, msg string) { calls = append(calls, call{done, total, msg}) })
	for _, name := range []string{"a.json", "b.json"} {
		f, err := o.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, f); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	want := []call{{100, 100, "read a.json"}, {30, 30, "read b.json"}}
	if len(calls) != 2 || calls[0] != want[0] || calls[1] != want[1] {
		t.Fatalf("progress calls %+v, want %+v", calls, want)
	}
}
