/* gmtorch: the C boundary between groundmesh's libtorch compute backend
 * (Go, through cgo) and libtorch's C++ API. The Go side sees only these
 * C declarations, so it never depends on one libtorch's C++ ABI: the shim
 * is rebuilt against whichever libtorch a machine has (Debian's
 * libtorch-dev 1.13 on CPU, the one inside a PyTorch 2.x install on a GPU
 * machine).
 *
 * A tensor is an opaque handle owned by the caller (gmt_free_many). Every
 * operation writes its result into a gmt_out: the new handle, its shape,
 * and on failure a message (err[0] != 0, t NULL); no C++ exception crosses
 * the boundary. Integer tensors are int64 inside. */
#ifndef GMTORCH_H
#define GMTORCH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gmt_tensor *gmt_t;

enum { GMT_MAX_RANK = 8, GMT_ERR_LEN = 512 };

typedef struct {
  gmt_t t;
  int rank;
  int64_t dims[GMT_MAX_RANK];
  char err[GMT_ERR_LEN];
} gmt_out;

enum gmt_device { GMT_CPU = 0, GMT_CUDA = 1 };

enum gmt_unary_op {
  GMT_NEG, GMT_ABS, GMT_EXP, GMT_LOG, GMT_LOG1P, GMT_SQRT, GMT_SQUARE,
  GMT_FLOOR, GMT_GELU, GMT_DETACH, GMT_TO_FLOAT, GMT_TO_INT, GMT_SOFTMAX,
  GMT_LOG_SOFTMAX, GMT_ZEROS_LIKE
};

enum gmt_binary_op {
  GMT_ADD, GMT_SUB, GMT_MUL, GMT_DIV, GMT_MAX, GMT_MIN, GMT_GT, GMT_EQ,
  GMT_GE, GMT_LE
};

enum gmt_reduce_op { GMT_SUM, GMT_AMAX, GMT_MEAN };

/* Library. */
const char *gmt_version(void);
void gmt_set_threads(int n);
int gmt_get_threads(void);
/* gmt_set_blas_threads sets OpenBLAS's thread pool (the BLAS Debian's
 * libtorch calls for matrix products) when the process has OpenBLAS;
 * returns 1 then, 0 when it has no OpenBLAS. */
int gmt_set_blas_threads(int n);
int gmt_cuda_available(void);
void gmt_manual_seed(uint64_t seed);

/* Handles. */
void gmt_free_many(gmt_t *ts, int n);

/* Host data in and out. */
void gmt_from_f32(gmt_out *o, const float *data, const int64_t *dims, int rank, int device, int requires_grad);
void gmt_from_i32(gmt_out *o, const int32_t *data, const int64_t *dims, int rank, int device);
/* gmt_to_f32 copies t (any float tensor, any device) into out, which holds
 * n floats; it returns 0, or -1 with err filled. */
int gmt_to_f32(gmt_t t, float *out, int64_t n, char *err);

/* Constants. */
void gmt_scalar(gmt_out *o, double v, int device);
void gmt_iota(gmt_out *o, int axis, const int64_t *dims, int rank, int device);
void gmt_lower_tri(gmt_out *o, int64_t n, int device);

/* Element-wise. */
void gmt_unary(gmt_out *o, int op, gmt_t x);
void gmt_binary(gmt_out *o, int op, gmt_t a, gmt_t b);
void gmt_affine(gmt_out *o, gmt_t x, double scale, double shift);
void gmt_clip(gmt_out *o, gmt_t x, double lo, double hi);

/* Shape. */
void gmt_reshape(gmt_out *o, gmt_t x, const int64_t *dims, int rank);
void gmt_permute(gmt_out *o, gmt_t x, const int64_t *perm, int rank);
void gmt_slice(gmt_out *o, gmt_t x, int axis, int64_t from, int64_t to, int64_t step);
void gmt_cat(gmt_out *o, gmt_t *xs, int n, int axis);

/* Reductions, normalization, products, indexing. */
void gmt_reduce(gmt_out *o, int op, gmt_t x, const int64_t *axes, int naxes, int keep);
void gmt_layer_norm(gmt_out *o, gmt_t x, gmt_t w, gmt_t b, double eps);
void gmt_matmul(gmt_out *o, gmt_t a, gmt_t b, int transpose_b);
void gmt_dense(gmt_out *o, gmt_t x, gmt_t w, gmt_t b /* may be NULL */);
/* gmt_conv3x3: x [K, S, S, in] channels last, w [3, 3, in, out] (HWIO),
 * b [out], zero padding 1, stride 1 or 2: [K, S/stride, S/stride, out]. */
void gmt_conv3x3(gmt_out *o, gmt_t x, gmt_t w, gmt_t b, int stride);
void gmt_einsum(gmt_out *o, const char *spec, gmt_t a, gmt_t b);
/* gmt_gru: model.RecurrentOps.GRU, the whole recurrence in C++ (ATen
 * operations with their gradients, one per gate step, no crossing of the
 * C boundary per step): x [B, L, W], mask [B, L] (1 on each row's first
 * positions), wx [W, 3H], bx [3H], wh [H, 3H], bh [3H], gates in the order
 * update, reset, candidate; returns the last state [B, H]. */
void gmt_gru(gmt_out *o, gmt_t x, gmt_t mask, gmt_t wx, gmt_t bx, gmt_t wh, gmt_t bh, int backward);
void gmt_index_rows(gmt_out *o, gmt_t table, gmt_t idx);
void gmt_gather_elems(gmt_out *o, gmt_t x, gmt_t idx);
void gmt_one_hot(gmt_out *o, gmt_t idx, int64_t n);

/* Training. gmt_backward accumulates d loss / d p into every parameter
 * created with requires_grad. gmt_adamw then takes one AdamW step over n
 * parameters with their moments m and v: the gradients are clipped by
 * their global norm to clip, the update is m*bc1 / (sqrt(v*bc2) + eps)
 * plus wd*p where decays[i], times lr; a parameter without a gradient
 * counts as a zero gradient. It clears the gradients and writes the
 * norm before clipping. Both return 0, or -1 with err filled. */
int gmt_backward(gmt_t loss, char *err);
int gmt_adamw(gmt_t *p, gmt_t *m, gmt_t *v, const int *decays, int n, double lr, double bc1, double bc2,
              double wd, double beta1, double beta2, double eps, double clip, float *gnorm, char *err);

#ifdef __cplusplus
}
#endif

#endif
