package blob

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
)

// TestKeysCannotEscapeTheRoot: a key with "..", an absolute path that
// would leave the root, or the root itself is refused by Path, Put and
// Open, and nothing is written outside the root.
func TestKeysCannotEscapeTheRoot(t *testing.T) {
	parent := t.TempDir()
	l, err := NewLocal(filepath.Join(parent, "root"))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"../escape", "a/../../escape", "..", "/", "", "a/..", `..\escape`, "a/b/../../../escape"} {
		if p, err := l.Path(key); err == nil {
			t.Errorf("Path(%q) = %s, want refused", key, p)
		}
		if _, _, err := l.Put(key, strings.NewReader("x")); err == nil {
			t.Errorf("Put(%q) succeeded, want refused", key)
		}
		if f, err := l.Open(key); err == nil {
			f.Close()
			t.Errorf("Open(%q) succeeded, want refused", key)
		}
	}
	// A leading slash names a key under the root, not the filesystem root.
	p, err := l.Path("/etc/passwd")
	if err != nil || !strings.HasPrefix(p, l.Root+string(filepath.Separator)) {
		t.Errorf("Path(/etc/passwd) = %q, %v; want a path under the root", p, err)
	}
	if _, err := os.Stat(filepath.Join(parent, "escape")); err == nil {
		t.Error("a file was written outside the root")
	}
}

// TestPutIsVerifiedAndAtomic: Put stores exactly what it read and returns
// its sha256, replacing an earlier blob whole, and leaves no temporary
// file behind.
func TestPutIsVerifiedAndAtomic(t *testing.T) {
	l, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, content := range []string{"first version", strings.Repeat("second, longer version ", 10000)} {
		sum, n, err := l.Put("a/b/c.bin", strings.NewReader(content))
		if err != nil {
			t.Fatal(err)
		}
		p, _ := l.Path("a/b/c.bin")
		got, err := os.ReadFile(p)
		if err != nil || string(got) != content || n != int64(len(content)) {
			t.Fatalf("stored %d bytes (%v), Put said %d; want %d", len(got), err, n, len(content))
		}
		if want := sha256.Sum256([]byte(content)); sum != hex.EncodeToString(want[:]) {
			t.Fatalf("sum %s, want %x", sum, want)
		}
		checkNoTemp(t, filepath.Dir(p))
	}
}

// TestPutFailuresLeaveNoPartialBlob: a store that cannot take the bytes (a
// read-only directory, a read-only file system, a disk that fills up
// mid-write, a failing sync, a file system that loses bytes silently) or a
// reader that fails makes Put fail with an error that names the key, the
// step and the cause; the key keeps what it held before (or nothing), and
// no temporary file is left beside it.
func TestPutFailuresLeaveNoPartialBlob(t *testing.T) {
	content := strings.Repeat("0123456789abcdef", 4096) // 64 KiB: several writes
	cases := []struct {
		name string
		// setup returns the key to put, what it holds before ("" for
		// nothing), and the cause the error must wrap.
		setup func(t *testing.T, l *Local) (key, before string, cause error)
		// reader wraps the content, for a failing reader.
		reader   func(io.Reader) io.Reader
		wantStep string
	}{
		{
			name: "read-only directory", wantStep: "",
			setup: func(t *testing.T, l *Local) (string, string, error) { return readOnlyDir(t, l) },
		},
		{
			name: "read-only file system", wantStep: "create a temporary file",
			setup: func(t *testing.T, l *Local) (string, string, error) {
				l.createTemp = func(dir, pattern string) (tempFile, error) {
					return nil, &fs.PathError{Op: "open", Path: filepath.Join(dir, pattern), Err: syscall.EROFS}
				}
				return "ro/ck.bin", putBefore(t, l, "ro/ck.bin"), syscall.EROFS
			},
		},
		{
			name: "disk full mid-write", wantStep: "write after 40000 bytes",
			setup: func(t *testing.T, l *Local) (string, string, error) {
				l.createTemp = faultyTemp(func(f *faultyFile) { f.room = 40000 })
				return "full/ck.bin", putBefore(t, l, "full/ck.bin"), syscall.ENOSPC
			},
		},
		{
			name: "disk full, nothing there before", wantStep: "write after 0 bytes",
			setup: func(t *testing.T, l *Local) (string, string, error) {
				l.createTemp = faultyTemp(func(f *faultyFile) { f.room = 0 })
				return "full/new.bin", "", syscall.ENOSPC
			},
		},
		{
			name: "sync fails", wantStep: "sync",
			setup: func(t *testing.T, l *Local) (string, string, error) {
				l.createTemp = faultyTemp(func(f *faultyFile) { f.room, f.syncErr = -1, syscall.EIO })
				return "io/ck.bin", putBefore(t, l, "io/ck.bin"), syscall.EIO
			},
		},
		{
			name: "bytes lost without an error", wantStep: "verify",
			setup: func(t *testing.T, l *Local) (string, string, error) {
				l.createTemp = faultyTemp(func(f *faultyFile) { f.room, f.dropAfter = -1, 1000 })
				return "lossy/ck.bin", putBefore(t, l, "lossy/ck.bin"), nil
			},
		},
		{
			name: "reader fails", wantStep: "read the content after 4096 bytes",
			setup: func(t *testing.T, l *Local) (string, string, error) {
				return "reader/ck.bin", putBefore(t, l, "reader/ck.bin"), io.ErrUnexpectedEOF
			},
			reader: func(r io.Reader) io.Reader {
				return io.MultiReader(io.LimitReader(r, 4096), iotest.ErrReader(io.ErrUnexpectedEOF))
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := NewLocal(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			key, before, cause := c.setup(t, l)
			var r io.Reader = strings.NewReader(content)
			if c.reader != nil {
				r = c.reader(r)
			}
			sum, n, err := l.Put(key, r)
			if err == nil {
				t.Fatalf("Put(%s) succeeded (%s, %d bytes)", key, sum, n)
			}
			t.Logf("Put(%s): %v", key, err)
			if !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), c.wantStep) {
				t.Errorf("error %q does not name the key %q and the step %q", err, key, c.wantStep)
			}
			if cause != nil && !errors.Is(err, cause) {
				t.Errorf("error %q does not wrap %v", err, cause)
			}
			p, _ := l.Path(key)
			got, rerr := os.ReadFile(p)
			switch {
			case before == "" && !errors.Is(rerr, fs.ErrNotExist) && !errors.Is(rerr, syscall.ENOTDIR):
				t.Errorf("a file is under the key after the failed Put: %d bytes, %v", len(got), rerr)
			case before != "" && string(got) != before:
				t.Errorf("the key holds %d bytes after the failed Put (%v), want its earlier %q", len(got), rerr, before)
			}
			checkNoTemp(t, filepath.Dir(p))
		})
	}
}

// putBefore stores an earlier version under key, which a failed Put must
// leave as it is.
func putBefore(t *testing.T, l *Local, key string) string {
	t.Helper()
	create := l.createTemp
	l.createTemp = nil
	defer func() { l.createTemp = create }()
	before := "the earlier version of " + key
	if _, _, err := l.Put(key, strings.NewReader(before)); err != nil {
		t.Fatal(err)
	}
	return before
}

// readOnlyDir makes the directory of a key unwritable: mode 0555, or,
// where that does not stop writes (root), a regular file where the key's
// directory should be.
func readOnlyDir(t *testing.T, l *Local) (key, before string, cause error) {
	t.Helper()
	key = "ro/ck.bin"
	before = putBefore(t, l, key)
	dir := filepath.Join(l.Root, "ro")
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o755) })
	probe := filepath.Join(dir, "probe")
	err := os.WriteFile(probe, nil, 0o644)
	if err != nil {
		return key, before, fs.ErrPermission
	}
	os.Remove(probe)
	t.Logf("mode 0555 does not stop this user (uid %d) from writing: using a file as the key's directory", os.Geteuid())
	if err := os.WriteFile(filepath.Join(l.Root, "notadir"), []byte("a regular file"), 0o644); err != nil {
		t.Fatal(err)
	}
	return "notadir/ck.bin", "", syscall.ENOTDIR
}

// faultyFile is a real temporary file behind a faulty disk: room bytes fit
// (-1: no limit) before writes fail with ENOSPC; dropAfter > 0 silently
// loses every byte written past it; syncErr fails Sync.
type faultyFile struct {
	*os.File
	room, written, dropAfter int
	syncErr                  error
}

func faultyTemp(configure func(*faultyFile)) func(dir, pattern string) (tempFile, error) {
	return func(dir, pattern string) (tempFile, error) {
		f, err := os.CreateTemp(dir, pattern)
		if err != nil {
			return nil, err
		}
		ff := &faultyFile{File: f}
		configure(ff)
		return ff, nil
	}
}

func (f *faultyFile) Write(p []byte) (int, error) {
	if f.room >= 0 && f.written+len(p) > f.room {
		n, _ := f.File.Write(p[:f.room-f.written])
		f.written += n
		return n, &fs.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	if f.dropAfter > 0 && f.written+len(p) > f.dropAfter {
		keep := max(0, f.dropAfter-f.written)
		n, err := f.File.Write(p[:keep])
		f.written += len(p)
		if err != nil {
			return n, err
		}
		return len(p), nil
	}
	n, err := f.File.Write(p)
	f.written += n
	return n, err
}

func (f *faultyFile) Sync() error {
	if f.syncErr != nil {
		return &fs.PathError{Op: "sync", Path: f.Name(), Err: f.syncErr}
	}
	return f.File.Sync()
}

// checkNoTemp fails if Put left a temporary file in dir.
func checkNoTemp(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}
