package stack

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/blob/blobtest"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/testutil"
	"github.com/groundmesh/groundmesh/model"
)

// TestPipelineOnS3Blobs runs the small pipeline with its blob store on a
// SeaweedFS bucket (GROUNDMESH_BLOB_URL=s3://...): synthesis writes its
// shards, crops and manifest there, training hands the plugin checkpoint
// paths from the local cache and publishes what the plugin writes, and
// evaluation reads checkpoints and crops and writes its predictions there.
// Every recorded blob must be in the bucket with its recorded sha256, as a
// second worker with an empty cache reads it, and the data directory must
// hold no blob store of its own, only the cache.
func TestPipelineOnS3Blobs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline; skipped with -short")
	}
	sw := blobtest.StartSeaweedFS(t)
	sw.SetEnv(t)
	bucket := sw.NewBucket(t)
	plugins := pluginDir(t)
	dataDir := t.TempDir()
	s, _, _ := testStack(t, func(c *Config) {
		c.DataDir = dataDir
		c.PluginDir = plugins
		c.BlobURL = sw.URL(bucket, "gm")
	})
	if _, ok := s.Blob.(*blob.S3); !ok {
		t.Fatalf("the stack's blob store is a %T, want *blob.S3", s.Blob)
	}
	ctx, run := startPipeline(t, s, "s3-blobs", testutil.SmallPipeline(17))
	res := pipelineDone(t, ctx, run, "on S3 blobs")
	t.Logf("pipeline on S3: checkpoints %v", res.Checkpoints)

	// What the database records, read back by another worker (an empty
	// cache of its own) from the bucket.
	other, err := blob.OpenURL(sw.URL(bucket, "gm"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{} // key -> sha256
	for _, q := range []string{
		`SELECT blob_key, sha256 FROM checkpoints`,
		`SELECT predictions_key, predictions_sha256 FROM evaluations WHERE predictions_key <> ''`,
	} {
		rows, err := s.Pool.Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var k, sum string
			if err := rows.Scan(&k, &sum); err != nil {
				t.Fatal(err)
			}
			want[k] = sum
		}
		rows.Close()
	}
	var ckpts, preds int
	for k, sum := range want {
		switch {
		case strings.HasPrefix(k, "runs/"):
			ckpts++
		case strings.HasPrefix(k, "evals/"):
			preds++
		}
		info, err := other.Stat(k)
		if err != nil {
			t.Errorf("recorded blob %s: %v", k, err)
			continue
		}
		if info.SHA256 != sum {
			t.Errorf("recorded blob %s: the bucket records sha256 %s, the database %s", k, info.SHA256, sum)
		}
		p, err := other.LocalPath(k)
		if err != nil {
			t.Errorf("fetch %s: %v", k, err)
			continue
		}
		if got, _, err := blob.FileSHA256(p); err != nil || got != sum {
			t.Errorf("fetched %s: sha256 %s (%v), recorded %s", k, got, err, sum)
		}
	}
	if ckpts < 3 || preds == 0 {
		t.Errorf("%d checkpoints and %d predictions files recorded; want at least 3 and 1", ckpts, preds)
	}
	var manifest string
	if err := s.Pool.QueryRow(ctx, `SELECT manifest_key FROM synth_sets WHERE manifest_key <> '' LIMIT 1`).Scan(&manifest); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Stat(manifest); err != nil {
		t.Errorf("synth manifest %s: %v", manifest, err)
	}
	// The bucket holds the synth set's shards and crops, the runs'
	// tokenizers and checkpoints and the predictions, under the prefix.
	c := s.Blob.(*blob.S3).Client()
	count := map[string]int{}
	var token *string
	for {
		out, err := c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String("gm/"), ContinuationToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range out.Contents {
			k := strings.TrimPrefix(aws.ToString(o.Key), "gm/")
			switch {
			case strings.HasSuffix(k, ".safetensors"):
				count["checkpoints"]++
			case strings.HasSuffix(k, "tokenizer.json"):
				count["tokenizers"]++
			case strings.HasPrefix(k, "synth/") && strings.Contains(k, "/crops/"):
				count["crops"]++
			case strings.HasPrefix(k, "synth/"):
				count["synth shards and manifests"]++
			case strings.HasPrefix(k, "evals/"):
				count["eval files"]++
			default:
				count["other"]++
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			break
		}
		token = out.NextContinuationToken
	}
	t.Logf("objects in the bucket: %v", count)
	for _, kind := range []string{"checkpoints", "tokenizers", "synth shards and manifests", "eval files"} {
		if count[kind] == 0 {
			t.Errorf("no %s in the bucket", kind)
		}
	}
	// The data directory has no blob store, only the cache.
	if _, err := os.Stat(filepath.Join(dataDir, "blobs")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a local blob store under the data dir: %v", err)
	}
	cached := 0
	_ = filepath.WalkDir(filepath.Join(dataDir, "blobcache"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			cached++
		}
		return nil
	})
	if cached == 0 {
		t.Error("nothing in the blob cache")
	}
	noTempFiles(t, filepath.Join(dataDir, "blobcache"))

	// A second worker on another machine (its own data dir, an empty
	// cache) exports the final checkpoint: it fetches the checkpoint and
	// tokenizer from the bucket, checks them against their recorded
	// sha256, and uploads the export.
	dataDir2 := t.TempDir()
	s2, err := Start(ctx, Config{DataDir: dataDir2, DatabaseURL: s.cfg.DatabaseURL, BlobURL: sw.URL(bucket, "gm"),
		Offline: true, HTTPAddr: "off", PluginDir: plugins, Logger: s.Logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s2.Close(context.Background()) })
	x, err := s2.Services.Train.Export(ctx, events.ExportRequested{CheckpointID: res.Checkpoints["stage3"], Format: "gguf", Dtype: model.DtypeF32})
	if err != nil {
		t.Fatalf("export on a second worker: %v", err)
	}
	if info, err := other.Stat(x.BlobKey); err != nil || info.SHA256 != x.SHA256 {
		t.Errorf("export %s in the bucket: %+v, %v; want sha256 %s", x.BlobKey, info, err, x.SHA256)
	}
	var final string
	if err := s.Pool.QueryRow(ctx, `SELECT blob_key FROM checkpoints WHERE id = $1`, res.Checkpoints["stage3"]).Scan(&final); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dataDir2, "blobcache", filepath.FromSlash(final))); err != nil {
		t.Errorf("the second worker's cache has no copy of the checkpoint it exported: %v", err)
	}
	t.Logf("second worker exported %s (%d bytes) from the bucket", x.BlobKey, x.Bytes)
}
