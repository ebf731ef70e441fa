package blobtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/groundmesh/groundmesh/internal/blob"
)

// SeaweedFS is a running `weed server -s3` for tests.
type SeaweedFS struct {
	// Endpoint is its S3 API (http://127.0.0.1:port).
	Endpoint string
	// AccessKeyID and SecretAccessKey are its admin identity's.
	AccessKeyID, SecretAccessKey string

	once   sync.Once
	bucket string // Store's
}

// WeedBinary finds the weed binary: $GROUNDMESH_WEED, then
// ~/.cache/groundmesh/bin/weed (where `make seaweedfs` installs it), then
// PATH. Empty when there is none.
func WeedBinary() string {
	if p := os.Getenv("GROUNDMESH_WEED"); p != "" {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".cache", "groundmesh", "bin", "weed")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	if p, err := exec.LookPath("weed"); err == nil {
		return p
	}
	return ""
}

// StartSeaweedFS starts a SeaweedFS server (master, volume, filer, S3
// gateway) on free loopback ports over a temporary directory, waits until
// its S3 API answers, and stops it when the test ends. It skips the test
// when no weed binary is installed (`make seaweedfs`).
func StartSeaweedFS(t testing.TB) *SeaweedFS {
	t.Helper()
	bin := WeedBinary()
	if bin == "" {
		t.Skip("no SeaweedFS weed binary (make seaweedfs installs it into ~/.cache/groundmesh/bin)")
	}
	var lastErr error
	for range 3 {
		sw, err := startWeed(t, bin)
		if err == nil {
			return sw
		}
		lastErr = err
	}
	t.Fatalf("start SeaweedFS: %v", lastErr)
	return nil
}

var portBase atomic.Int32

// freePorts returns n consecutive free loopback ports whose +10000
// neighbours (SeaweedFS's derived gRPC ports) are free too.
func freePorts(n int) (int, error) {
	if portBase.Load() == 0 {
		portBase.Store(int32(20000 + os.Getpid()%5000*2))
	}
	for range 200 {
		base := int(portBase.Add(int32(n)))
		if base+n >= 30000 {
			portBase.Store(20000)
			continue
		}
		ok := true
		for p := base; p < base+n && ok; p++ {
			for _, q := range []int{p, p + 10000} {
				l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(q))
				if err != nil {
					ok = false
					break
				}
				l.Close()
			}
		}
		if ok {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no %d free ports", n)
}

func startWeed(t testing.TB, bin string) (*SeaweedFS, error) {
	dir, err := os.MkdirTemp("", "seaweedfs-")
	if err != nil {
		return nil, err
	}
	p, err := freePorts(8)
	if err != nil {
		return nil, err
	}
	sw := &SeaweedFS{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", p+6), AccessKeyID: "groundmesh", SecretAccessKey: "groundmesh-secret"}
	args := []string{"server", "-s3", "-filer",
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir=" + dir,
		"-master.port=" + strconv.Itoa(p), "-master.port.grpc=" + strconv.Itoa(p+1),
		"-volume.port=" + strconv.Itoa(p+2), "-volume.port.grpc=" + strconv.Itoa(p+3),
		"-filer.port=" + strconv.Itoa(p+4), "-filer.port.grpc=" + strconv.Itoa(p+5),
		"-s3.port=" + strconv.Itoa(p+6), "-s3.port.grpc=" + strconv.Itoa(p+7),
		"-s3.port.iceberg=0", "-s3.port.lance=0",
		"-filer.localSocket=" + filepath.Join(dir, "filer.sock"), "-s3.localSocket=" + filepath.Join(dir, "s3.sock"),
		"-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-volume.max=0",
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+sw.AccessKeyID, "AWS_SECRET_ACCESS_KEY="+sw.SecretAccessKey)
	logf, err := os.Create(filepath.Join(dir, "weed.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL} // no server outlives a killed test
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		}
		select {
		case <-exited:
		case <-time.After(2 * time.Second): // its data is thrown away: no need to wait for a clean stop
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "weed.log")); err == nil {
				t.Logf("weed log (tail):\n%s", tail(b, 4000))
			}
		}
		os.RemoveAll(dir)
		// weed's gRPC sockets, named by port, outlive a killed server.
		for q := p; q < p+8; q++ {
			socks, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("seaweedfs-*-grpc-%d.sock", q)))
			for _, f := range socks {
				os.Remove(f)
			}
		}
	}
	// Ready when a bucket can be created and an object written in it.
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			stop()
			b, _ := os.ReadFile(filepath.Join(dir, "weed.log"))
			return nil, fmt.Errorf("weed exited (%v): %s", err, tail(b, 2000))
		default:
		}
		if err := sw.probe(); err == nil {
			break
		} else if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("SeaweedFS S3 not ready after 90s: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Cleanup(stop)
	return sw, nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// probe creates a bucket and writes, reads and deletes an object.
func (sw *SeaweedFS) probe() error {
	if _, err := http.Get(sw.Endpoint); err != nil {
		return err
	}
	c := sw.client()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sw.createBucket(ctx, c, "probe"); err != nil {
		return err
	}
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("probe"), Key: aws.String("p"), Body: bytes.NewReader([]byte("ok")), ContentLength: aws.Int64(2)}); err != nil {
		return fmt.Errorf("probe put: %w", err)
	}
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("probe"), Key: aws.String("p")})
	if err != nil {
		return fmt.Errorf("probe get: %w", err)
	}
	out.Body.Close()
	return nil
}

func (sw *SeaweedFS) client() *s3.Client {
	st, err := blob.NewS3(blob.S3Config{Bucket: "x", Endpoint: sw.Endpoint, AccessKeyID: sw.AccessKeyID, SecretAccessKey: sw.SecretAccessKey, CacheDir: os.TempDir()})
	if err != nil {
		panic(err)
	}
	return st.Client()
}

func (sw *SeaweedFS) createBucket(ctx context.Context, c *s3.Client, name string) error {
	if _, err := c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(name)}); err == nil {
		return nil
	}
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	return nil
}

var bucketSeq atomic.Int64

// NewBucket creates an empty bucket and returns its name.
func (sw *SeaweedFS) NewBucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("gm-%d-%d", os.Getpid(), bucketSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sw.createBucket(ctx, sw.client(), name); err != nil {
		t.Fatal(err)
	}
	return name
}

// URL is the GROUNDMESH_BLOB_URL of bucket/prefix on this server; the
// credentials go in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (SetEnv).
func (sw *SeaweedFS) URL(bucket, prefix string) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s&region=us-east-1", bucket, prefix, sw.Endpoint)
}

// SetEnv sets the AWS credential variables for the test.
func (sw *SeaweedFS) SetEnv(t testing.TB) {
	t.Setenv("AWS_ACCESS_KEY_ID", sw.AccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", sw.SecretAccessKey)
}

// Store returns an S3 store under a new prefix of one bucket of this
// server (a bucket each would make SeaweedFS grow volumes for each), with
// its cache in a temporary directory.
func (sw *SeaweedFS) Store(t testing.TB) *blob.S3 {
	t.Helper()
	sw.once.Do(func() { sw.bucket = sw.NewBucket(t) })
	if sw.bucket == "" {
		t.Fatal("no bucket")
	}
	s, err := blob.NewS3(blob.S3Config{
		Bucket: sw.bucket, Prefix: fmt.Sprintf("store-%d/groundmesh", bucketSeq.Add(1)), Endpoint: sw.Endpoint, Region: "us-east-1",
		AccessKeyID: sw.AccessKeyID, SecretAccessKey: sw.SecretAccessKey, CacheDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
