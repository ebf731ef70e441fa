package blob_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/blob/blobtest"
)

// fakeS3 is the least of S3 that blob.S3 uses (path-style PUT, GET and
// HEAD of objects with x-amz-meta-* headers), in memory, for tests that
// need no server. TestS3Contract runs the same suite on SeaweedFS.
type fakeS3 struct {
	mu   sync.Mutex
	objs map[string]fakeObject
	gets int
}

type fakeObject struct {
	data []byte
	meta http.Header
}

func (f *fakeS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Path
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method {
	case http.MethodPut:
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		meta := http.Header{}
		for k, v := range r.Header {
			if strings.HasPrefix(strings.ToLower(k), "x-amz-meta-") {
				meta[k] = v
			}
		}
		f.objs[key] = fakeObject{data: b, meta: meta}
		w.Header().Set("ETag", `"x"`)
	case http.MethodGet, http.MethodHead:
		o, ok := f.objs[key]
		if !ok {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusNotFound)
			if r.Method == http.MethodGet {
				io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>`)
			}
			return
		}
		for k, v := range o.meta {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(o.data)))
		w.Header().Set("ETag", `"x"`)
		if r.Method == http.MethodGet {
			f.gets++
			w.Write(o.data)
		}
	default:
		http.Error(w, "not implemented", http.StatusNotImplemented)
	}
}

func newFake(t *testing.T) (*fakeS3, *httptest.Server) {
	f := &fakeS3{objs: map[string]fakeObject{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

// TestS3ContractFakeServer: the contract on an in-memory fake of S3's
// object API, so that blob.S3's own logic (spooling, metadata, the
// verified cache) is tested where no S3 server is installed.
func TestS3ContractFakeServer(t *testing.T) {
	_, srv := newFake(t)
	n := 0
	blobtest.Run(t, func(t *testing.T) blob.Store {
		n++
		s, err := blob.NewS3(blob.S3Config{Bucket: "b" + strconv.Itoa(n), Prefix: "p", Endpoint: srv.URL,
			AccessKeyID: "k", SecretAccessKey: "s", CacheDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, blobtest.Options{LargeBytes: 8 << 20})
}

// TestS3CacheHit: a verified cache copy is served without a GET; a
// corrupted one is fetched again.
func TestS3CacheHit(t *testing.T) {
	f, srv := newFake(t)
	cache := t.TempDir()
	open := func() *blob.S3 {
		s, err := blob.NewS3(blob.S3Config{Bucket: "b", Endpoint: srv.URL, CacheDir: cache})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	sum, _, err := s.Put("x/y", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.LocalPath("x/y"); err != nil {
			t.Fatal(err)
		}
	}
	if f.gets != 0 {
		t.Fatalf("%d GETs for a key whose cache copy Put left", f.gets)
	}
	p, _ := s.LocalPath("x/y")
	if err := writeFile(p, "PAYLOAD"); err != nil {
		t.Fatal(err)
	}
	p, err = open().LocalPath("x/y") // a new process: hashes the copy, finds it wrong
	if err != nil {
		t.Fatal(err)
	}
	if got, _, _ := blob.FileSHA256(p); got != sum || f.gets != 1 {
		t.Fatalf("after corruption: sha256 %s (want %s), %d GETs (want 1)", got, sum, f.gets)
	}
}

// TestS3ConcurrentColdFetches: coldFetches on the fake server.
func TestS3ConcurrentColdFetches(t *testing.T) {
	_, srv := newFake(t)
	open := func(cache string) *blob.S3 {
		s, err := blob.NewS3(blob.S3Config{Bucket: "b", Endpoint: srv.URL, CacheDir: cache})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	coldFetches(t, open(t.TempDir()), open)
}

// TestOpenURL: the URL forms GROUNDMESH_BLOB_URL takes.
func TestOpenURL(t *testing.T) {
	dir := t.TempDir()
	s, err := blob.OpenURL("file://"+dir+"/blobs", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := s.(*blob.Local); !ok || l.Root != dir+"/blobs" {
		t.Fatalf("file URL gave %T %+v", s, s)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "id")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	s, err = blob.OpenURL("s3://bucket/some/prefix/?endpoint=http://127.0.0.1:8333&region=eu-west-1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if b, ok := s.(*blob.S3); !ok || b.Bucket() != "bucket" {
		t.Fatalf("s3 URL gave %T", s)
	}
	for _, bad := range []string{"s3:///prefix", "s3://b/p?endpont=x", "gs://b/p", "file://host/dir"} {
		if _, err := blob.OpenURL(bad, t.TempDir()); err == nil {
			t.Errorf("OpenURL(%q) succeeded", bad)
		}
	}
}

func writeFile(p, s string) error {
	return os.WriteFile(p, []byte(s), 0o644)
}
