//go:build onnx

package ort_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/groundmesh/groundmesh/plugins/onnx/ort"
)

// tiny is testdata/tiny.onnx and what torch computed for it
// (testdata/make_tiny.py writes both).
type tiny struct {
	onnx     []byte
	Torch    string   `json:"torch"`
	Inputs   []string `json:"inputs"`
	Outputs  []string `json:"outputs"`
	Dim      int64    `json:"dim"`
	Cases    []tinyCase
	RawCases []map[string]struct {
		Shape []int64   `json:"shape"`
		Data  []float64 `json:"data"`
	} `json:"cases"`
}

type tinyCase struct {
	tokens, x ort.Value
	out       []float32
	outShape  []int64
	pick      []int64
}

func loadTiny(t testing.TB) *tiny {
	t.Helper()
	b, err := os.ReadFile("testdata/tiny.onnx")
	if err != nil {
		t.Fatal(err)
	}
	j, err := os.ReadFile("testdata/tiny_expected.json")
	if err != nil {
		t.Fatal(err)
	}
	m := &tiny{onnx: b}
	if err := json.Unmarshal(j, m); err != nil {
		t.Fatalf("testdata/tiny_expected.json: %v", err)
	}
	for _, c := range m.RawCases {
		ints := func(xs []float64) []int64 {
			r := make([]int64, len(xs))
			for i, x := range xs {
				r[i] = int64(x)
			}
			return r
		}
		floats := func(xs []float64) []float32 {
			r := make([]float32, len(xs))
			for i, x := range xs {
				r[i] = float32(x)
			}
			return r
		}
		m.Cases = append(m.Cases, tinyCase{
			tokens:   ort.Int64Tensor(ints(c["tokens"].Data), c["tokens"].Shape...),
			x:        ort.Float32Tensor(floats(c["x"].Data), c["x"].Shape...),
			out:      floats(c["out"].Data),
			outShape: c["out"].Shape,
			pick:     ints(c["pick"].Data),
		})
	}
	if len(m.Cases) < 2 || slices.Equal(m.Cases[0].tokens.Shape, m.Cases[1].tokens.Shape) {
		t.Fatalf("testdata/tiny_expected.json: want cases at two shapes, have %d", len(m.Cases))
	}
	return m
}

// compare checks a run's outputs against torch's for c.
func compare(c tinyCase, got []ort.Value) error {
	if len(got) != 2 {
		return fmt.Errorf("%d outputs, want 2", len(got))
	}
	out, pick := got[0], got[1]
	if out.Type != ort.Float32 || !slices.Equal(out.Shape, c.outShape) {
		return fmt.Errorf("out is %v, want float32%v", out, c.outShape)
	}
	if pick.Type != ort.Int64 || !slices.Equal(pick.Shape, c.tokens.Shape) {
		return fmt.Errorf("pick is %v, want int64%v", pick, c.tokens.Shape)
	}
	for i, want := range c.out {
		if d := math.Abs(float64(out.F32[i] - want)); d > 1e-5 {
			return fmt.Errorf("out[%d] = %g, torch %g (|diff| %g > 1e-5)", i, out.F32[i], want, d)
		}
	}
	if !slices.Equal(pick.I64, c.pick) {
		return fmt.Errorf("pick = %v, torch %v", pick.I64, c.pick)
	}
	return nil
}

func newTiny(t *testing.T, m *tiny, o ort.SessionOptions) *ort.Session {
	t.Helper()
	s, err := ort.NewSession(m.onnx, m.Inputs, m.Outputs, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// TestTinyMatchesTorch: ORT's outputs for the torch-exported model equal
// torch's to 1e-5 at two shapes of one session, at every graph
// optimization level and with explicit thread counts.
func TestTinyMatchesTorch(t *testing.T) {
	m := loadTiny(t)
	for _, o := range []ort.SessionOptions{
		{},
		{GraphOptimization: ort.OptimizeDisable},
		{GraphOptimization: ort.OptimizeBasic},
		{GraphOptimization: ort.OptimizeExtended, IntraOpThreads: 1},
		{GraphOptimization: ort.OptimizeAll, IntraOpThreads: 2, InterOpThreads: 2, Provider: ort.ProviderCPU},
	} {
		t.Run(fmt.Sprintf("%+v", o), func(t *testing.T) {
			s := newTiny(t, m, o)
			for _, c := range m.Cases {
				got, err := s.Run([]ort.Value{c.tokens, c.x})
				if err != nil {
					t.Fatal(err)
				}
				if err := compare(c, got); err != nil {
					t.Fatalf("at %v: %v", c.tokens.Shape, err)
				}
			}
		})
	}
	t.Logf("%s; expected outputs from torch %s", ort.Version(), m.Torch)
}

// TestConcurrentRun: one session, many goroutines, shapes alternating.
func TestConcurrentRun(t *testing.T) {
	m := loadTiny(t)
	s := newTiny(t, m, ort.SessionOptions{IntraOpThreads: 1})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				c := m.Cases[(g+i)%len(m.Cases)]
				got, err := s.Run([]ort.Value{c.tokens, c.x})
				if err == nil {
					err = compare(c, got)
				}
				if err != nil {
					errs <- fmt.Errorf("goroutine %d, call %d: %w", g, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestBadModels: bytes that are not a model are refused with ORT's reason.
func TestBadModels(t *testing.T) {
	m := loadTiny(t)
	for name, b := range map[string][]byte{
		"text":      []byte("this is not an ONNX model"),
		"truncated": m.onnx[:len(m.onnx)/2],
		"header":    flip(m.onnx, 0, 32),
		"op":        bytes.ReplaceAll(m.onnx, []byte("Softmax"), []byte("Softmix")),
		"empty":     nil,
	} {
		t.Run(name, func(t *testing.T) {
			s, err := ort.NewSession(b, m.Inputs, m.Outputs, ort.SessionOptions{})
			if err == nil {
				s.Close()
				t.Fatal("no error")
			}
			if !strings.HasPrefix(err.Error(), "ort: ") {
				t.Errorf("error without context: %v", err)
			}
			t.Log(err)
		})
	}
}

// flip returns b with its bytes from..to inverted.
func flip(b []byte, from, to int) []byte {
	b = slices.Clone(b)
	for i := from; i < to; i++ {
		b[i] ^= 0xff
	}
	return b
}

// TestBadInputs: wrong names, types and shapes fail the call with a
// message naming the input; the session goes on working afterwards.
func TestBadInputs(t *testing.T) {
	m := loadTiny(t)
	c := m.Cases[0]
	b, l := c.tokens.Shape[0], c.tokens.Shape[1]
	good := newTiny(t, m, ort.SessionOptions{})
	wrongName, err := ort.NewSession(m.onnx, []string{"tokens", "y"}, m.Outputs, ort.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer wrongName.Close()
	wrongOutput, err := ort.NewSession(m.onnx, m.Inputs, []string{"out", "nope"}, ort.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer wrongOutput.Close()

	for _, tc := range []struct {
		name   string
		s      *ort.Session
		inputs []ort.Value
		want   []string // substrings of the error
	}{
		{"unknown input name", wrongName, []ort.Value{c.tokens, c.x}, []string{"y"}},
		{"unknown output name", wrongOutput, []ort.Value{c.tokens, c.x}, []string{"nope"}},
		{"wrong last dim", good, []ort.Value{c.tokens, ort.Float32Tensor(make([]float32, b*l*(m.Dim-1)), b, l, m.Dim-1)}, []string{"x", "15"}},
		{"wrong rank", good, []ort.Value{c.tokens, ort.Float32Tensor(c.x.F32, b*l, m.Dim)}, []string{"x", "rank"}},
		{"wrong type", good, []ort.Value{ort.Float32Tensor(make([]float32, b*l), b, l), c.x}, []string{"tokens", "type"}},
		{"data shorter than shape", good, []ort.Value{c.tokens, ort.Float32Tensor(c.x.F32[1:], c.x.Shape...)}, []string{`"x"`, "elements"}},
		{"too few inputs", good, []ort.Value{c.tokens}, []string{"1 inputs", "tokens, x"}},
		{"negative dim", good, []ort.Value{c.tokens, ort.Float32Tensor(nil, b, -1, m.Dim)}, []string{`"x"`, "negative"}},
		{"token out of range", good, []ort.Value{ort.Int64Tensor(slices.Repeat([]int64{1000}, int(b*l)), b, l), c.x}, []string{"1000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.s.Run(tc.inputs)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			t.Log(err)
		})
	}
	got, err := good.Run([]ort.Value{c.tokens, c.x})
	if err == nil {
		err = compare(c, got)
	}
	if err != nil {
		t.Fatalf("after the bad calls: %v", err)
	}
}

// TestOptionErrors: options outside their sets are refused before ORT.
func TestOptionErrors(t *testing.T) {
	m := loadTiny(t)
	for _, o := range []ort.SessionOptions{
		{GraphOptimization: "max"},
		{Provider: "tpu"},
		{IntraOpThreads: -1},
	} {
		if s, err := ort.NewSession(m.onnx, m.Inputs, m.Outputs, o); err == nil {
			s.Close()
			t.Errorf("%+v: no error", o)
		} else {
			t.Log(err)
		}
	}
	if _, err := ort.NewSession(m.onnx, nil, m.Outputs, ort.SessionOptions{}); err == nil {
		t.Error("no input names: no error")
	}
}

// TestCUDA: the cuda provider runs the model where the loaded library has
// it, and otherwise fails with ErrProviderUnavailable and ORT's reason
// (the library `make onnxruntime` places has no CUDA provider).
func TestCUDA(t *testing.T) {
	m := loadTiny(t)
	s, err := ort.NewSession(m.onnx, m.Inputs, m.Outputs, ort.SessionOptions{Provider: ort.ProviderCUDA})
	if err != nil {
		if !errors.Is(err, ort.ErrProviderUnavailable) {
			t.Fatalf("error does not wrap ErrProviderUnavailable: %v", err)
		}
		t.Logf("cuda unavailable, as expected of a CPU-only library: %v", err)
		return
	}
	defer s.Close()
	for _, c := range m.Cases {
		got, err := s.Run([]ort.Value{c.tokens, c.x})
		if err == nil {
			err = compare(c, got)
		}
		if err != nil {
			t.Fatalf("cuda at %v: %v", c.tokens.Shape, err)
		}
	}
	t.Log("ran on cuda")
}

func TestClose(t *testing.T) {
	m := loadTiny(t)
	s, err := ort.NewSession(m.onnx, m.Inputs, m.Outputs, ort.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	c := m.Cases[0]
	if _, err := s.Run([]ort.Value{c.tokens, c.x}); !errors.Is(err, ort.ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
}

func TestDescribe(t *testing.T) {
	m := loadTiny(t)
	in, out, err := ort.Describe(m.onnx)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("[{tokens int64 [-1 -1]} {x float32 [-1 -1 %d]}] [{out float32 [-1 -1 %d]} {pick int64 [-1 -1]}]", m.Dim, m.Dim)
	if got := fmt.Sprint(in, " ", out); got != want {
		t.Fatalf("Describe = %s, want %s", got, want)
	}
}

func TestVersion(t *testing.T) {
	if err := ort.Init(ort.Options{}); err != nil {
		t.Fatal(err)
	}
	v := ort.Version()
	if !strings.HasPrefix(v, "onnxruntime 1.") || !strings.Contains(v, "libonnxruntime") {
		t.Fatalf("Version() = %q", v)
	}
	if lib := os.Getenv(ort.EnvLibrary); lib != "" && !strings.Contains(v, lib) {
		t.Errorf("Version() = %q, loaded from $%s = %s", v, ort.EnvLibrary, lib)
	}
	t.Log(v)
}

// TestMissingLibrary runs this test binary again (ORT loads once per
// process) with the library's path pointing nowhere: Init and NewSession
// fail naming the path and `make onnxruntime`.
func TestMissingLibrary(t *testing.T) {
	if os.Getenv("ORT_TEST_CHILD") == "init" {
		err := ort.Init(ort.Options{})
		fmt.Printf("init: %v\n", err)
		_, err = ort.NewSession([]byte("x"), []string{"a"}, []string{"b"}, ort.SessionOptions{})
		fmt.Printf("session: %v\n", err)
		err = ort.Init(ort.Options{Library: "testdata/tiny.onnx"}) // a file, but no library
		fmt.Printf("not a library: %v\n", err)
		fmt.Printf("version: %s\n", ort.Version())
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMissingLibrary$", "-test.count=1")
	cmd.Env = append(os.Environ(), "ORT_TEST_CHILD=init", ort.EnvLibrary+"=/nonexistent/libonnxruntime.so.1")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, b)
	}
	out := string(b)
	for _, w := range []string{
		"init: ort: onnxruntime library not found: /nonexistent/libonnxruntime.so.1 (from $GROUNDMESH_ONNXRUNTIME_LIB)",
		"session: ort: onnxruntime library not found: /nonexistent/libonnxruntime.so.1",
		"make onnxruntime",
		"not a library: ort: load testdata/tiny.onnx:",
		"version: onnxruntime (not loaded)",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("child's output lacks %q:\n%s", w, out)
		}
	}
	t.Log(out)
}

// TestInitOnce: a second Init naming another library is refused; naming
// none, or the same one, is not.
func TestInitOnce(t *testing.T) {
	if err := ort.Init(ort.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := ort.Init(ort.Options{}); err != nil {
		t.Fatalf("second Init: %v", err)
	}
	if err := ort.Init(ort.Options{Library: "testdata/tiny.onnx"}); err == nil || !strings.Contains(err.Error(), "already loaded") {
		t.Fatalf("Init with another library: %v", err)
	}
}

// TestEdgeValues: a scalar input is taken; a scalar or bool output is
// refused with an error saying so, alone or beside an output that
// converted (which is released, not leaked or crashed on).
func TestEdgeValues(t *testing.T) {
	b, err := os.ReadFile("testdata/edge.onnx")
	if err != nil {
		t.Fatal(err)
	}
	in := []ort.Value{ort.Float32Tensor([]float32{1, -2, 3, -4, 5, 6}, 2, 3), ort.Float32Tensor([]float32{0.5})}
	for _, tc := range []struct {
		outputs []string
		want    string // in the error; "" for none
	}{
		{[]string{"y"}, ""},
		{[]string{"total"}, "scalar output"},
		{[]string{"positive"}, "element type bool"},
		{[]string{"y", "positive"}, "element type bool"},
		{[]string{"positive", "total"}, "scalar output"},
	} {
		s, err := ort.NewSession(b, []string{"x", "scale"}, tc.outputs, ort.SessionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Run(in)
		s.Close()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.outputs, err)
		case tc.want == "":
			if want := []float32{0.5, -1, 1.5, -2, 2.5, 3}; !slices.Equal(got[0].F32, want) || !slices.Equal(got[0].Shape, []int64{2, 3}) {
				t.Errorf("%v: y = %v %v, want [2 3] %v", tc.outputs, got[0].Shape, got[0].F32, want)
			}
		case err == nil || !strings.Contains(err.Error(), tc.want):
			t.Errorf("%v: error %v, want one mentioning %q", tc.outputs, err, tc.want)
		default:
			t.Logf("%v: %v", tc.outputs, err)
		}
	}
}

// BenchmarkRun times one call of the tiny model at each expected shape on
// one intra-op thread: mostly the cost of crossing into ORT and back.
func BenchmarkRun(b *testing.B) {
	m := loadTiny(b)
	s, err := ort.NewSession(m.onnx, m.Inputs, m.Outputs, ort.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for _, c := range m.Cases {
		b.Run(fmt.Sprint(c.tokens.Shape), func(b *testing.B) {
			for b.Loop() {
				if _, err := s.Run([]ort.Value{c.tokens, c.x}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
