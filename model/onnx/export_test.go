package onnx_test

import (
	"errors"
	"slices"
	"strings"
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
				ins, outs, err := onnx.IONames(m.Graphs[g.Name])
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(ins, ioNames(g.Inputs)) || !slices.Equal(outs, ioNames(g.Outputs)) {
					t.Errorf("%s: IONames %v -> %v, the manifest %v -> %v", g.Name, ins, outs, ioNames(g.Inputs), ioNames(g.Outputs))
				}
				t.Logf("%s: %d nodes, %d bytes, inputs %v", g.Name, g.Nodes, len(m.Graphs[g.Name]), g.Inputs)
			}
		})
	}
}

// TestReadBundleRefuses: a bundle that is not the model asked for, or is
// damaged, is refused with what differs.
func TestReadBundleRefuses(t *testing.T) {
	var cell computetest.MatrixCell
	for _, c := range computetest.MatrixCells() {
		if c.Name == "demo" {
			cell = c
		}
	}
	cfg := cell.Config
	b, _, err := onnx.ExportModel(cfg, computetest.MatrixWeights(cfg), model.DtypeF32, computetest.MatrixTokenizer(), nil)
	if err != nil {
		t.Fatal(err)
	}
	other := cfg
	other.Depth++
	flip := func(name string) []byte {
		out := append([]byte{}, b...)
		i := strings.Index(string(out), name)
		out[i+2048] ^= 0x01 // inside the file's data (a tar header is 512 bytes)
		return out
	}
	edit := func(from, to string) []byte {
		return []byte(strings.Replace(string(b), from, to, 1))
	}
	for _, c := range []struct {
		name string
		data []byte
		want *model.Config
		msg  string
	}{
		{"another config", b, &other, "is not the requested one"},
		{"one bit of a graph", flip(onnx.GraphStepText + ".onnx"), nil, "step_text.onnx hashes to"},
		{"format version", edit(`"version": 1`, `"version": 9`), nil, "format version 9, this build reads 1"},
		{"truncated", b[:len(b)/3], nil, "onnx bundle does not match"},
		{"not a bundle", []byte("GGUF...."), nil, "onnx bundle does not match"},
	} {
		_, err := onnx.ReadBundle(c.data, c.want)
		if err == nil || !strings.Contains(err.Error(), c.msg) || !errors.Is(err, onnx.ErrMismatch) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.msg)
		}
	}
}

// TestExportRefusesBranchOnSize: a definition that computes differently
// at different sizes cannot be one graph with dynamic axes.
func TestExportRefusesBranchOnSize(t *testing.T) {
	g := onnx.Graph{Name: "branch", Syms: []onnx.Sym{{Name: "L", Grid: [3]int{2, 3, 4}, Check: 5}}, Build: func(tr *onnx.Tracer) ([]string, []*onnx.T) {
		x := tr.Input("x", false, 1, tr.Sym("L"))
		if tr.Sym("L") == 3 {
			x = tr.Exp(x)
		}
		return []string{"y"}, []*onnx.T{x}
	}}
	if _, err := onnx.Export(g, nil, model.DtypeF32, nil); err == nil || !strings.Contains(err.Error(), "branches on a size") {
		t.Errorf("err = %v, want a refusal naming the branch", err)
	}
}

func ioNames(ios []onnx.IO) []string {
	var out []string
	for _, io := range ios {
		out = append(out, io.Name)
	}
	return out
}
