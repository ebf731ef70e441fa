//go:build ggml

package ggml

/*
#include "gm.h"
#include "gguf.h"

static struct gguf_context * gm_gguf_open(const char * path, struct ggml_context ** data) {
	struct gguf_init_params p = { false, data };
	return gguf_init_from_file(path, p);
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// GGUFTensor is a tensor as ggml's own GGUF reader (gguf.cpp) reads it:
// its name, ggml type id and data bytes.
type GGUFTensor struct {
	Name string
	Type int
	Data []byte
}

// ReadGGUF reads a GGUF file with ggml's reader: the string values of
// keys, and every tensor with its data. It checks that files written by
// model.WriteGGUF are what ggml programs read.
func ReadGGUF(path string, keys ...string) (map[string]string, []GGUFTensor, error) {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	var data *C.struct_ggml_context
	g := C.gm_gguf_open(cp, &data)
	if g == nil {
		return nil, nil, fmt.Errorf("ggml's gguf reader refused %s", path)
	}
	defer C.gguf_free(g)
	if data != nil {
		defer C.ggml_free(data)
	}
	vals := map[string]string{}
	for _, k := range keys {
		ck := C.CString(k)
		id := C.gguf_find_key(g, ck)
		C.free(unsafe.Pointer(ck))
		if id < 0 {
			continue
		}
		vals[k] = C.GoString(C.gguf_get_val_str(g, id))
	}
	var out []GGUFTensor
	for i := range C.gguf_get_n_tensors(g) {
		name := C.gguf_get_tensor_name(g, i)
		t := C.ggml_get_tensor(data, name)
		if t == nil {
			return nil, nil, fmt.Errorf("tensor %s: not in ggml's context", C.GoString(name))
		}
		out = append(out, GGUFTensor{
			Name: C.GoString(name), Type: int(C.gguf_get_tensor_type(g, i)),
			Data: C.GoBytes(C.ggml_get_data(t), C.int(C.ggml_nbytes(t))),
		})
	}
	return vals, out, nil
}
