// Small accessors for the Go side of package ggml (cgo cannot read a C
// struct's fields through every path it needs).
#include <stdlib.h>
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

static inline struct ggml_tensor * gm_view_src(struct ggml_tensor * t) { return t->view_src; }
static inline int gm_type(struct ggml_tensor * t) { return (int)t->type; }
static inline int gm_allocated(struct ggml_tensor * t) { return t->data != NULL || t->buffer != NULL; }
static inline struct ggml_context * gm_init(size_t mem) {
	struct ggml_init_params p = { mem, NULL, true };
	return ggml_init(p);
}
