// Package blobtest is the contract every blob.Store keeps, as a test suite
// (Run), and a SeaweedFS server for running it against S3 (StartSeaweedFS).
package blobtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
)

// Options tunes Run.
type Options struct {
	// LargeBytes is the size of the streamed object (default 64 MiB).
	LargeBytes int64
}

// Run runs the contract against stores newStore makes; each call must
// return an empty store of its own.
func Run(t *testing.T, newStore func(t *testing.T) blob.Store, opts Options) {
	if opts.LargeBytes == 0 {
		opts.LargeBytes = 64 << 20
	}
	t.Run("RoundTrip", func(t *testing.T) {
		s := newStore(t)
		data := []byte("hello, blobs\n")
		sum, n, err := s.Put("a/b/c.txt", bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if want := hexSum(data); sum != want || n != int64(len(data)) {
			t.Fatalf("Put = %s, %d; want %s, %d", sum, n, want, len(data))
		}
		if got := readAll(t, s, "a/b/c.txt"); !bytes.Equal(got, data) {
			t.Fatalf("Open read %q, want %q", got, data)
		}
		// A leading slash names the same key.
		if got := readAll(t, s, "/a/b/c.txt"); !bytes.Equal(got, data) {
			t.Fatalf("Open(/a/b/c.txt) read %q, want %q", got, data)
		}
		info, err := s.Stat("a/b/c.txt")
		if err != nil {
			t.Fatal(err)
		}
		if info.Size != n || (info.SHA256 != "" && info.SHA256 != sum) {
			t.Fatalf("Stat = %+v, want size %d sha256 %s", info, n, sum)
		}
		checkLocal(t, s, "a/b/c.txt", sum, n)
	})
	t.Run("Empty", func(t *testing.T) {
		s := newStore(t)
		sum, n, err := s.Put("empty", strings.NewReader(""))
		if err != nil || n != 0 || sum != hexSum(nil) {
			t.Fatalf("Put empty = %s, %d, %v", sum, n, err)
		}
		if got := readAll(t, s, "empty"); len(got) != 0 {
			t.Fatalf("read %d bytes of an empty blob", len(got))
		}
		checkLocal(t, s, "empty", sum, 0)
	})
	t.Run("Overwrite", func(t *testing.T) {
		s := newStore(t)
		if _, _, err := s.Put("k", strings.NewReader("first")); err != nil {
			t.Fatal(err)
		}
		checkLocal(t, s, "k", hexSum([]byte("first")), 5)
		sum, n, err := s.Put("k", strings.NewReader("second!"))
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, s, "k"); string(got) != "second!" {
			t.Fatalf("read %q after overwrite", got)
		}
		checkLocal(t, s, "k", sum, n)
	})
	t.Run("FailedPutKeepsOld", func(t *testing.T) {
		s := newStore(t)
		if _, _, err := s.Put("k", strings.NewReader("old")); err != nil {
			t.Fatal(err)
		}
		cause := errors.New("reader broke")
		_, _, err := s.Put("k", io.MultiReader(strings.NewReader("new bytes, half"), &errReader{cause}))
		if !errors.Is(err, cause) {
			t.Fatalf("Put with a failing reader: %v, want it to wrap %v", err, cause)
		}
		if got := readAll(t, s, "k"); string(got) != "old" {
			t.Fatalf("read %q after a failed Put, want the old bytes", got)
		}
		checkLocal(t, s, "k", hexSum([]byte("old")), 3)
	})
	t.Run("PutFile", func(t *testing.T) {
		s := newStore(t)
		data := bytes.Repeat([]byte("checkpoint "), 10000)
		putFileAndCheck(t, s, "runs/r/stage1/step-3.safetensors", data, "")
		// A missing file fails and stores nothing.
		if _, _, err := s.PutFile("other", filepath.Join(t.TempDir(), "none"), ""); err == nil {
			t.Fatal("PutFile of a missing file succeeded")
		}
		if _, err := s.Stat("other"); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("Stat after a failed PutFile: %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("PutFileKnownSum", func(t *testing.T) {
		// A caller that hashed the file already passes its sum.
		s := newStore(t)
		data := bytes.Repeat([]byte("step "), 5000)
		putFileAndCheck(t, s, "runs/r/stage1/step-4.safetensors", data, hexSum(data))
	})
	t.Run("Missing", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.Open("no/such"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open: %v, want fs.ErrNotExist", err)
		}
		if _, err := s.Stat("no/such"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Stat: %v, want fs.ErrNotExist", err)
		}
		if _, err := s.LocalPath("no/such"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("LocalPath: %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("InvalidKeys", func(t *testing.T) {
		s := newStore(t)
		for _, k := range []string{"", "/", "../x", "a/../../b", "a/.."} {
			if _, _, err := s.Put(k, strings.NewReader("x")); err == nil {
				t.Errorf("Put(%q) succeeded", k)
			}
			if _, err := s.Open(k); err == nil || errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Open(%q): %v, want a refusal", k, err)
			}
			if _, err := s.LocalPath(k); err == nil || errors.Is(err, fs.ErrNotExist) {
				t.Errorf("LocalPath(%q): %v, want a refusal", k, err)
			}
		}
	})
	t.Run("ShaMismatchSeenByCaller", func(t *testing.T) {
		// A caller that knows the sha256 it wants (a checkpoint row) checks
		// the local file; the store hands it exactly the stored bytes.
		s := newStore(t)
		sum, _, err := s.Put("ck", strings.NewReader("weights v1"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Put("ck", strings.NewReader("weights v2")); err != nil {
			t.Fatal(err)
		}
		p, err := s.LocalPath("ck")
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := blob.FileSHA256(p)
		if err != nil {
			t.Fatal(err)
		}
		if got == sum {
			t.Fatal("the local copy still hashes to the overwritten bytes' sha256")
		}
	})
	t.Run("ConcurrentLocalPath", func(t *testing.T) {
		s := newStore(t)
		data := randomBytes(3<<20, 7)
		sum, n, err := s.Put("shared/key.bin", bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := s.LocalPath("shared/key.bin")
				if err != nil {
					errs <- err
					return
				}
				got, gn, err := blob.FileSHA256(p)
				if err != nil || got != sum || gn != n {
					errs <- fmt.Errorf("local copy %s: %s, %d, %v; want %s, %d", p, got, gn, err, sum, n)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("ConcurrentPuts", func(t *testing.T) {
		s := newStore(t)
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for i := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				data := randomBytes(64<<10, uint64(i))
				key := fmt.Sprintf("crops/train/%02d.png", i)
				sum, _, err := s.Put(key, bytes.NewReader(data))
				if err == nil && sum != hexSum(data) {
					err = fmt.Errorf("%s: sum %s", key, sum)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("LargeStreamed", func(t *testing.T) {
		s := newStore(t)
		size := opts.LargeBytes
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(&prng{r: rand.NewPCG(1, 2)}, size), h)
		sum, n, err := s.Put("big/object.bin", src)
		if err != nil {
			t.Fatal(err)
		}
		if want := hex.EncodeToString(h.Sum(nil)); sum != want || n != size {
			t.Fatalf("Put = %s, %d; want %s, %d", sum, n, want, size)
		}
		rc, err := s.Open("big/object.bin")
		if err != nil {
			t.Fatal(err)
		}
		rh := sha256.New()
		rn, err := io.Copy(rh, rc)
		rc.Close()
		if err != nil || rn != size || hex.EncodeToString(rh.Sum(nil)) != sum {
			t.Fatalf("streamed back %d bytes (%v), want %d with sha256 %s", rn, err, size, sum)
		}
		checkLocal(t, s, "big/object.bin", sum, n)
	})
}

// checkLocal checks that LocalPath gives a file with sum and n.
func checkLocal(t *testing.T, s blob.Store, key, sum string, n int64) {
	t.Helper()
	p, err := s.LocalPath(key)
	if err != nil {
		t.Fatalf("LocalPath(%s): %v", key, err)
	}
	got, gn, err := blob.FileSHA256(p)
	if err != nil || got != sum || gn != n {
		t.Fatalf("LocalPath(%s) = %s: sha256 %s, %d bytes, %v; want %s, %d", key, p, got, gn, err, sum, n)
	}
}

func readAll(t *testing.T, s blob.Store, key string) []byte {
	t.Helper()
	rc, err := s.Open(key)
	if err != nil {
		t.Fatalf("Open(%s): %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	(&prng{r: rand.NewPCG(seed, seed+1)}).Read(b)
	return b
}

// prng is an endless deterministic byte stream.
type prng struct{ r *rand.PCG }

func (p *prng) Read(b []byte) (int, error) {
	for i := 0; i < len(b); i += 8 {
		v := p.r.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return len(b), nil
}

type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }

// putFileAndCheck writes data to a file, moves it into s under key with
// PutFile (knownSum "" or the caller's sha256 of data), and checks the
// answer, that the file is gone, and that Open and LocalPath give data.
func putFileAndCheck(t *testing.T, s blob.Store, key string, data []byte, knownSum string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), filepath.Base(key))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum, n, err := s.PutFile(key, path, knownSum)
	if err != nil {
		t.Fatal(err)
	}
	if sum != hexSum(data) || n != int64(len(data)) {
		t.Fatalf("PutFile = %s, %d; want %s, %d", sum, n, hexSum(data), len(data))
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("PutFile left its file: %v", err)
	}
	if got := readAll(t, s, key); !bytes.Equal(got, data) {
		t.Fatal("Open after PutFile read other bytes")
	}
	checkLocal(t, s, key, sum, n)
}
