// Package blob is groundmesh's blob store: images, shards, checkpoints and
// reports addressed by slash-separated keys, each verified by its sha256.
// Store is the interface the services use; Local (a directory, the embedded
// default) and S3 (an S3-compatible bucket with a local cache) implement it,
// and OpenURL picks one from GROUNDMESH_BLOB_URL.
package blob

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Store is a blob store. Keys are slash-separated and relative; a key with
// ".." or an empty key is refused. A missing key's error matches
// fs.ErrNotExist (errors.Is). Implementations are safe for concurrent use.
type Store interface {
	// Put stores r's bytes under key, replacing what was there, and
	// returns their sha256 (hex) and size. A reader of key sees the old
	// bytes or the new ones, never a part; a failed Put leaves the old.
	Put(key string, r io.Reader) (sum string, n int64, err error)
	// PutFile stores the file at path (one a plugin wrote) under key, like
	// Put, and takes the file: on success path is gone (renamed into the
	// store or its cache, or removed once uploaded); on failure it is left.
	// sum, when not empty, is the file's sha256 as the caller already
	// computed it, which the store then uses instead of reading the file
	// again to hash it (a copy still checks what it wrote against it).
	PutFile(key, path, sum string) (string, int64, error)
	// Open opens key for reading. On a store that records sha256s, a read
	// that reaches the end of bytes that do not match fails.
	Open(key string) (io.ReadCloser, error)
	// Stat returns key's size and, where the store records it, its sha256.
	Stat(key string) (Info, error)
	// LocalPath returns a local file holding key's bytes, for a plugin
	// or a decoder that needs a path: the stored file itself on Local; on
	// S3 a copy in the local cache, downloaded when absent or stale and
	// checked against the object's recorded sha256. Callers must not
	// write to or remove it; a caller that knows the sha256 it expects
	// checks the file (FileSHA256), as it would on Local.
	LocalPath(key string) (string, error)
}

// Info is what Stat reports about a key.
type Info struct {
	Size int64
	// SHA256 is the hex sha256 the store recorded with the bytes; empty
	// where it records none (Local, or an object written by another tool).
	SHA256 string
}

var _ Store = (*Local)(nil)

// Local is a blob store rooted at a local directory.
type Local struct {
	Root string

	// createTemp opens Put's temporary file; nil means os.CreateTemp. Tests
	// put a failing file behind it (a disk that fills up mid-write), which
	// a temporary directory cannot be made to do.
	createTemp func(dir, pattern string) (tempFile, error)
}

// tempFile is what Put writes through: an *os.File.
type tempFile interface {
	io.Writer
	Sync() error
	Close() error
	Name() string
}

// NewLocal creates the root directory if needed.
func NewLocal(root string) (*Local, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("blob root: %w", err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("create blob root: %w", err)
	}
	return &Local{Root: abs}, nil
}

// Path returns the local file path of key, refusing keys that escape the root.
func (l *Local) Path(key string) (string, error) {
	clean := filepath.Clean("/" + strings.TrimPrefix(key, "/"))
	if clean == "/" || strings.Contains(key, "..") {
		return "", fmt.Errorf("blob key %q: invalid", key)
	}
	return filepath.Join(l.Root, filepath.FromSlash(clean)), nil
}

// Put writes r to key atomically and returns its sha256 and size. The
// bytes go to a temporary file beside the key's, which is synced, read back
// and checked against the hash of what was written before it is renamed to
// the key: a failure (a full disk, a read-only store, a short write) leaves
// whatever was under the key before, and no partial file, and its error
// names the key, the step and the cause (errors.Is finds syscall.ENOSPC,
// fs.ErrPermission and the like).
func (l *Local) Put(key string, r io.Reader) (sum string, n int64, err error) {
	p, err := l.Path(key)
	if err != nil {
		return "", 0, err
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", 0, fmt.Errorf("put %s: create its directory: %w", key, err)
	}
	create := l.createTemp
	if create == nil {
		create = func(dir, pattern string) (tempFile, error) { return os.CreateTemp(dir, pattern) }
	}
	f, err := create(dir, ".tmp-*")
	if err != nil {
		return "", 0, fmt.Errorf("put %s: create a temporary file: %w", key, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone after the rename; removes a failed write's bytes
	h := sha256.New()
	fw := &failWriter{w: f}
	n, err = io.Copy(io.MultiWriter(fw, h), r)
	if err != nil {
		f.Close()
		if fw.err != nil {
			return "", 0, fmt.Errorf("put %s: write after %d bytes: %w", key, n, err)
		}
		return "", 0, fmt.Errorf("put %s: read the content after %d bytes: %w", key, n, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", 0, fmt.Errorf("put %s: sync: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return "", 0, fmt.Errorf("put %s: close: %w", key, err)
	}
	sum = hex.EncodeToString(h.Sum(nil))
	// A file system that drops or mangles bytes without an error is caught
	// here, before the key names the file.
	got, gotN, err := FileSHA256(tmp)
	if err != nil {
		return "", 0, fmt.Errorf("put %s: verify: %w", key, err)
	}
	if got != sum || gotN != n {
		return "", 0, fmt.Errorf("put %s: verify: the file holds %d bytes with sha256 %s, but %d bytes with sha256 %s were written",
			key, gotN, got, n, sum)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", 0, fmt.Errorf("put %s: rename into place: %w", key, err)
	}
	// The rename is durable once the directory is synced.
	if err := syncDir(dir); err != nil {
		return "", 0, fmt.Errorf("put %s: sync its directory: %w", key, err)
	}
	return sum, n, nil
}

// failWriter remembers a write error, so that Put can tell a failing disk
// from a failing reader (io.Copy returns either).
type failWriter struct {
	w   io.Writer
	err error
}

func (f *failWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		f.err = err
	}
	return n, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Open opens key for reading (an *os.File).
func (l *Local) Open(key string) (io.ReadCloser, error) {
	p, err := l.Path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", key, err)
	}
	return f, nil
}

// Stat returns key's size; Local records no sha256.
func (l *Local) Stat(key string) (Info, error) {
	p, err := l.Path(key)
	if err != nil {
		return Info{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return Info{}, fmt.Errorf("stat blob %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		return Info{}, fmt.Errorf("stat blob %s: not a regular file: %w", key, fs.ErrNotExist)
	}
	return Info{Size: fi.Size()}, nil
}

// LocalPath returns the file of key (Path), once it exists.
func (l *Local) LocalPath(key string) (string, error) {
	p, err := l.Path(key)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("blob %s: %w", key, err)
	}
	return p, nil
}

// PutFile moves the file at path under key: synced, then renamed into
// place (same file system) and the directory synced, or else copied
// through Put (synced, verified, renamed) and removed. Errors name the key
// and wrap the cause; on error path is left where it was.
func (l *Local) PutFile(key, path, sum string) (string, int64, error) {
	dst, err := l.Path(key)
	if err != nil {
		return "", 0, err
	}
	sum, n, err := fileSum(path, sum)
	if err != nil {
		return "", 0, fmt.Errorf("put %s: %w", key, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", 0, fmt.Errorf("put %s: create its directory: %w", key, err)
	}
	// The writer need not have synced the file: a record about to point at
	// it must not point at bytes a crash can still lose.
	if err := syncDir(path); err != nil {
		return "", 0, fmt.Errorf("put %s: sync %s: %w", key, path, err)
	}
	if err := os.Rename(path, dst); err == nil {
		if err := syncDir(filepath.Dir(dst)); err != nil {
			return "", 0, fmt.Errorf("put %s: sync its directory: %w", key, err)
		}
		return sum, n, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("put %s: %w", key, err)
	}
	defer f.Close()
	got, gotN, err := l.Put(key, f)
	if err != nil {
		return "", 0, err
	}
	if got != sum || gotN != n {
		return "", 0, fmt.Errorf("put %s: stored %d bytes with sha256 %s, the file had %d with %s", key, gotN, got, n, sum)
	}
	os.Remove(path)
	return sum, n, nil
}

// fileSum is the sha256 and size of the file at path: sum, when the
// caller gives it, with the file's size; else read and hashed.
func fileSum(path, sum string) (string, int64, error) {
	if sum == "" {
		return FileSHA256(path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", 0, err
	}
	return sum, fi.Size(), nil
}

// FileSHA256 returns the hex sha256 of a file.
func FileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
