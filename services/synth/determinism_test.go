package synth_test

import (
	"bytes"
	"context"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/services/synth"
	"github.com/groundmesh/groundmesh/services/synth/synthtest"
)

// Same inputs and seed give byte-identical shards, manifest and crops,
// whatever the number of workers; another seed gives another set.
func TestDeterministicShards(t *testing.T) {
	dir := t.TempDir()
	ds, err := synthtest.World(filepath.Join(dir, "world"), synthtest.Options{Seed: 4, Images: 60, Size: 96})
	if err != nil {
		t.Fatal(err)
	}
	build := func(root string, workers int, seed int64) (synth.Manifest, *blob.Local) {
		t.Helper()
		b, err := blob.NewLocal(root)
		if err != nil {
			t.Fatal(err)
		}
		m, err := synth.Build(context.Background(), ds, synth.BuildOptions{DatasetID: "det", Seed: seed, Samples: 2500, Workers: workers, ShardRecords: 300}, b, "det", nil)
		if err != nil {
			t.Fatal(err)
		}
		return m, b
	}
	ma, ba := build(filepath.Join(dir, "a"), 1, 7)
	mb, bb := build(filepath.Join(dir, "b"), 3, 7)
	if ma.ContentHash != mb.ContentHash || ma.ContentHash == "" {
		t.Fatalf("content hash %s vs %s", ma.ContentHash, mb.ContentHash)
	}
	if len(ma.Shards) < 4 {
		t.Fatalf("want several shards, got %d", len(ma.Shards))
	}
	if got, want := tree(t, bb.Root), tree(t, ba.Root); !equalTrees(got, want) {
		t.Fatalf("blob trees differ: %d vs %d files", len(got), len(want))
	}
	for _, s := range ma.Shards {
		p, _ := ba.Path(s.Key)
		data := readFile(t, p)
		// Fixed gzip header: no name (FLG 0) and a zero mtime.
		if data[3] != 0 || !bytes.Equal(data[4:8], []byte{0, 0, 0, 0}) {
			t.Fatalf("shard %s: gzip header % x carries a name or mtime", s.Name, data[:10])
		}
	}
	// Rebuilding over existing crops changes nothing.
	mc, bc := build(filepath.Join(dir, "a"), 2, 7)
	if mc.ContentHash != ma.ContentHash || !equalTrees(tree(t, bc.Root), tree(t, ba.Root)) {
		t.Fatal("rebuild in place changed the set")
	}
	md, _ := build(filepath.Join(dir, "d"), 2, 8)
	if md.ContentHash == ma.ContentHash {
		t.Fatal("another seed gave the same content hash")
	}
}

func tree(t *testing.T, root string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = readFile(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func equalTrees(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
