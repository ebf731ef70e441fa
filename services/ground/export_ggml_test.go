//go:build ggml

package ground

import (
	"context"
	"image/color"
	"os"
	"path/filepath"
	"testing"

	"github.com/groundmesh/groundmesh/internal/dataset"
	"github.com/groundmesh/groundmesh/internal/events"
	"github.com/groundmesh/groundmesh/plugins/compute"
)

// TestGGMLServesQ8Export: the checkpoint's q8_0 GGUF export, written by
// services/train, is served by default on the ggml plugin (the export
// backend the stack configures for gguf where that plugin is built),
// holding the weights in q8_0, and its boxes agree with the checkpoint's
// on GoMLX within the bounds the conformance matrix gives q8_0 on ggml
// (TestGGMLMatrixQuantized: at least 80% of the box answers overlap the
// reference's by IoU 0.9 or more).
//
//	make ggml && GROUNDMESH_PLUGIN_DIR=bin go test -tags ggml -run GGML ./services/ground
func TestGGMLServesQ8Export(t *testing.T) {
	dir := os.Getenv("GROUNDMESH_PLUGIN_DIR")
	if dir == "" {
		t.Fatal("GROUNDMESH_PLUGIN_DIR is unset: build the ggml plugin (make ggml) and point it at bin/")
	}
	ggmlHost, err := compute.NewHost(compute.HostConfig{Path: filepath.Join(dir, "groundmesh-ggml")})
	if err != nil {
		t.Fatalf("the ggml plugin: %v", err)
	}
	t.Cleanup(func() { _ = ggmlHost.Close() })
	ggml := &dtypeRecorder{Backend: ggmlHost}
	f := newExportFixture(t, pluginHost(t))
	f.export(t, "q8_0")
	svc := f.serviceOn(t, "gguf", "ggml", ggml)
	ctx := context.Background()
	id := f.ref.CheckpointID
	colors := []color.RGBA{{200, 20, 20, 255}, {20, 180, 40, 255}, {30, 30, 220, 255}}
	exprs := []string{"the red square", "the green square left of the circle", "the blue circle", "the square"}
	n, agree := 0, 0
	for i := range 24 {
		img := scene(t, 64+8*(i%3), 64, 4+7*(i%6), 6+9*(i%5), colors[i%3])
		q := events.GroundRequested{Image: img, Expression: exprs[i%len(exprs)]}
		a, err := svc.Ground(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		q.CheckpointID = id + "@gguf-q8_0"
		b, err := svc.Ground(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if b.ModelVersion != id+"@gguf-q8_0" || b.Backend != "ggml" || b.Dtype != "q8_0" || a.Backend != "gomlx" {
			t.Fatalf("answered by %q on %q (dtype %q); the checkpoint on %q", b.ModelVersion, b.Backend, b.Dtype, a.Backend)
		}
		x, y := a.Boxes[0].Norm, b.Boxes[0].Norm
		iou := dataset.Box{X1: x[0], Y1: x[1], X2: x[2], Y2: x[3]}.IoU(dataset.Box{X1: y[0], Y1: y[1], X2: y[2], Y2: y[3]})
		n++
		if iou >= 0.9 {
			agree++
		} else {
			t.Logf("query %d %q: q8_0 on ggml %v, checkpoint %v (IoU %.3f)", i, q.Expression, y, x, iou)
		}
	}
	if float64(agree) < 0.8*float64(n) {
		t.Fatalf("%d of %d box answers of the q8_0 export overlap the checkpoint's by IoU >= 0.9; want at least 80%%", agree, n)
	}
	if len(ggml.dtypes) != 1 || ggml.dtypes[0] != "q8_0" {
		t.Fatalf("ggml loads with dtypes %q, want one in q8_0", ggml.dtypes)
	}
	t.Logf("%d of %d box answers of the q8_0 export on ggml overlap the checkpoint's on GoMLX by IoU >= 0.9", agree, n)
}
