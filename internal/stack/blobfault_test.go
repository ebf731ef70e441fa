package stack

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/testutil"
	"github.com/groundmesh/groundmesh/workflows"
)

// TestBlobStoreFailsDuringTrainingAndEvaluation: the blob store is a small
// tmpfs. It is remounted read-only once training has stored its first
// checkpoint, and filled to the last byte once training has completed, so
// that a later checkpoint and then evaluation's predictions meet the fault
// in the middle of their work (not before synthesis, which
// TestFullBlobDiskMidPipeline covers). Each failure must name its cause,
// record nothing whose bytes are not in the store, and leave the activity
// to retry once the store takes files again; the Pipeline then completes
// with every recorded checkpoint and predictions file present and equal to
// its recorded sha256.
func TestBlobStoreFailsDuringTrainingAndEvaluation(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline; skipped with -short")
	}
	t.Parallel()
	plugins := pluginDir(t)
	dataDir := t.TempDir()
	blobs := filepath.Join(dataDir, "blobs")
	mountSmallDisk(t, blobs, "64m")

	logs := &lockedBuffer{}
	s, _, _ := testStack(t, func(c *Config) {
		c.DataDir = dataDir
		c.PluginDir = plugins
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("warnings and errors of the stack:\n%s", logs)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	run, err := s.Temporal.ExecuteWorkflow(ctx, clientOpts("blob-faults"), workflows.PipelineWorkflowName, testutil.SmallPipeline(13))
	if err != nil {
		t.Fatalf("start pipeline: %v", err)
	}

	// Training: read-only from the first stored checkpoint on. Every stage
	// writes at least two more, so some checkpoint meets the read-only store.
	waitUntil(t, 4*time.Minute, "the first checkpoint", func() bool {
		return count(t, s.Pool, `SELECT count(*) FROM checkpoints`) > 0
	})
	remount(t, blobs, "ro")
	waitUntil(t, 2*time.Minute, "training to fail on the read-only store", func() bool {
		return strings.Contains(logs.String(), "read-only file system")
	})
	why := logs.lineWith("read-only file system")
	stored := count(t, s.Pool, `SELECT count(*) FROM checkpoints`)
	t.Logf("training on the read-only store (%d checkpoints stored before): %s", stored, why)
	if !strings.Contains(why, "store checkpoint") || !strings.Contains(why, "retryable=true") {
		t.Errorf("the failure does not say that the checkpoint could not be stored, or is not retried: %q", why)
	}
	checkStoredBytes(t, s.Pool, blobs)
	remount(t, blobs, "rw")

	// Evaluation: the store full to its last byte once training is done,
	// before any predictions are stored.
	waitUntil(t, 4*time.Minute, "training to complete after the store took files again", func() bool {
		return count(t, s.Pool, `SELECT count(*) FROM runs WHERE status = 'completed'`) == 1
	})
	if n := count(t, s.Pool, `SELECT count(*) FROM evaluations`); n != 0 {
		t.Fatalf("%d evaluations recorded before the disk was filled: the test came too late", n)
	}
	filler := fillDisk(t, blobs)
	waitUntil(t, 2*time.Minute, "evaluation to fail on the full store", func() bool {
		return strings.Contains(logs.String(), "no space left on device")
	})
	line := logs.lineWith("no space left on device")
	t.Logf("evaluation on the full store: %s", line)
	if !strings.Contains(line, "store predictions") {
		t.Errorf("the failure does not say what could not be stored: %s", line)
	}
	if n := count(t, s.Pool, `SELECT count(*) FROM evaluations`); n != 0 {
		t.Errorf("%d evaluations recorded although their predictions could not be stored", n)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}

	var res workflows.PipelineResult
	if err := run.Get(ctx, &res); err != nil {
		t.Fatalf("pipeline once the store took files again: %v", err)
	}
	if len(res.Checkpoints) != 3 {
		t.Fatalf("checkpoints %v, want one per stage", res.Checkpoints)
	}
	if n := count(t, s.Pool, testutil.EvaluationsRecordedTwiceSQL); n != 0 {
		t.Errorf("%d evaluations recorded twice", n)
	}
	if n := count(t, s.Pool, `SELECT count(*) FROM evaluations`); n == 0 {
		t.Error("no evaluation recorded")
	}
	checkStoredBytes(t, s.Pool, blobs)
	_ = filepath.WalkDir(blobs, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(filepath.Base(p), ".tmp") {
			t.Errorf("temporary file left in the blob store: %s", p)
		}
		return nil
	})
}

// checkStoredBytes checks that every checkpoint and predictions file the
// database records is in the blob store with the recorded sha256.
func checkStoredBytes(t *testing.T, pool *pgxpool.Pool, root string) {
	t.Helper()
	store, err := blob.NewLocal(root)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(context.Background(), `
		SELECT blob_key, sha256 FROM checkpoints
		UNION ALL SELECT predictions_key, predictions_sha256 FROM evaluations`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var key, want string
		if err := rows.Scan(&key, &want); err != nil {
			t.Fatal(err)
		}
		p, err := store.Path(key)
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := blob.FileSHA256(p)
		switch {
		case err != nil:
			t.Errorf("recorded %s is not readable in the store: %v", key, err)
		case got != want:
			t.Errorf("recorded %s has sha256 %s in the store, %s in the database", key, got, want)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d recorded blobs present with their sha256", n)
}

// remount remounts the file system at dir read-only ("ro") or read-write
// ("rw"). A file open for writing makes a read-only remount busy for a
// moment: it is tried again.
func remount(t *testing.T, dir, mode string) {
	t.Helper()
	var out []byte
	var err error
	for range 100 {
		if out, err = exec.Command("mount", "-o", "remount,"+mode, dir).CombinedOutput(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("remount %s %s: %v %s", dir, mode, err, out)
}

// fillDisk writes a file into dir until its file system has no byte left,
// and returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, zeroReader{}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("fill %s: %v, want no space left", dir, err)
	}
	return p
}

// lockedBuffer is a log sink that tests read while services write to it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lineWith returns the first line holding s, or "".
func (b *lockedBuffer) lineWith(s string) string {
	for line := range strings.Lines(b.String()) {
		if strings.Contains(line, s) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}
