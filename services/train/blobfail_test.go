package train_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// TestCheckpointStoreFailureRecordsNothing: when the blob store cannot take
// a checkpoint, the run fails with an error naming the checkpoint's key
// and the cause, and nothing is recorded as if it had been stored: no
// checkpoints row, no checkpoint.saved in the outbox, no file under the
// key, the stage not completed. Once the store takes files again, the same
// run trains to its end.
//
// The store is made unwritable with a regular file where the stage's
// directory goes, which stops root as well as anyone (mode 0555 does not
// stop root); internal/blob's tests cover a full disk and a read-only
// file system.
func TestCheckpointStoreFailureRecordsNothing(t *testing.T) {
	cases := []struct {
		name string
		// block makes the blob store refuse key (a stage's first
		// checkpoint) and returns the cause the error must wrap and how
		// to undo it.
		block func(t *testing.T, path string) (cause error, undo func() error)
	}{
		{
			// MkdirAll of the stage's directory fails.
			name: "a file where the stage's directory goes",
			block: func(t *testing.T, path string) (error, func() error) {
				dir := filepath.Dir(path)
				mustMkdir(t, filepath.Dir(dir))
				if err := os.WriteFile(dir, []byte("not a directory"), 0o644); err != nil {
					t.Fatal(err)
				}
				return syscall.ENOTDIR, func() error { return os.Remove(dir) }
			},
		},
		{
			// The rename fails, and so does the copy through blob.Put
			// at its last step: its temporary file must go too.
			name: "a directory under the key",
			block: func(t *testing.T, path string) (error, func() error) {
				mustMkdir(t, filepath.Join(path, "taken"))
				// rename(2) onto a non-empty directory: ENOTEMPTY or EEXIST.
				return fs.ErrExist, func() error { return os.RemoveAll(path) }
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			svc := e.service(t, computetest.NewToy(computetest.ToyOptions{}))
			req := newRequest(tinySpec([3]int{3, 3, 3}, 3))
			key := fmt.Sprintf("runs/%s/stage1/step-3.safetensors", req.RunID)
			path, err := e.blob.Path(key)
			if err != nil {
				t.Fatal(err)
			}
			cause, undo := c.block(t, path)

			_, err = svc.Train(ctxT(t, time.Minute), req, nil)
			if err == nil {
				t.Fatal("Train succeeded with a blob store that cannot take its checkpoints")
			}
			t.Logf("Train: %v", err)
			if !strings.Contains(err.Error(), key) || !errors.Is(err, cause) {
				t.Errorf("error %q does not name the key %s and the cause (%v)", err, key, cause)
			}
			if n := count(t, e, `SELECT count(*) FROM checkpoints WHERE run_id = $1`, req.RunID); n != 0 {
				t.Errorf("%d checkpoints recorded for a run whose checkpoint was not stored", n)
			}
			if n := count(t, e, `SELECT count(*) FROM outbox WHERE topic = 'checkpoint.saved' AND payload->>'run_id' = $1`, req.RunID); n != 0 {
				t.Errorf("%d checkpoint.saved facts written for a checkpoint that was not stored", n)
			}
			if n := count(t, e, `SELECT count(*) FROM run_stages WHERE run_id = $1 AND status = 'completed'`, req.RunID); n != 0 {
				t.Errorf("%d stages completed", n)
			}
			if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() {
				t.Errorf("a %d-byte file is under the key %s", fi.Size(), key)
			}
			if entries, err := os.ReadDir(filepath.Dir(path)); err == nil {
				for _, en := range entries {
					if strings.HasPrefix(en.Name(), ".tmp-") {
						t.Errorf("temporary file %s left beside the key", en.Name())
					}
				}
			}

			if err := undo(); err != nil {
				t.Fatal(err)
			}
			out, err := svc.Train(ctxT(t, time.Minute), req, nil)
			if err != nil {
				t.Fatalf("Train once the store takes files again: %v", err)
			}
			cs := checkpoints(t, e, req.RunID)
			if len(cs) != 3 || len(out.Checkpoints) != 3 {
				t.Fatalf("checkpoints %+v, answer %+v; want one per stage", cs, out.Checkpoints)
			}
			for _, c := range cs {
				p, err := e.blob.Path(c.Key)
				if err != nil {
					t.Fatal(err)
				}
				if fi, err := os.Stat(p); err != nil || fi.Size() != c.Bytes {
					t.Errorf("checkpoint %s: %v (recorded %d bytes)", c.Key, err, c.Bytes)
				}
			}
		})
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}
