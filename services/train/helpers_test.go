package train_test

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groundmesh/groundmesh/internal/blob"
	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/internal/store"
	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/services/train"
)

// tinySpec is a spec small enough for the toy backend and for a real
// backend on a CPU: a 16 px model and a few steps per stage.
func tinySpec(steps [3]int, every int) json.RawMessage {
	stage := func(n int) map[string]any {
		return map[string]any{"steps": n, "batch_size": 4, "lr": 0.01, "warmup": 1, "checkpoint_every": every}
	}
	// The fake synth set has "rec" records in every stage and no crop
	// names, which the default stage 1 reads: stage 1 reads its own.
	stage1 := stage(steps[0])
	stage1["data"] = map[string]any{"stages": []string{"stage1"}, "splits": []string{"train"}}
	// A trainable set of its own, which the runner must pass on.
	stage1["trainable"] = []string{"projector.", "fusion.", "embed.", "lm_head."}
	b, _ := json.Marshal(map[string]any{
		// The toy computes the text path's shapes; the grounder's tower
		// is the gomlx plugin's to test.
		"recipe": "text-boxes",
		"model": map[string]any{
			"image_size": 16, "patch_size": 8, "vision_width": 16, "vision_depth": 1, "width": 32,
			"depth": 1, "heads": 2, "mlp_ratio": 2, "max_seq": 96, "max_images": 2,
		},
		"max_words": 64, "samples_per_shard": 16, "log_every": 1,
		"stage1": stage1, "stage2": stage(steps[1]), "stage3": stage(steps[2]),
	})
	return b
}

var colourNames = []string{"red", "green", "blue", "yellow"}
var colourValues = []color.RGBA{{220, 40, 40, 255}, {40, 200, 60, 255}, {50, 70, 230, 255}, {230, 220, 50, 255}}

// fakeSynth is a synth set made in memory: per stage, records asking where
// a coloured square is, answered with its box, over images drawn on demand.
func fakeSynth(perStage int) train.SynthReader {
	return func(ctx context.Context, set events.SynthFacts) (train.SynthSet, error) {
		records := func(ctx context.Context) iter.Seq2[model.Record, error] {
			return func(yield func(model.Record, error) bool) {
				for si, stage := range train.Stages {
					for i := range perStage {
						c := (i + si) % len(colourNames)
						x := float64((i * 7) % 40)
						split := "train"
						if i%10 == 9 {
							split = "val"
						}
						box := model.FormatBox(model.Normalize(dataset.Box{X1: x, Y1: x, X2: x + 20, Y2: x + 20}, 64, 64))
						rec := model.Record{
							ID: fmt.Sprintf("%s-%d", stage, i), Stage: stage, Task: "rec", Split: split,
							Images: []model.ImageRef{{Kind: "image", Path: fmt.Sprintf("%d-%d.png", c, int(x)), Width: 64, Height: 64}},
							Conversations: []model.Turn{
								{From: "human", Value: "<image>\nwhere is the " + colourNames[c] + " square?"},
								{From: "gpt", Value: box},
							},
						}
						if !yield(rec, nil) {
							return
						}
					}
				}
			}
		}
		images := model.ImageResolverFunc(func(_ context.Context, ref model.ImageRef) (image.Image, error) {
			var c, x int
			if _, err := fmt.Sscanf(ref.Path, "%d-%d.png", &c, &x); err != nil {
				return nil, err
			}
			img := image.NewRGBA(image.Rect(0, 0, 64, 64))
			for py := range 64 {
				for px := range 64 {
					img.Set(px, py, color.RGBA{128, 128, 128, 255})
					if px >= x && px < x+20 && py >= x && py < x+20 {
						img.Set(px, py, colourValues[c])
					}
				}
			}
			return img, nil
		})
		return train.SynthSet{Records: records, Images: images}, nil
	}
}

// env is a test's database, blob store and data dir.
type env struct {
	url     string
	pool    *pgxpool.Pool
	blob    *blob.Local
	dataDir string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	url := store.NewTestDB(t)
	ctx := context.Background()
	pool, err := store.Open(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	dir := t.TempDir()
	b, err := blob.NewLocal(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	return &env{url: url, pool: pool, blob: b, dataDir: filepath.Join(dir, "data")}
}

func (e *env) service(t *testing.T, b compute.Backend) *train.Service {
	t.Helper()
	s, err := train.New(train.Config{
		DataDir: e.dataDir, Blob: e.blob, Synth: fakeSynth(40),
		Backends: train.BackendMap(map[string]compute.Backend{"toy": b}),
		Logger:   testLogger(t),
	}, e.pool)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("TRAIN_TEST_VERBOSE") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// ckptRow is a checkpoints row as the tests read it.
type ckptRow struct {
	ID, Stage, Key, SHA string
	Step                int
	Bytes               int64
}

func checkpoints(t *testing.T, e *env, runID string) []ckptRow {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `
		SELECT id::text, stage, step, blob_key, sha256, bytes FROM checkpoints WHERE run_id = $1 ORDER BY stage, step`, runID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []ckptRow
	for rows.Next() {
		var c ckptRow
		if err := rows.Scan(&c.ID, &c.Stage, &c.Step, &c.Key, &c.SHA, &c.Bytes); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func count(t *testing.T, e *env, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// stepsByStage groups checkpoint steps.
func stepsByStage(cs []ckptRow) map[string][]int {
	out := map[string][]int{}
	for _, c := range cs {
		out[c.Stage] = append(out[c.Stage], c.Step)
	}
	return out
}
