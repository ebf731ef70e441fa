package blob

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// OpenURL opens the store a URL names (GROUNDMESH_BLOB_URL):
//
//	file:///abs/dir    a Local store rooted at /abs/dir
//	s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1
//	                   an S3 store (path-style requests; AWS's endpoint of
//	                   region when endpoint is absent), signed with
//	                   AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the
//	                   environment, its cache under cacheDir
//
// A bare path is a Local store too.
func OpenURL(raw, cacheDir string) (Store, error) {
	if !strings.Contains(raw, "://") {
		return NewLocal(raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("blob url: %w", err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("blob url %q: a file URL names a local path (file:///abs/dir)", raw)
		}
		if u.Path == "" {
			return nil, fmt.Errorf("blob url %q: no directory", raw)
		}
		return NewLocal(filepath.FromSlash(u.Path))
	case "s3":
		if u.Host == "" {
			return nil, fmt.Errorf("blob url %q: no bucket", raw)
		}
		q := u.Query()
		for k := range q {
			if k != "endpoint" && k != "region" {
				return nil, fmt.Errorf("blob url %q: unknown parameter %q (endpoint, region)", raw, k)
			}
		}
		return NewS3(S3Config{
			Bucket: u.Host, Prefix: strings.Trim(u.Path, "/"),
			Endpoint: q.Get("endpoint"), Region: q.Get("region"),
			AccessKeyID: os.Getenv("AWS_ACCESS_KEY_ID"), SecretAccessKey: os.Getenv("AWS_SECRET_ACCESS_KEY"),
			CacheDir: cacheDir,
		})
	default:
		return nil, fmt.Errorf("blob url %q: scheme %q (file or s3)", raw, u.Scheme)
	}
}
