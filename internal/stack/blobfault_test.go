package stack

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/testutil"
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

	logs := &testutil.SyncBuffer{}
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
	ctx, run := startPipeline(t, s, "blob-faults", testutil.SmallPipeline(13))

	// Training: read-only from the first stored checkpoint on. Every stage
	// writes at least two more, so some checkpoint meets the read-only store.
	waitUntil(t, 4*time.Minute, "the first checkpoint", func() bool {
		return count(t, s.Pool, `SELECT count(*) FROM checkpoints`) > 0
	})
	remount(t, blobs, "ro")
	waitUntil(t, 2*time.Minute, "training to fail on the read-only store", func() bool {
		return strings.Contains(logs.String(), "read-only file system")
	})
	why := lineWith(logs.String(), "read-only file system")
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
	line := lineWith(logs.String(), "no space left on device")
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

	pipelineDone(t, ctx, run, "once the store took files again")
	if n := count(t, s.Pool, testutil.EvaluationsRecordedTwiceSQL); n != 0 {
		t.Errorf("%d evaluations recorded twice", n)
	}
	if n := count(t, s.Pool, `SELECT count(*) FROM evaluations`); n == 0 {
		t.Error("no evaluation recorded")
	}
	checkStoredBytes(t, s.Pool, blobs)
	noTempFiles(t, blobs)
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

// lineWith returns the first line of text holding sub, or "".
func lineWith(text, sub string) string {
	for line := range strings.Lines(text) {
		if strings.Contains(line, sub) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}
