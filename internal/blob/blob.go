// Package blob is groundmesh's blob store: images, shards, checkpoints and
// reports addressed by slash-separated keys. The embedded default is a local
// directory; an S3-compatible store can implement the same interface.
package blob

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Local is a blob store rooted at a local directory.
type Local struct {
	Root string
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

// Put writes r to key atomically (temp file + rename) and returns its sha256.
func (l *Local) Put(key string, r io.Reader) (sum string, n int64, err error) {
	p, err := l.Path(key)
	if err != nil {
		return "", 0, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", 0, fmt.Errorf("put %s: %w", key, err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return "", 0, fmt.Errorf("put %s: %w", key, err)
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err = io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, fmt.Errorf("put %s: %w", key, err)
	}
	if err := os.Rename(f.Name(), p); err != nil {
		return "", 0, fmt.Errorf("put %s: %w", key, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Open opens key for reading.
func (l *Local) Open(key string) (*os.File, error) {
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
