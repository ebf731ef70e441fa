package onnx_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/onnx"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
)

// TestExportMatrix exports every conformance-matrix cell's graphs and
// reads the bundle back.
func TestExportMatrix(t *testing.T) {
	tok := computetest.MatrixTokenizer()
	for _, cell := range computetest.MatrixCells() {
		t.Run(cell.Name, func(t *testing.T) {
			w := computetest.MatrixWeights(cell.Config)
			b, man, err := onnx.ExportModel(cell.Config, w, model.DtypeF32, tok, nil)
			if err != nil {
				t.Fatal(err)
			}
			m, err := onnx.ReadBundle(b, &cell.Config)
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range man.Graphs {
				t.Logf("%s: %d nodes, %d bytes, inputs %v", g.Name, g.Nodes, len(m.Graphs[g.Name]), g.Inputs)
			}
			if os.Getenv("ONNX_CHECK_DIR") != "" {
				for name, data := range m.Graphs {
					p := filepath.Join(os.Getenv("ONNX_CHECK_DIR"), cell.Name+"."+name+".onnx")
					os.WriteFile(p, data, 0o644)
					out, err := exec.Command("/usr/bin/python3", "-c", "import onnx,sys; m=onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True)", p).CombinedOutput()
					if err != nil {
						t.Errorf("%s: %v\n%s", name, err, out)
					}
				}
			}
		})
	}
}
