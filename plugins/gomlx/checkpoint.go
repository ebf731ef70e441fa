package gomlx

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// Checkpoint layout (safetensors, float32 little-endian):
//
//	<canonical name>      every model parameter
//	optim.m.<name>        AdamW first moment of each trainable parameter
//	optim.v.<name>        AdamW second moment of each trainable parameter
//	optim.step            int64 scalar: optimizer steps taken
//
// __metadata__: format, backend, config_sha256, stage, run_id, step,
// data_pos (samples consumed), seed, batch_size, loss.
const (
	checkpointFormat = "groundmesh/tinygrounder-ckpt/v1"
	optimMPrefix     = "optim.m."
	optimVPrefix     = "optim.v."
	optimStepName    = "optim.step"
)

// modelState is the weights and, for training checkpoints, the optimizer
// state of a model.
type modelState struct {
	weights map[string][]float32
	m, v    map[string][]float32 // trainable parameters only
	step    int
	meta    map[string]string
}

// checkpointFile assembles the safetensors content of a state.
func checkpointFile(specs []paramSpec, st *modelState) (*stFile, error) {
	f := &stFile{Metadata: map[string]string{}, Tensors: map[string]stTensor{}}
	for k, v := range st.meta {
		f.Metadata[k] = v
	}
	f.Metadata["format"] = checkpointFormat
	f.Metadata["step"] = strconv.Itoa(st.step)
	for _, p := range specs {
		w, ok := st.weights[p.Name]
		if !ok || len(w) != p.Size() {
			return nil, fmt.Errorf("assemble checkpoint: parameter %q missing or of wrong size", p.Name)
		}
		f.Tensors[p.Name] = f32Tensor(w, p.Shape...)
		if m, ok := st.m[p.Name]; ok {
			f.Tensors[optimMPrefix+p.Name] = f32Tensor(m, p.Shape...)
			f.Tensors[optimVPrefix+p.Name] = f32Tensor(st.v[p.Name], p.Shape...)
		}
	}
	f.Tensors[optimStepName] = i64Tensor([]int64{int64(st.step)})
	return f, nil
}

// readCheckpoint loads a checkpoint's weights, checking every parameter of
// specs is present with its shape; with optim it also loads the moments of
// the trainable parameters and the step.
func readCheckpoint(path string, specs []paramSpec, trainable []bool, optim bool) (*modelState, error) {
	f, err := readSafetensors(path)
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	st := &modelState{weights: map[string][]float32{}, meta: f.Metadata}
	load := func(name string, p paramSpec) ([]float32, error) {
		t, ok := f.Tensors[name]
		if !ok {
			return nil, fmt.Errorf("read checkpoint %s: missing tensor %q", path, name)
		}
		if t.DType != "F32" || !sameShape(t.Shape, p.Shape) {
			return nil, fmt.Errorf("read checkpoint %s: tensor %q is %s%v, want F32%v", path, name, t.DType, t.Shape, p.Shape)
		}
		return t.f32(), nil
	}
	for _, p := range specs {
		if st.weights[p.Name], err = load(p.Name, p); err != nil {
			return nil, err
		}
	}
	if !optim {
		return st, nil
	}
	st.m, st.v = map[string][]float32{}, map[string][]float32{}
	for i, p := range specs {
		if !trainable[i] {
			continue
		}
		if st.m[p.Name], err = load(optimMPrefix+p.Name, p); err != nil {
			return nil, fmt.Errorf("resume: %w", err)
		}
		if st.v[p.Name], err = load(optimVPrefix+p.Name, p); err != nil {
			return nil, fmt.Errorf("resume: %w", err)
		}
	}
	t, ok := f.Tensors[optimStepName]
	if !ok || t.DType != "I64" || len(t.Data) != 8 {
		return nil, fmt.Errorf("read checkpoint %s: missing or bad %q", path, optimStepName)
	}
	st.step = int(int64(binary.LittleEndian.Uint64(t.Data)))
	return st, nil
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
