//go:build onnx

// Package ort runs ONNX models on ONNX Runtime (ORT), the runtime layer of
// the onnx backend: it loads ORT's shared library once per process, makes
// sessions from a model's bytes and runs them on float32 and int64 tensors
// whose shapes may change from call to call.
//
// ORT is reached through github.com/yalue/onnxruntime_go, which opens the
// library with dlopen at run time and carries its own copy of ORT's C
// header: nothing of ORT is needed to build, only to run. `make
// onnxruntime` places the library (from the npm tarball of
// onnxruntime-node, CPU only) at build/onnxruntime/lib/libonnxruntime.so.1.
// Build tag: onnx (the package needs cgo).
package ort

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	onnxruntime "github.com/yalue/onnxruntime_go"
)

// EnvLibrary names the environment variable Init reads the library's path
// from when Options.Library is empty.
const EnvLibrary = "GROUNDMESH_ONNXRUNTIME_LIB"

// PlacedLibrary is where `make onnxruntime` places the library, relative to
// the repository's root.
const PlacedLibrary = "build/onnxruntime/lib/libonnxruntime.so.1"

// ErrLibraryNotFound is wrapped by Init's error when no ORT library is at
// any of the paths it tried.
var ErrLibraryNotFound = errors.New("onnxruntime library not found")

// Options configures Init.
type Options struct {
	// Library is the path of ORT's shared library (libonnxruntime.so.1).
	// Empty: the path in $GROUNDMESH_ONNXRUNTIME_LIB, else the first of
	// LibraryCandidates that exists.
	Library string
	// Verbose lets ORT log its warnings and errors to stderr. Off, it
	// logs only fatal errors: every error a call meets comes back as its
	// Go error, with ORT's message, and ORT's warnings (an unused
	// initializer, a node left on the CPU) would repeat for every session.
	Verbose bool
}

var (
	initMu sync.Mutex
	// loaded is the path of the library this process loaded; empty until
	// an Init succeeds. ORT's environment is process-wide and the library
	// cannot be swapped once loaded.
	loaded string
)

// Init loads ORT's library and creates its process-wide environment. Only
// the first successful call loads anything: a later call succeeds when it
// names no library or the one already loaded, and fails when it names
// another. A failed call leaves nothing behind, so Init may be called again
// (with another path). NewSession calls Init(Options{}) itself, so calling
// Init is needed only to choose the library in code.
func Init(o Options) error {
	initMu.Lock()
	defer initMu.Unlock()
	if loaded != "" {
		if o.Library != "" && !samePath(o.Library, loaded) {
			return fmt.Errorf("ort: init with %s: this process already loaded %s (one ORT library per process)", o.Library, loaded)
		}
		return nil
	}
	path, err := locate(o.Library, os.Getenv(EnvLibrary), LibraryCandidates())
	if err != nil {
		return err
	}
	onnxruntime.SetSharedLibraryPath(path)
	level := onnxruntime.WithLogLevelFatal()
	if o.Verbose {
		level = onnxruntime.WithLogLevelWarning()
	}
	if err := onnxruntime.InitializeEnvironment(level); err != nil {
		return fmt.Errorf("ort: load %s: %w", path, err)
	}
	loaded = path
	return nil
}

// Version describes the loaded ORT: its version and the library's path
// ("onnxruntime 1.30.0 (/…/libonnxruntime.so.1)"), or says that none is
// loaded yet (before Init or the first NewSession).
func Version() string {
	initMu.Lock()
	defer initMu.Unlock()
	if loaded == "" {
		return "onnxruntime (not loaded)"
	}
	return fmt.Sprintf("onnxruntime %s (%s)", onnxruntime.GetVersion(), loaded)
}

// LibraryCandidates lists where Init looks for ORT's library when neither
// Options.Library nor $GROUNDMESH_ONNXRUNTIME_LIB names one, in order: the
// Makefile's placement relative to the executable (an executable in bin/
// of the repository, or the library copied beside it), relative to the
// repository holding the working directory (go test runs in the package's
// directory), then the system's library directories. A pattern with * is
// matched with filepath.Glob.
func LibraryCandidates() []string {
	var c []string
	if exe, err := os.Executable(); err == nil {
		if exe, err := filepath.EvalSymlinks(exe); err == nil {
			dir := filepath.Dir(exe)
			c = append(c,
				filepath.Join(dir, "libonnxruntime.so.1"),
				filepath.Join(dir, "..", PlacedLibrary))
		}
	}
	if wd, err := os.Getwd(); err == nil {
		if root := moduleRoot(wd); root != "" {
			c = append(c, filepath.Join(root, PlacedLibrary))
		}
	}
	if triple := multiarch(); triple != "" {
		c = append(c, "/usr/lib/"+triple+"/libonnxruntime.so*")
	}
	c = append(c, "/usr/lib/libonnxruntime.so*", "/usr/local/lib/libonnxruntime.so*")
	seen := map[string]bool{}
	out := c[:0]
	for _, p := range c {
		p = filepath.Clean(p)
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// locate picks the library's path: explicit, else env, else the first
// candidate that exists. Its error names every path it tried.
func locate(explicit, env string, candidates []string) (string, error) {
	const hint = "`make onnxruntime` places it at " + PlacedLibrary + " in the repository"
	for _, named := range []struct{ path, from string }{{explicit, "Options.Library"}, {env, "$" + EnvLibrary}} {
		if named.path == "" {
			continue
		}
		if st, err := os.Stat(named.path); err != nil || st.IsDir() {
			why := "a directory"
			if err != nil {
				why = err.Error()
			}
			return "", fmt.Errorf("ort: %w: %s (from %s): %s; %s", ErrLibraryNotFound, named.path, named.from, why, hint)
		}
		return named.path, nil
	}
	for _, pat := range candidates {
		matches := []string{pat}
		if strings.Contains(pat, "*") {
			matches, _ = filepath.Glob(pat)
		}
		for _, m := range matches {
			if st, err := os.Stat(m); err == nil && !st.IsDir() {
				return m, nil
			}
		}
	}
	return "", fmt.Errorf("ort: %w (tried %s; $%s is unset); %s, or set $%s to its path",
		ErrLibraryNotFound, strings.Join(candidates, ", "), EnvLibrary, hint, EnvLibrary)
}

// moduleRoot returns the nearest directory at or above dir holding a
// go.mod, or "".
func moduleRoot(dir string) string {
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// multiarch is Debian's library directory name for this architecture.
func multiarch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64-linux-gnu"
	case "arm64":
		return "aarch64-linux-gnu"
	}
	return ""
}

func samePath(a, b string) bool {
	ra, errA := filepath.EvalSymlinks(a)
	rb, errB := filepath.EvalSymlinks(b)
	if errA != nil || errB != nil {
		return filepath.Clean(a) == filepath.Clean(b)
	}
	return ra == rb
}
