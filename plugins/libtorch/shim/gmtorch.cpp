// gmtorch: see gmtorch.h.
#include "gmtorch.h"

#include <dlfcn.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/version.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

struct gmt_tensor {
  at::Tensor t;
};

namespace {

void seterr(char *err, const char *what) {
  if (err == nullptr) return;
  std::snprintf(err, GMT_ERR_LEN, "%s", what);
}

// put fills o with t.
void put(gmt_out *o, at::Tensor t) {
  if (t.dim() > GMT_MAX_RANK) {
    throw std::runtime_error("gmtorch: result rank " + std::to_string(t.dim()) + " exceeds " +
                             std::to_string(GMT_MAX_RANK));
  }
  o->rank = static_cast<int>(t.dim());
  for (int i = 0; i < o->rank; i++) o->dims[i] = t.size(i);
  o->t = new gmt_tensor{std::move(t)};
  o->err[0] = 0;
}

// guard runs f, which returns nothing, and returns 0; an exception
// becomes err and -1.
template <typename F>
int guard(char *err, F f) {
  try {
    f();
    return 0;
  } catch (const c10::Error &e) {
    seterr(err, e.what_without_backtrace());
  } catch (const std::exception &e) {
    seterr(err, e.what());
  } catch (...) {
    seterr(err, "gmtorch: unknown C++ exception");
  }
  return -1;
}

// run runs f, which returns a tensor, into o; an exception becomes o->err.
template <typename F>
void run(gmt_out *o, F f) {
  o->t = nullptr;
  o->rank = 0;
  o->err[0] = 0;
  guard(o->err, [&] { put(o, f()); });
}

c10::Device dev(int device) { return device == GMT_CUDA ? c10::Device(c10::kCUDA) : c10::Device(c10::kCPU); }

std::vector<int64_t> vec(const int64_t *p, int n) { return std::vector<int64_t>(p, p + n); }

const at::Tensor &T(gmt_t x) {
  if (x == nullptr) throw std::runtime_error("gmtorch: null tensor handle");
  return x->t;
}

}  // namespace

extern "C" {

const char *gmt_version(void) { return TORCH_VERSION; }
void gmt_set_threads(int n) {
  if (n > 0) at::set_num_threads(n);
}
int gmt_get_threads(void) { return at::get_num_threads(); }
int gmt_set_blas_threads(int n) {
  // Looked up at run time: a libtorch built on MKL or another BLAS has
  // no OpenBLAS, and the shim must load there too.
  using setter = void (*)(int);
  auto f = reinterpret_cast<setter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (f == nullptr || n < 1) return 0;
  f(n);
  return 1;
}
int gmt_cuda_available(void) {
  try {
    return at::hasCUDA() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}
void gmt_manual_seed(uint64_t seed) { at::manual_seed(seed); }

void gmt_free_many(gmt_t *ts, int n) {
  for (int i = 0; i < n; i++) delete ts[i];
}

void gmt_from_f32(gmt_out *o, const float *data, const int64_t *dims, int rank, int device, int requires_grad) {
  run(o, [&] {
    auto t = at::from_blob(const_cast<float *>(data), vec(dims, rank), at::TensorOptions().dtype(at::kFloat))
                 .to(dev(device), at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    if (requires_grad) t.set_requires_grad(true);
    return t;
  });
}

void gmt_from_i32(gmt_out *o, const int32_t *data, const int64_t *dims, int rank, int device) {
  run(o, [&] {
    return at::from_blob(const_cast<int32_t *>(data), vec(dims, rank), at::TensorOptions().dtype(at::kInt))
        .to(dev(device), at::kLong, false, true);
  });
}

int gmt_to_f32(gmt_t x, float *out, int64_t n, char *err) {
  return guard(err, [&] {
    auto t = T(x).detach().to(c10::Device(c10::kCPU), at::kFloat).contiguous();
    if (t.numel() != n) {
      throw std::runtime_error("gmtorch: tensor has " + std::to_string(t.numel()) + " elements, the buffer " +
                               std::to_string(n));
    }
    std::memcpy(out, t.data_ptr<float>(), sizeof(float) * n);
  });
}

void gmt_scalar(gmt_out *o, double v, int device) {
  run(o, [&] { return at::scalar_tensor(v, at::TensorOptions().dtype(at::kFloat).device(dev(device))); });
}

void gmt_iota(gmt_out *o, int axis, const int64_t *dims, int rank, int device) {
  run(o, [&] {
    std::vector<int64_t> shape(rank, 1);
    shape[axis] = dims[axis];
    return at::arange(dims[axis], at::TensorOptions().dtype(at::kFloat).device(dev(device)))
        .reshape(shape)
        .expand(vec(dims, rank))
        .contiguous();
  });
}

void gmt_lower_tri(gmt_out *o, int64_t n, int device) {
  run(o, [&] { return at::ones({n, n}, at::TensorOptions().dtype(at::kFloat).device(dev(device))).tril(); });
}

void gmt_unary(gmt_out *o, int op, gmt_t x) {
  run(o, [&]() -> at::Tensor {
    const auto &t = T(x);
    switch (op) {
      case GMT_NEG: return at::neg(t);
      case GMT_ABS: return at::abs(t);
      case GMT_EXP: return at::exp(t);
      case GMT_LOG: return at::log(t);
      case GMT_LOG1P: return at::log1p(t);
      case GMT_SQRT: return at::sqrt(t);
      case GMT_SQUARE: return t * t;
      case GMT_FLOOR: return at::floor(t);
      case GMT_GELU: return at::gelu(t);
      case GMT_DETACH: return t.detach();
      case GMT_TO_FLOAT: return t.to(at::kFloat);
      case GMT_TO_INT: return t.to(at::kLong);
      case GMT_SOFTMAX: return at::softmax(t, -1);
      case GMT_LOG_SOFTMAX: return at::log_softmax(t, -1);
      case GMT_ZEROS_LIKE: return at::zeros_like(t, at::TensorOptions().dtype(at::kFloat));
    }
    throw std::runtime_error("gmtorch: unknown unary op " + std::to_string(op));
  });
}

void gmt_binary(gmt_out *o, int op, gmt_t a, gmt_t b) {
  run(o, [&]() -> at::Tensor {
    const auto &x = T(a);
    const auto &y = T(b);
    switch (op) {
      case GMT_ADD: return x + y;
      case GMT_SUB: return x - y;
      case GMT_MUL: return x * y;
      case GMT_DIV: return x / y;
      case GMT_MAX: return at::maximum(x, y);
      case GMT_MIN: return at::minimum(x, y);
      case GMT_GT: return at::gt(x, y).to(at::kFloat);
      case GMT_EQ: return at::eq(x, y).to(at::kFloat);
      case GMT_GE: return at::ge(x, y).to(at::kFloat);
      case GMT_LE: return at::le(x, y).to(at::kFloat);
    }
    throw std::runtime_error("gmtorch: unknown binary op " + std::to_string(op));
  });
}

void gmt_affine(gmt_out *o, gmt_t x, double scale, double shift) {
  run(o, [&] {
    const auto &t = T(x);
    if (scale == 1) return t + shift;
    if (shift == 0) return t * scale;
    return t * scale + shift;
  });
}

void gmt_clip(gmt_out *o, gmt_t x, double lo, double hi) {
  run(o, [&] { return at::clamp(T(x), lo, hi); });
}

void gmt_reshape(gmt_out *o, gmt_t x, const int64_t *dims, int rank) {
  run(o, [&] { return T(x).reshape(vec(dims, rank)); });
}

void gmt_permute(gmt_out *o, gmt_t x, const int64_t *perm, int rank) {
  run(o, [&] { return T(x).permute(vec(perm, rank)); });
}

void gmt_slice(gmt_out *o, gmt_t x, int axis, int64_t from, int64_t to, int64_t step) {
  run(o, [&] { return T(x).slice(axis, from, to, step < 1 ? 1 : step); });
}

void gmt_cat(gmt_out *o, gmt_t *xs, int n, int axis) {
  run(o, [&] {
    std::vector<at::Tensor> ts;
    ts.reserve(n);
    for (int i = 0; i < n; i++) ts.push_back(T(xs[i]));
    return at::cat(ts, axis);
  });
}

void gmt_reduce(gmt_out *o, int op, gmt_t x, const int64_t *axes, int naxes, int keep) {
  run(o, [&]() -> at::Tensor {
    const auto &t = T(x);
    std::vector<int64_t> ax = vec(axes, naxes);
    if (ax.empty()) {
      for (int64_t i = 0; i < t.dim(); i++) ax.push_back(i);
    }
    switch (op) {
      case GMT_SUM: return at::sum(t, ax, keep != 0);
      case GMT_AMAX: return at::amax(t, ax, keep != 0);
      case GMT_MEAN: return at::mean(t, ax, keep != 0);
    }
    throw std::runtime_error("gmtorch: unknown reduction " + std::to_string(op));
  });
}

void gmt_layer_norm(gmt_out *o, gmt_t x, gmt_t w, gmt_t b, double eps) {
  run(o, [&] {
    const auto &t = T(x);
    return at::layer_norm(t, {t.size(-1)}, T(w), T(b), eps);
  });
}

void gmt_matmul(gmt_out *o, gmt_t a, gmt_t b, int transpose_b) {
  run(o, [&] {
    if (transpose_b) return at::matmul(T(a), T(b).transpose(-1, -2));
    return at::matmul(T(a), T(b));
  });
}

void gmt_gru(gmt_out *o, gmt_t x, gmt_t mask, gmt_t wx, gmt_t bx, gmt_t wh, gmt_t bh, int backward) {
  run(o, [&] {
    const auto &xt = T(x);
    const auto &m = T(mask);
    const auto &u = T(wh);
    const auto &c = T(bh);
    const int64_t b = xt.size(0), l = xt.size(1), h = u.size(0);
    // Every position's input gates at once: [B, L, 3H].
    auto in = (at::matmul(xt, T(wx)) + T(bx));
    auto state = at::zeros({b, h}, in.options());
    for (int64_t i = 0; i < l; i++) {
      const int64_t t = backward ? l - 1 - i : i;
      auto gx = in.select(1, t);           // [B, 3H]
      auto gh = at::addmm(c, state, u);    // [B, 3H]
      auto zr = at::sigmoid(gx.slice(1, 0, 2 * h) + gh.slice(1, 0, 2 * h));
      auto z = zr.slice(1, 0, h);
      auto r = zr.slice(1, h, 2 * h);
      auto n = at::tanh(gx.slice(1, 2 * h, 3 * h) + r * gh.slice(1, 2 * h, 3 * h));
      auto next = n + z * (state - n);
      auto mt = m.select(1, t).unsqueeze(1);  // [B, 1]: 0 keeps the state
      state = state + mt * (next - state);
    }
    return state;
  });
}

void gmt_dense(gmt_out *o, gmt_t x, gmt_t w, gmt_t b) {
  run(o, [&] {
    const auto &t = T(x);
    const auto &wt = T(w);
    // [..., in] x [in, out]: one 2D product over the flattened rows.
    auto rows = t.reshape({-1, wt.size(0)});
    auto y = b != nullptr ? at::addmm(T(b), rows, wt) : at::mm(rows, wt);
    auto shape = t.sizes().vec();
    shape.back() = wt.size(1);
    return y.reshape(shape);
  });
}

void gmt_conv3x3(gmt_out *o, gmt_t x, gmt_t w, gmt_t b, int stride) {
  run(o, [&] {
    // The NCHW view of the NHWC tensor is channels-last memory, which
    // libtorch's CPU convolution takes as it is; the result goes back
    // to NHWC, contiguous, for the reshapes after it.
    auto xn = T(x).permute({0, 3, 1, 2});
    auto wn = T(w).permute({3, 2, 0, 1}).contiguous();  // OIHW
    auto y = at::conv2d(xn, wn, T(b), {stride, stride}, {1, 1});
    return y.permute({0, 2, 3, 1}).contiguous();
  });
}

void gmt_einsum(gmt_out *o, const char *spec, gmt_t a, gmt_t b) {
  run(o, [&] { return at::einsum(spec, {T(a), T(b)}); });
}

void gmt_index_rows(gmt_out *o, gmt_t table, gmt_t idx) {
  run(o, [&] {
    const auto &t = T(table);
    const auto &i = T(idx);
    auto shape = i.sizes().vec();
    for (int64_t d = 1; d < t.dim(); d++) shape.push_back(t.size(d));
    return t.index_select(0, i.reshape({-1})).reshape(shape);
  });
}

void gmt_gather_elems(gmt_out *o, gmt_t x, gmt_t idx) {
  run(o, [&] { return at::gather(T(x), 1, T(idx)); });
}

void gmt_one_hot(gmt_out *o, gmt_t idx, int64_t n) {
  run(o, [&] { return at::one_hot(T(idx), n).to(at::kFloat); });
}

int gmt_backward(gmt_t loss, char *err) {
  return guard(err, [&] { T(loss).backward(); });
}

int gmt_adamw(gmt_t *p, gmt_t *m, gmt_t *v, const int *decays, int n, double lr, double bc1, double bc2, double wd,
              double beta1, double beta2, double eps, double clip, float *gnorm, char *err) {
  return guard(err, [&] {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> sq;
    sq.reserve(n);
    for (int i = 0; i < n; i++) {
      const auto &g = T(p[i]).grad();
      if (g.defined()) sq.push_back(g.square().sum());
    }
    double norm = sq.empty() ? 0.0 : std::sqrt(at::stack(sq).sum().item<double>());
    double scale = std::min(1.0, clip / (norm + 1e-6));
    for (int i = 0; i < n; i++) {
      auto &w = p[i]->t;
      auto &mi = m[i]->t;
      auto &vi = v[i]->t;
      auto g = w.grad();
      mi.mul_(beta1);
      vi.mul_(beta2);
      if (g.defined()) {
        auto gs = g * scale;
        mi.add_(gs, 1 - beta1);
        vi.addcmul_(gs, gs, 1 - beta2);
      }
      auto upd = (mi * bc1) / ((vi * bc2).sqrt() + eps);
      if (decays[i]) upd.add_(w, wd);
      w.sub_(upd, lr);
      if (g.defined()) w.mutable_grad().reset();
    }
    *gnorm = static_cast<float>(norm);
  });
}

}  // extern "C"
