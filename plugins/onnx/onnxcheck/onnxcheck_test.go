//go:build onnx

// These tests need python3-onnx (make onnx-tools), so they run with the
// onnx tag, in make test-onnx.
package onnxcheck

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	good, err := os.ReadFile("../ort/testdata/tiny.onnx")
	if err != nil {
		t.Fatal(err)
	}
	py, err := Python()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("python: %s", py)
	CheckModel(t, good)
	if err := Check(good); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		// An operator no ONNX domain defines.
		{"unknown op", bytes.ReplaceAll(good, []byte("Softmax"), []byte("Softmix")), "Softmix"},
		{"not protobuf", []byte("this is not an ONNX model"), "onnx.checker rejects"},
	} {
		err := Check(tc.b)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one mentioning %q", tc.name, err, tc.want)
			continue
		}
		t.Logf("%s: %s", tc.name, strings.SplitN(err.Error(), "\n", 2)[0])
	}
}

// TestNoPython: with no interpreter that imports onnx, the error says how
// to get one.
func TestNoPython(t *testing.T) {
	_, err := findPython("/nonexistent/python3")
	if err == nil || !strings.Contains(err.Error(), "make onnx-tools") || !strings.Contains(err.Error(), "/nonexistent/python3") {
		t.Fatalf("error %v", err)
	}
	t.Log(err)
}
