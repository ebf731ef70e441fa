//go:build onnx

package onnx_test

import (
	"testing"

	"github.com/groundmesh/groundmesh/model"
	"github.com/groundmesh/groundmesh/model/onnx"
	"github.com/groundmesh/groundmesh/plugins/compute/computetest"
	"github.com/groundmesh/groundmesh/plugins/onnx/onnxcheck"
)

// TestExportPassesChecker runs ONNX's own checker (full check, with
// shape inference) over every graph of every matrix cell, in float32
// and float16. It needs python3-onnx (make onnx-tools).
func TestExportPassesChecker(t *testing.T) {
	tok := computetest.MatrixTokenizer()
	for _, cell := range computetest.MatrixCells() {
		for _, dtype := range []string{model.DtypeF32, model.DtypeF16} {
			t.Run(cell.Name+"/"+dtype, func(t *testing.T) {
				b, _, err := onnx.ExportModel(cell.Config, computetest.MatrixWeights(cell.Config), dtype, tok, nil)
				if err != nil {
					t.Fatal(err)
				}
				m, err := onnx.ReadBundle(b, &cell.Config)
				if err != nil {
					t.Fatal(err)
				}
				for name, g := range m.Graphs {
					if err := onnxcheck.Check(g); err != nil {
						t.Errorf("%s: %v", name, err)
					}
				}
			})
		}
	}
}
