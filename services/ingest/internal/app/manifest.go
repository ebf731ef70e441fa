package app

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// ManifestSchema names the canonical manifest format; bump it when the text
// below changes, since every version hash changes with it.
const ManifestSchema = "groundmesh-dataset-manifest/1"

// File kinds in a manifest.
const (
	KindAnnotation = "annotation"
	KindImage      = "image"
)

// FileEntry is one file a dataset version is made of.
type FileEntry struct {
	Path   string `json:"path"` // slash-separated, relative to the root
	Kind   string `json:"kind"` // annotation or image
	SHA256 string `json:"sha256"`
	Bytes  int64  `json:"bytes"`
}

// ManifestHeader is everything but the file list: what was read, how, and
// the validation policy (which changes what a version contains).
type ManifestHeader struct {
	Schema  string            `json:"schema"`
	Name    string            `json:"name"`
	Format  string            `json:"format"`
	Root    string            `json:"root"`
	Source  string            `json:"source"`
	Options map[string]string `json:"options"`
	Files   int64             `json:"files"`
	Bytes   int64             `json:"bytes"`
}

// Canonical writes the manifest as text: header lines with quoted values,
// options sorted by key, then one line per file sorted by path:
//
//	groundmesh-dataset-manifest/1
//	name "..."
//	format "..."
//	root "..."
//	source "..."
//	option key "value"
//	file <sha256> <bytes> <kind> "<path>"
//
// The dataset version is the sha256 of these bytes.
func Canonical(h ManifestHeader, files []FileEntry) []byte {
	var b strings.Builder
	b.WriteString(ManifestSchema + "\n")
	for _, kv := range [][2]string{{"name", h.Name}, {"format", h.Format}, {"root", h.Root}, {"source", h.Source}} {
		b.WriteString(kv[0] + " " + strconv.Quote(kv[1]) + "\n")
	}
	keys := make([]string, 0, len(h.Options))
	for k := range h.Options {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteString("option " + k + " " + strconv.Quote(h.Options[k]) + "\n")
	}
	sorted := sortedFiles(files)
	for _, f := range sorted {
		fmt.Fprintf(&b, "file %s %d %s %s\n", f.SHA256, f.Bytes, f.Kind, strconv.Quote(f.Path))
	}
	return []byte(b.String())
}

// ManifestVersion returns the sha256 hex of the canonical manifest.
func ManifestVersion(h ManifestHeader, files []FileEntry) string {
	sum := sha256.Sum256(Canonical(h, files))
	return hex.EncodeToString(sum[:])
}

func sortedFiles(files []FileEntry) []FileEntry {
	out := append([]FileEntry(nil), files...)
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// diffFiles names the first difference between two file lists.
func diffFiles(want, got []FileEntry) string {
	w, g := map[string]FileEntry{}, map[string]FileEntry{}
	for _, f := range want {
		w[f.Path] = f
	}
	for _, f := range got {
		g[f.Path] = f
	}
	for _, f := range sortedFiles(want) {
		x, ok := g[f.Path]
		if !ok {
			return f.Path + " is gone"
		}
		if x.SHA256 != f.SHA256 {
			return fmt.Sprintf("%s has sha256 %s, recorded %s", f.Path, x.SHA256, f.SHA256)
		}
	}
	for _, f := range sortedFiles(got) {
		if _, ok := w[f.Path]; !ok {
			return f.Path + " is new"
		}
	}
	return "manifest header differs"
}

// hashingOpener opens annotation files for the readers and hashes the bytes
// as they are parsed, so a version hash always describes exactly what was
// read (no second pass, no window for the file to change in between).
type hashingOpener struct {
	root     string
	mu       sync.Mutex
	files    map[string]FileEntry
	read     int64 // bytes read so far, all files
	opened   int64 // bytes of the files opened so far
	progress func(done, total int64, msg string)
}

func newHashingOpener(root string, progress func(done, total int64, msg string)) *hashingOpener {
	return &hashingOpener{root: root, files: map[string]FileEntry{}, progress: progress}
}

func (o *hashingOpener) Open(rel string) (io.ReadCloser, error) {
	f, err := os.Open(filepath.Join(o.root, filepath.FromSlash(rel)))
	if err != nil {
		return nil, err
	}
	var size int64
	if st, err := f.Stat(); err == nil {
		size = st.Size()
		o.mu.Lock()
		o.opened += size
		o.mu.Unlock()
	}
	return &hashingFile{f: f, h: sha256.New(), rel: rel, owner: o, size: size}, nil
}

// Files returns the files read, sorted by path.
func (o *hashingOpener) Files() []FileEntry {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]FileEntry, 0, len(o.files))
	for _, f := range o.files {
		out = append(out, f)
	}
	return sortedFiles(out)
}

type hashingFile struct {
	f     *os.File
	h     hash.Hash
	n     int64
	rel   string
	size  int64 // at open
	owner *hashingOpener
	// unreported bytes, flushed to progress every 8 MiB
	pending int64
}

func (x *hashingFile) Read(p []byte) (int, error) {
	n, err := x.f.Read(p)
	x.h.Write(p[:n])
	x.n += int64(n)
	x.pending += int64(n)
	if x.pending >= 8<<20 {
		x.flush()
	}
	return n, err
}

// flush reports this file's progress: each file is its own phase ("read
// <file>"), so done and total are this file's bytes, not sums that grow as
// files open.
func (x *hashingFile) flush() {
	o := x.owner
	o.mu.Lock()
	o.read += x.pending
	o.mu.Unlock()
	x.pending = 0
	if o.progress != nil {
		o.progress(x.n, max(x.size, x.n), "read "+x.rel)
	}
}

// Close hashes whatever the decoder did not read (trailing bytes count too)
// and records the file.
func (x *hashingFile) Close() error {
	rest, err := io.Copy(x.h, x.f)
	x.n += rest
	x.pending += rest
	x.flush()
	if cerr := x.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("hash %s: %w", x.rel, err)
	}
	o := x.owner
	o.mu.Lock()
	o.files[x.rel] = FileEntry{Path: x.rel, Kind: KindAnnotation, SHA256: hex.EncodeToString(x.h.Sum(nil)), Bytes: x.n}
	o.mu.Unlock()
	return nil
}
