package blob

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// S3Config names an S3-compatible bucket.
type S3Config struct {
	Bucket string
	// Prefix is put before every key ("runs/x" is stored as
	// "<Prefix>/runs/x"); empty for none.
	Prefix string
	// Endpoint is the server's URL (http://127.0.0.1:8333); empty for
	// AWS's own endpoint of Region. Requests use path-style addressing.
	Endpoint string
	// Region defaults to us-east-1.
	Region string
	// AccessKeyID and SecretAccessKey sign requests; both empty sends
	// them unsigned (a server that allows anonymous access).
	AccessKeyID, SecretAccessKey string
	// CacheDir holds the local copies LocalPath returns and the files
	// Put and PutFile upload. Required.
	CacheDir string
	// Timeout bounds each request (default 10 minutes).
	Timeout time.Duration
}

// MetaSHA256 is the user metadata key (x-amz-meta-sha256) under which S3
// records each object's hex sha256.
const MetaSHA256 = "sha256"

// S3 is a blob store in an S3-compatible bucket. Every object is written
// with its sha256 in its metadata, and every read is checked against it.
// A local cache directory keeps copies for LocalPath; a cached copy is
// used while the object's recorded sha256 (one HEAD request) still
// matches it. Several processes may share the cache: files appear in it
// by rename only.
type S3 struct {
	client  *s3.Client
	bucket  string
	prefix  string
	cache   string
	timeout time.Duration

	mu    sync.Mutex
	locks map[string]*keyLock
	// verified maps a key to the sha256 its cache file was checked to
	// hold, so that a cache hit costs a HEAD and no re-hash.
	verified sync.Map
}

type keyLock struct {
	mu   sync.Mutex
	refs int
}

var _ Store = (*S3)(nil)

// NewS3 returns the store; it does not contact the server.
func NewS3(cfg S3Config) (*S3, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3 blob store: no bucket")
	}
	if cfg.CacheDir == "" {
		return nil, errors.New("s3 blob store: no cache directory")
	}
	cache, err := filepath.Abs(cfg.CacheDir)
	if err != nil {
		return nil, fmt.Errorf("s3 blob cache: %w", err)
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("create s3 blob cache: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Minute
	}
	opts := s3.Options{
		Region:       cfg.Region,
		UsePathStyle: true,
		// Checksums beyond SigV4's payload hash and our sha256 metadata
		// are optional, and not every S3-compatible server takes them.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		RetryMaxAttempts:           5,
	}
	if cfg.Endpoint != "" {
		opts.BaseEndpoint = aws.String(cfg.Endpoint)
	}
	if cfg.AccessKeyID != "" || cfg.SecretAccessKey != "" {
		opts.Credentials = credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, "")
	} else {
		opts.Credentials = aws.AnonymousCredentials{}
	}
	return &S3{
		client: s3.New(opts), bucket: cfg.Bucket, prefix: strings.Trim(cfg.Prefix, "/"),
		cache: cache, timeout: cfg.Timeout, locks: map[string]*keyLock{},
	}, nil
}

// Client is the store's S3 client (tests create buckets with it).
func (s *S3) Client() *s3.Client { return s.client }

// Bucket is the store's bucket.
func (s *S3) Bucket() string { return s.bucket }

// Prefix is the key prefix in the bucket, without slashes around it.
func (s *S3) Prefix() string { return s.prefix }

// CacheDir is the local cache's root.
func (s *S3) CacheDir() string { return s.cache }

// cleanKey checks key as Local.Path does and returns it slash-cleaned,
// without a leading slash.
func cleanKey(key string) (string, error) {
	clean := filepath.ToSlash(filepath.Clean("/" + strings.TrimPrefix(key, "/")))
	if clean == "/" || strings.Contains(key, "..") {
		return "", fmt.Errorf("blob key %q: invalid", key)
	}
	return clean[1:], nil
}

func (s *S3) object(key string) (obj, cachePath string, err error) {
	k, err := cleanKey(key)
	if err != nil {
		return "", "", err
	}
	obj = k
	if s.prefix != "" {
		obj = s.prefix + "/" + k
	}
	return obj, filepath.Join(s.cache, filepath.FromSlash(k)), nil
}

// lock serializes the cache work on one key within the process.
func (s *S3) lock(key string) func() {
	s.mu.Lock()
	l := s.locks[key]
	if l == nil {
		l = &keyLock{}
		s.locks[key] = l
	}
	l.refs++
	s.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.locks, key)
		}
		s.mu.Unlock()
	}
}

func (s *S3) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.timeout)
}

// notFound reports whether err is S3's answer for a missing key.
func notFound(err error) bool {
	var re *awshttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound
}

func (s *S3) wrap(op, key string, err error) error {
	if notFound(err) {
		return fmt.Errorf("%s blob %s: s3://%s: %w", op, key, s.bucket, fs.ErrNotExist)
	}
	return fmt.Errorf("%s blob %s: s3://%s: %w", op, key, s.bucket, err)
}

// Put spools r to a file in the cache (hashing it), uploads that file
// with its sha256, and keeps it as the key's cached copy. An S3 PUT
// replaces the object whole, so readers never see a part.
func (s *S3) Put(key string, r io.Reader) (string, int64, error) {
	_, cp, err := s.object(key)
	if err != nil {
		return "", 0, err
	}
	if err := os.MkdirAll(filepath.Dir(cp), 0o755); err != nil {
		return "", 0, fmt.Errorf("put %s: create its cache directory: %w", key, err)
	}
	f, err := os.CreateTemp(filepath.Dir(cp), ".tmp-*")
	if err != nil {
		return "", 0, fmt.Errorf("put %s: create a cache file: %w", key, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone after the rename
	h := sha256.New()
	fw := &failWriter{w: f}
	n, err := io.Copy(io.MultiWriter(fw, h), r)
	if cerr := f.Close(); err == nil && cerr != nil {
		err, fw.err = cerr, cerr
	}
	if err != nil {
		if fw.err != nil {
			return "", 0, fmt.Errorf("put %s: write the cache file after %d bytes: %w", key, n, err)
		}
		return "", 0, fmt.Errorf("put %s: read the content after %d bytes: %w", key, n, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := s.upload(key, tmp, sum, n); err != nil {
		return "", 0, err
	}
	s.adopt(key, tmp, cp, sum)
	return sum, n, nil
}

// PutFile uploads the file at path and moves it into the cache as the
// key's copy (or removes it where it cannot be renamed there).
func (s *S3) PutFile(key, path, sum string) (string, int64, error) {
	_, cp, err := s.object(key)
	if err != nil {
		return "", 0, err
	}
	sum, n, err := fileSum(path, sum)
	if err != nil {
		return "", 0, fmt.Errorf("put %s: %w", key, err)
	}
	if err := s.upload(key, path, sum, n); err != nil {
		return "", 0, err
	}
	if err := os.MkdirAll(filepath.Dir(cp), 0o755); err != nil {
		os.Remove(path)
		return sum, n, nil
	}
	s.adopt(key, path, cp, sum)
	os.Remove(path) // where the rename failed
	return sum, n, nil
}

// adopt renames a file known to hold sum into the cache as key's copy.
func (s *S3) adopt(key, from, cp, sum string) {
	unlock := s.lock(key)
	defer unlock()
	if err := os.Rename(from, cp); err == nil {
		s.verified.Store(key, sum)
	} else {
		s.verified.Delete(key)
	}
}

// upload PUTs the file at path under key with its sha256 in the metadata.
// SigV4 signs the body's sha256 (x-amz-content-sha256), which the server
// checks against what it received.
func (s *S3) upload(key, path, sum string, n int64) error {
	obj, _, err := s.object(key)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer f.Close()
	ctx, cancel := s.ctx()
	defer cancel()
	_, err = s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(s.bucket), Key: aws.String(obj), Body: f, ContentLength: aws.Int64(n),
		Metadata: map[string]string{MetaSHA256: sum},
	})
	if err != nil {
		return fmt.Errorf("put %s: upload %d bytes to s3://%s/%s: %w", key, n, s.bucket, obj, err)
	}
	return nil
}

// Open streams key from the bucket; reading to the end checks the bytes
// against the recorded sha256 and size.
func (s *S3) Open(key string) (io.ReadCloser, error) {
	obj, _, err := s.object(key)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.ctx()
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(obj)})
	if err != nil {
		cancel()
		return nil, s.wrap("open", key, err)
	}
	return &verifyReader{key: key, rc: out.Body, cancel: cancel, h: sha256.New(),
		want: out.Metadata[MetaSHA256], size: aws.ToInt64(out.ContentLength)}, nil
}

// verifyReader hashes what is read and fails at the end on a mismatch.
type verifyReader struct {
	key    string
	rc     io.ReadCloser
	cancel context.CancelFunc
	h      hash.Hash
	n      int64
	want   string
	size   int64
}

func (v *verifyReader) Read(p []byte) (int, error) {
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if err == io.EOF {
		if v.size > 0 && v.n != v.size {
			return n, fmt.Errorf("read blob %s: %d bytes, the object has %d: %w", v.key, v.n, v.size, io.ErrUnexpectedEOF)
		}
		if got := hex.EncodeToString(v.h.Sum(nil)); v.want != "" && got != v.want {
			return n, fmt.Errorf("read blob %s: its bytes hash to %s, recorded %s", v.key, got, v.want)
		}
	}
	return n, err
}

func (v *verifyReader) Close() error {
	err := v.rc.Close()
	v.cancel()
	return err
}

// Stat HEADs key.
func (s *S3) Stat(key string) (Info, error) {
	obj, _, err := s.object(key)
	if err != nil {
		return Info{}, err
	}
	ctx, cancel := s.ctx()
	defer cancel()
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(obj)})
	if err != nil {
		return Info{}, s.wrap("stat", key, err)
	}
	return Info{Size: aws.ToInt64(out.ContentLength), SHA256: out.Metadata[MetaSHA256]}, nil
}

// LocalPath returns the cached copy of key: kept while its sha256 is the
// one the object records (checked by hashing once per process), else
// downloaded to a temporary file, checked against the recorded sha256 and
// size, and renamed into place.
func (s *S3) LocalPath(key string) (string, error) {
	_, cp, err := s.object(key)
	if err != nil {
		return "", err
	}
	unlock := s.lock(key)
	defer unlock()
	info, err := s.Stat(key)
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(cp); err == nil && fi.Mode().IsRegular() && fi.Size() == info.Size && info.SHA256 != "" {
		if v, ok := s.verified.Load(key); ok && v.(string) == info.SHA256 {
			return cp, nil
		}
		if got, _, err := FileSHA256(cp); err == nil && got == info.SHA256 {
			s.verified.Store(key, got)
			return cp, nil
		}
	}
	s.verified.Delete(key)
	if err := os.MkdirAll(filepath.Dir(cp), 0o755); err != nil {
		return "", fmt.Errorf("fetch blob %s: create its cache directory: %w", key, err)
	}
	rc, err := s.Open(key)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	f, err := os.CreateTemp(filepath.Dir(cp), ".tmp-*")
	if err != nil {
		return "", fmt.Errorf("fetch blob %s: %w", key, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = io.Copy(f, rc) // verifyReader checks the sha256 and size at the end
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("fetch blob %s: %w", key, err)
	}
	vr := rc.(*verifyReader)
	sum := hex.EncodeToString(vr.h.Sum(nil))
	if err := os.Rename(tmp, cp); err != nil {
		return "", fmt.Errorf("fetch blob %s: rename into the cache: %w", key, err)
	}
	s.verified.Store(key, sum)
	return cp, nil
}
