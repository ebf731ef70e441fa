package gomlx

import (
	"context"
	"image"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/plugins/compute"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// BenchmarkBoxAnswer measures one box answer (the LM's 13-token box
// grammar, a prefill and 12 decode steps) for a prompt of one image on the
// demo's model shape, from the host: over the plugin process (gRPC, as the
// product runs) and in this process, with the host's decode loop (a
// Prefill and a Decode call per token, full logits back each time) and with
// the backend's own Generate (one call).
//
//	go test ./plugins/gomlx -run '^$' -bench BoxAnswer -benchtime 200x
func BenchmarkBoxAnswer(b *testing.B) {
	ctx := context.Background()
	tok := computetest.MatrixTokenizer()
	c := computetest.DemoCellConfig(model.DefaultConfig(tok.VocabSize()))
	c.Width, c.Depth, c.Heads, c.ImageSize, c.MaxSeq = 64, 2, 2, 64, 320 // the demo's sizes
	dir := b.TempDir()
	ckpt := writeWeights(b, dir, c, roughWeights(c, 1))
	bin := filepath.Join(dir, "groundmesh-gomlx")
	build := exec.Command("go", "build", "-o", bin, "./cmd/groundmesh-gomlx")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build plugin: %v\n%s", err, out)
	}
	host, err := compute.NewHost(compute.HostConfig{Path: bin})
	if err != nil {
		b.Fatal(err)
	}
	defer host.Close()
	prompt := []model.Prompt{{Text: "red square <image>", Images: []image.Image{image.NewRGBA(image.Rect(0, 0, 80, 60))}}}
	for _, be := range []struct {
		name string
		b    compute.Backend
	}{{"plugin", host}, {"in-process", newTestBackend(b)}} {
		sess, err := be.b.Load(ctx, compute.LoadRequest{ModelConfig: configJSON(b, c), Checkpoint: ckpt})
		if err != nil {
			b.Fatal(err)
		}
		gen, err := model.NewGenerator(be.b, sess.Session, tok, c)
		if err != nil {
			b.Fatal(err)
		}
		for _, mode := range []struct {
			name string
			host bool
		}{{"host-loop", true}, {"generate", false}} {
			b.Run(be.name+"/"+mode.name, func(b *testing.B) {
				for b.Loop() {
					g, err := gen.Generate(ctx, prompt, model.GenerateOptions{Constraint: model.ConstraintBox, HostLoop: mode.host})
					if err != nil || g[0].Box == nil {
						b.Fatalf("generate: %v %+v", err, g)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N), "ms/answer")
			})
		}
	}
}
