// Package onnxcheck checks ONNX models with the onnx Python package's own
// checker (onnx.checker.check_model with full_check, which also runs
// strict shape inference), for the tests of code that writes ONNX: a model
// ORT happens to run may still break the format.
//
// It needs a python3 that can import onnx: $GROUNDMESH_ONNX_PYTHON, else
// /usr/bin/python3 (where Debian's python3-onnx installs it; `make
// onnx-tools` does), else python3 on PATH. It uses no cgo and no build tag.
package onnxcheck

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// EnvPython names the environment variable holding the interpreter to use.
const EnvPython = "GROUNDMESH_ONNX_PYTHON"

const checkScript = `import onnx, sys
m = onnx.load(sys.argv[1])
onnx.checker.check_model(m, full_check=True)
`

// CheckModel fails t, with the checker's message, unless onnxBytes is a
// model onnx.checker accepts. It fails (not skips) when no python3 with
// onnx is found, naming the Makefile target that installs it.
func CheckModel(t testing.TB, onnxBytes []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := os.WriteFile(path, onnxBytes, 0o644); err != nil {
		t.Fatalf("onnxcheck: %v", err)
	}
	if err := CheckFile(path); err != nil {
		t.Fatal(err)
	}
}

// Check is CheckModel's check as an error, for use outside a test.
func Check(onnxBytes []byte) error {
	f, err := os.CreateTemp("", "onnxcheck-*.onnx")
	if err != nil {
		return fmt.Errorf("onnxcheck: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(onnxBytes)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("onnxcheck: write %s: %w", f.Name(), err)
	}
	return CheckFile(f.Name())
}

// CheckFile checks the model in the file at path.
func CheckFile(path string) error {
	py, err := Python()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd := exec.Command(py, "-c", checkScript, path)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		return fmt.Errorf("onnxcheck: onnx.checker rejects the model (%s): %s\n%s", err, lastLine(msg), msg)
	}
	return nil
}

var (
	pythonOnce sync.Once
	python     string
	pythonErr  error
)

// Python returns the interpreter the checks run with: the first of
// $GROUNDMESH_ONNX_PYTHON (alone, when set), /usr/bin/python3 and python3
// on PATH that can import onnx.
func Python() (string, error) {
	pythonOnce.Do(func() { python, pythonErr = findPython(os.Getenv(EnvPython)) })
	return python, pythonErr
}

func findPython(env string) (string, error) {
	candidates := []string{"/usr/bin/python3", "python3"}
	if env != "" {
		candidates = []string{env}
	}
	var tried []string
	for _, c := range candidates {
		out, err := exec.Command(c, "-c", "import onnx").CombinedOutput()
		if err == nil {
			return c, nil
		}
		why := lastLine(strings.TrimSpace(string(out)))
		if why == "" {
			why = err.Error()
		}
		tried = append(tried, c+": "+why)
	}
	return "", errors.New("onnxcheck: no python3 that imports onnx (" + strings.Join(tried, "; ") +
		"): run `make onnx-tools` (installs Debian's python3-onnx), or set $" + EnvPython + " to a python3 with onnx")
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
