package blob_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/blob/blobtest"
)

// TestLocalContract: the local directory keeps the blob.Store contract.
func TestLocalContract(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store {
		s, err := blob.NewLocal(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, blobtest.Options{})
}

// TestS3Contract: blob.S3 keeps the contract against a real S3-compatible
// server (SeaweedFS, installed by `make seaweedfs`; skipped without it).
// Its Verifies subtests (on the same server, which takes ~25 s to start
// on 2 cores) check what S3 adds: bytes that do not match the sha256
// recorded with the object are refused, a corrupted cache copy is fetched
// again, and a cache shared by two stores (processes) stays right.
func TestS3Contract(t *testing.T) {
	sw := blobtest.StartSeaweedFS(t)
	blobtest.Run(t, func(t *testing.T) blob.Store { return sw.Store(t) }, blobtest.Options{})
	t.Run("Verifies", func(t *testing.T) { s3Verifies(t, sw) })
}

func s3Verifies(t *testing.T, sw *blobtest.SeaweedFS) {
	s := sw.Store(t)
	sum, _, err := s.Put("runs/r/step-1.safetensors", strings.NewReader("good weights"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("corrupted cache copy is fetched again", func(t *testing.T) {
		p, err := s.LocalPath("runs/r/step-1.safetensors")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("bad! weights"), 0o644); err != nil { // same size
			t.Fatal(err)
		}
		// A fresh store over the same cache has not verified the file yet.
		s2 := sameCache(t, sw, s)
		p2, err := s2.LocalPath("runs/r/step-1.safetensors")
		if err != nil {
			t.Fatal(err)
		}
		if got, _, _ := blob.FileSHA256(p2); got != sum {
			t.Fatalf("cache copy hashes to %s after a refetch, want %s", got, sum)
		}
	})

	t.Run("object whose bytes differ from its recorded sha256", func(t *testing.T) {
		bucket, obj := bucketOf(t, s), s.Prefix()+"/runs/r/forged.bin"
		_, err := s.Client().PutObject(context.Background(), &s3.PutObjectInput{
			Bucket: aws.String(bucket), Key: aws.String(obj), Body: bytes.NewReader([]byte("forged")),
			Metadata: map[string]string{blob.MetaSHA256: sum},
		})
		if err != nil {
			t.Fatal(err)
		}
		rc, err := s.Open("runs/r/forged.bin")
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(rc)
		rc.Close()
		if err == nil || !strings.Contains(err.Error(), "hash") {
			t.Fatalf("reading forged bytes: %v, want a sha256 mismatch", err)
		}
		if p, err := s.LocalPath("runs/r/forged.bin"); err == nil {
			t.Fatalf("LocalPath of forged bytes gave %s", p)
		}
		cp := filepath.Join(s.CacheDir(), "runs", "r", "forged.bin")
		if _, err := os.Stat(cp); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("forged bytes in the cache: %v", err)
		}
		entries, _ := os.ReadDir(filepath.Dir(cp))
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				t.Errorf("temporary file %s left in the cache", e.Name())
			}
		}
	})

	t.Run("concurrent cold fetches into one shared cache", func(t *testing.T) {
		coldFetches(t, s, func(cache string) *blob.S3 {
			c, err := blob.NewS3(blob.S3Config{Bucket: s.Bucket(), Prefix: s.Prefix(), Endpoint: sw.Endpoint,
				AccessKeyID: sw.AccessKeyID, SecretAccessKey: sw.SecretAccessKey, CacheDir: cache})
			if err != nil {
				t.Fatal(err)
			}
			return c
		})
	})

	t.Run("wrong credentials are refused", func(t *testing.T) {
		bad, err := blob.NewS3(blob.S3Config{Bucket: s.Bucket(), Prefix: s.Prefix(), Endpoint: sw.Endpoint,
			AccessKeyID: sw.AccessKeyID, SecretAccessKey: "not-the-secret", CacheDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := bad.Put("intruder", strings.NewReader("x")); err == nil {
			t.Fatal("Put signed with the wrong secret succeeded")
		}
		if _, err := bad.Stat("runs/r/step-1.safetensors"); err == nil {
			t.Fatal("Stat signed with the wrong secret succeeded")
		}
	})

	t.Run("stale cache copy after another writer", func(t *testing.T) {
		if _, _, err := s.Put("shared", strings.NewReader("v1")); err != nil {
			t.Fatal(err)
		}
		// Another worker (its own cache) replaces the object.
		w, err := blob.NewS3(blob.S3Config{Bucket: bucketOf(t, s), Prefix: s.Prefix(), Endpoint: sw.Endpoint,
			AccessKeyID: sw.AccessKeyID, SecretAccessKey: sw.SecretAccessKey, CacheDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		sum2, _, err := w.Put("shared", strings.NewReader("v2"))
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.LocalPath("shared")
		if err != nil {
			t.Fatal(err)
		}
		if got, _, _ := blob.FileSHA256(p); got != sum2 {
			t.Fatalf("LocalPath kept the stale copy (%s), want %s", got, sum2)
		}
	})
}

// sameCache is another store over s's bucket and cache directory, as a
// second process on the same machine would open it.
func sameCache(t *testing.T, sw *blobtest.SeaweedFS, s *blob.S3) *blob.S3 {
	t.Helper()
	s2, err := blob.NewS3(blob.S3Config{Bucket: s.Bucket(), Prefix: s.Prefix(), Endpoint: sw.Endpoint,
		AccessKeyID: sw.AccessKeyID, SecretAccessKey: sw.SecretAccessKey, CacheDir: s.CacheDir()})
	if err != nil {
		t.Fatal(err)
	}
	return s2
}

func bucketOf(t *testing.T, s *blob.S3) string { return s.Bucket() }

// coldFetches has four stores over one empty cache directory (four
// worker processes on a machine) fetch the same object from eight
// goroutines each: every caller must get a file with the object's bytes,
// and no temporary file may be left.
func coldFetches(t *testing.T, writer *blob.S3, open func(cache string) *blob.S3) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	sum, _, err := writer.Put("cold/object.bin", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 4 {
		st := open(cache)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := st.LocalPath("cold/object.bin")
				if err == nil {
					var got string
					if got, _, err = blob.FileSHA256(p); err == nil && got != sum {
						err = fmt.Errorf("%s hashes to %s, want %s", p, got, sum)
					}
				}
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	_ = filepath.WalkDir(cache, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("temporary file left in the cache: %s", p)
		}
		return nil
	})
}
