"""Focused linear attention as a C++ extension for the CPU: the ``"cpp"`` backend.

Same function and same math as :mod:`vlmzoo.kernels.torch_backend` (whose docstring derives the
forward pass and the gradients): saves only its inputs, the per-head state
``A = [kᵀv | Σk] / N`` ([B, h, d, d+1]) and three numbers per token of q and k; backward
recomputes the features. What changes is how the work is laid out:

* **One task per thread.** The tokens are cut into chunks of ``chunk_rows()`` rows (within one
  sample) and the chunks into one contiguous run per thread; each thread walks its run with
  single-threaded BLAS and its own chunk-sized scratch, so there is one parallel region per pass
  instead of one per op (the torch backend's ~400 small ops each wait for both cores).
* **Fused row passes.** ReLU + eps, the temperature, the max-normalisation, the power and both
  norms of a token are two passes over its C channels (in L1), the focusing gradient two more,
  with the ReLU mask and the temperature gradient folded in; matmuls go straight to BLAS
  (``at::native::cpublas::gemm``) on per-head strided views of the chunk, and their results are
  written straight into the output or gradient rows where no elementwise step follows.
* **Deterministic reductions.** The sums over tokens (A, ∂L/∂A, ∂L/∂s) are accumulated per thread
  and added in thread order, so a result depends on the thread count, not on timing.
* **float16/bfloat16** rows are converted to float32 chunk by chunk (float32 accumulation);
  float64 computes in float64 (so ``torch.autograd.gradcheck`` applies).

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` (needs a C++
compiler and ninja; ~20 s) and cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``). Its name carries the instruction-set flags it is built with
(from ``torch.backends.cpu.get_cpu_capability()``, never ``-march=native``) and a hash of the
source and flags, so a cache shared between machines never hands AVX-512 code to a CPU without it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading

import torch
from torch.autograd.function import once_differentiable

from vlmzoo.errors import VlmzooError

# Rows per chunk: the scratch of one thread (u, y and a gradient, [rows, C] each) stays near the
# per-core L2 cache, and the per-head matmuls still see enough rows to run near BLAS speed.
CHUNK_BYTES = 256 * 2**10
MIN_CHUNK_ROWS = 32

_SOURCE = r"""
// Focused linear attention (FLatten's core), forward and backward, on the CPU: fused row passes
// plus BLAS on per-head views of token chunks. The math is that of vlmzoo's torch backend
// (kernels/torch_backend.py, whose docstring derives the gradients); see kernels/cpp_backend.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

using at::Tensor;
// The Fortran BLAS that PyTorch links (MKL on x86 wheels), called directly: ~1 µs per call
// instead of the ~10 µs of an at::mm on a view. Inside a parallel region it runs single-threaded.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
            const int*, const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*);
}

inline void gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                 int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
                 int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Row-major C[M, N] = op(A) op(B) + beta C, on column-major BLAS (row-major X is column-major Xᵀ).
template <typename S>
inline void mm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const S* A, int64_t lda, const S* B,
               int64_t ldb, S beta, S* Cm, int64_t ldc) {
  if (M == 0 || N == 0) return;
  gemm(tb ? 'T' : 'N', ta ? 'T' : 'N', int(N), int(M), int(K), S(1), B, int(ldb), A, int(lda), beta, Cm,
       int(ldc));
}

template <typename S>
struct Params {
  int64_t B, N, C, h, d, rows;
  S p, eps, ucap;
  const S* inv_s;  // [C] or nullptr
  bool p3;
};

// One token chunk: global rows [row0, row0 + n) of the [B·N, C] matrices, all in sample b.
struct Chunk {
  int64_t b, row0, n;
};

std::vector<Chunk> make_chunks(int64_t B, int64_t N, int64_t rows) {
  std::vector<Chunk> out;
  const int64_t pieces = (N + rows - 1) / rows;
  const int64_t step = (N + pieces - 1) / pieces;  // equal pieces: no tiny last chunk
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n0 = 0; n0 < N; n0 += step) out.push_back({b, b * N + n0, std::min(step, N - n0)});
  return out;
}

// Rows of a [B·N, C] tensor as compute-type S: a pointer into it, or a converted copy in buf.
template <typename S>
const S* load(const Tensor& t, int64_t row0, int64_t n, int64_t C, std::vector<S>& buf) {
  if (t.scalar_type() == c10::CppTypeToScalarType<S>::value) return t.const_data_ptr<S>() + row0 * C;
  buf.resize(n * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "fla_load", [&] {
    const scalar_t* src = t.const_data_ptr<scalar_t>() + row0 * C;
    for (int64_t i = 0; i < n * C; ++i) buf[i] = static_cast<S>(src[i]);
  });
  return buf.data();
}

// Where to write rows of an output: straight into it, or into buf (then store() converts).
template <typename S>
S* target(Tensor& t, int64_t row0, int64_t n, int64_t C, std::vector<S>& buf) {
  if (t.scalar_type() == c10::CppTypeToScalarType<S>::value) return t.mutable_data_ptr<S>() + row0 * C;
  buf.resize(n * C);
  return buf.data();
}

template <typename S>
void store(Tensor& t, int64_t row0, int64_t n, int64_t C, const S* src) {
  if (t.scalar_type() == c10::CppTypeToScalarType<S>::value) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "fla_store", [&] {
    scalar_t* dst = t.mutable_data_ptr<scalar_t>() + row0 * C;
    for (int64_t i = 0; i < n * C; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  });
}

// Steps 3–5 for one token, in one pass per reduction: x' = (ReLU(a) + eps) / s, r = max x' / ucap,
// u = x' / r, y = u^p; st = (r, ‖u‖, ‖y‖), written when !known, read when known.
template <typename S>
inline void features(const S* a, const Params<S>& P, S* u, S* y, S* st, bool known) {
  const int64_t C = P.C;
  S m = 0;
  if (P.inv_s) {
    const S* is = P.inv_s;
#pragma omp simd reduction(max : m)
    for (int64_t c = 0; c < C; ++c) {  // ternaries, not std::max: GCC vectorises only these
      const S ac = a[c];
      const S x = ((ac > S(0) ? ac : S(0)) + P.eps) * is[c];
      u[c] = x;
      m = x > m ? x : m;
    }
  } else {
#pragma omp simd reduction(max : m)
    for (int64_t c = 0; c < C; ++c) {
      const S ac = a[c];
      const S x = (ac > S(0) ? ac : S(0)) + P.eps;
      u[c] = x;
      m = x > m ? x : m;
    }
  }
  const S r = known ? st[0] : m / P.ucap;
  const S inv_r = S(1) / r;
  S nu2 = 0, ny2 = 0;
  if (P.p3) {
#pragma omp simd reduction(+ : nu2, ny2)
    for (int64_t c = 0; c < C; ++c) {
      S uc = u[c] * inv_r;
      S yc = uc * uc * uc;
      u[c] = uc;
      y[c] = yc;
      nu2 += uc * uc;
      ny2 += yc * yc;
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      S uc = u[c] * inv_r;
      S yc = std::pow(uc, P.p);
      u[c] = uc;
      y[c] = yc;
      nu2 += uc * uc;
      ny2 += yc * yc;
    }
  }
  if (!known) {
    st[0] = r;
    st[1] = std::sqrt(nu2);
    st[2] = std::sqrt(ny2);
  }
}

// Steps 5, 4, 3 backwards for one token (kernels/torch_backend.py, _focus_backward): g is ∂L/∂φ
// (w0 = ‖u‖/‖y‖) or ∂L/∂y (w0 = 1/r), plus `add` when given (the Σk column's gradient); g is
// overwritten. Writes ∂L/∂a to ga (if given) and adds w·r·g'·u, the part of −∂L/∂s_c before the
// 1/s_c, to gs (if given). Each variant is its own branch-free loop: a condition inside one
// vectorised loop makes the compiler evaluate both sides (a vector pow) for every lane.
template <typename S>
inline void focus_backward(S* g, const S* add, const S* u, const S* y, const S* st, S w0, const S* a,
                           const Params<S>& P, S* ga, S* gs) {
  const int64_t C = P.C;
  const S r = st[0], nu = st[1], ny = st[2];
  S s = 0;
  if (add) {
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; ++c) {
      g[c] += add[c];
      s += g[c] * y[c];
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; ++c) s += g[c] * y[c];
  }
  const S c1 = s / (ny * ny), gamma = s / (nu * nu * P.p), w = w0 * P.p, wr = w * r;
  if (P.p3) {  // u^(p-1) t + γ u = u (u t + γ)
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) g[c] = u[c] * (u[c] * (g[c] - c1 * y[c]) + gamma);
  } else {
    const S pm1 = P.p - S(1);
    for (int64_t c = 0; c < C; ++c) g[c] = std::pow(u[c], pm1) * (g[c] - c1 * y[c]) + gamma * u[c];
  }
  if (gs) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) gs[c] += wr * g[c] * u[c];
  }
  if (ga) {
    const S* is = P.inv_s;
    if (is) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) ga[c] = a[c] > S(0) ? w * g[c] * is[c] : S(0);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) ga[c] = a[c] > S(0) ? w * g[c] : S(0);
    }
  }
}

// Splits the chunks into T contiguous tasks run in parallel (one per thread). A task adds its
// share of a per-sample [h, d, e] sum straight into `total` for samples no other task touches,
// and into its own side slots for its first and last sample, which neighbours may share; the
// side slots are added afterwards in task order, so results do not depend on thread timing.
template <typename S, typename F>
void run_tasks(const std::vector<Chunk>& chunks, int64_t per_sample, S* total, int64_t side_extra,
               std::vector<S>& side_extra_out, F&& body) {
  const int64_t nc = chunks.size();
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nc));
  std::vector<S> side(total ? T * 2 * per_sample : 0, S(0));
  side_extra_out.assign(T * side_extra, S(0));
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = t * nc / T, c1 = (t + 1) * nc / T;
      if (c0 >= c1) continue;
      const int64_t bf = chunks[c0].b, bl = chunks[c1 - 1].b;
      auto acc_for = [&](int64_t b) -> S* {
        if (!total) return nullptr;
        if (b == bf) return side.data() + (t * 2) * per_sample;
        if (b == bl) return side.data() + (t * 2 + 1) * per_sample;
        return total + b * per_sample;
      };
      body(c0, c1, acc_for, side_extra ? side_extra_out.data() + t * side_extra : nullptr);
    }
  });
  if (!total) return;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t c0 = t * nc / T, c1 = (t + 1) * nc / T;
    if (c0 >= c1) continue;
    const int64_t bf = chunks[c0].b, bl = chunks[c1 - 1].b;
    for (int64_t i = 0; i < per_sample; ++i) total[bf * per_sample + i] += side[(t * 2) * per_sample + i];
    if (bl != bf)
      for (int64_t i = 0; i < per_sample; ++i) total[bl * per_sample + i] += side[(t * 2 + 1) * per_sample + i];
  }
}

template <typename S>
Params<S> params(const Tensor& q, const Tensor& inv_s, int64_t heads, double p, double eps, int64_t rows) {
  Params<S> P;
  P.B = q.size(0);
  P.N = q.size(1);
  P.C = q.size(2);
  P.h = heads;
  P.d = P.C / heads;
  P.rows = std::max<int64_t>(1, rows);
  P.p = S(p);
  P.eps = S(eps);
  P.ucap = S(std::pow(2.0, 18.0 / p));  // the largest u: u^p <= 2^18 (torch backend, _unit)
  P.inv_s = inv_s.defined() ? inv_s.const_data_ptr<S>() : nullptr;
  P.p3 = p == 3.0;
  return P;
}

template <typename S>
std::tuple<Tensor, Tensor, Tensor> forward_impl(const Tensor& q, const Tensor& k, const Tensor& v,
                                                const Tensor& inv_s, int64_t heads, double p, double eps,
                                                int64_t rows) {
  const auto P = params<S>(q, inv_s, heads, p, eps, rows);
  const int64_t B = P.B, N = P.N, C = P.C, h = P.h, d = P.d, e = d + 1, per = h * d * e;
  const auto opts = q.options().dtype(c10::CppTypeToScalarType<S>::value);
  Tensor state = at::zeros({B, h, d, e}, opts);  // A = [kᵀv | Σk] / N per head
  Tensor stats = at::empty({2, B * N, 3}, opts);  // per token of q, k: r, ‖u‖, ‖y‖
  Tensor out = at::empty(q.sizes(), q.options());
  S* A = state.mutable_data_ptr<S>();
  S* stq = stats.mutable_data_ptr<S>();
  S* stk = stq + B * N * 3;
  const auto chunks = make_chunks(B, N, P.rows);
  std::vector<S> unused;

  // Keys: φ(k) chunk by chunk, A += φ_hᵀ [v_h | 1].
  run_tasks<S>(chunks, per, A, 0, unused, [&](int64_t c0, int64_t c1, auto acc_for, S*) {
    std::vector<S> U(P.rows * C), Y(P.rows * C), ksum(C), bk, bv;
    for (int64_t ci = c0; ci < c1; ++ci) {
      const Chunk ch = chunks[ci];
      const S* ka = load<S>(k, ch.row0, ch.n, C, bk);
      const S* va = load<S>(v, ch.row0, ch.n, C, bv);
      std::fill(ksum.begin(), ksum.end(), S(0));
      for (int64_t i = 0; i < ch.n; ++i) {
        S* st = stk + (ch.row0 + i) * 3;
        S* y = Y.data() + i * C;
        features<S>(ka + i * C, P, U.data() + i * C, y, st, false);
        const S f = st[0] * st[1] / st[2];
        S* ks = ksum.data();
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          y[c] *= f;
          ks[c] += y[c];
        }
      }
      S* acc = acc_for(ch.b);
      for (int64_t hh = 0; hh < h; ++hh) {
        S* Ah = acc + hh * d * e;
        mm<S>(true, false, d, d, ch.n, Y.data() + hh * d, C, va + hh * d, C, S(1), Ah, e);
        for (int64_t i = 0; i < d; ++i) Ah[i * e + d] += ksum[hh * d + i];
      }
    }
  });
  state.div_(N);  // the N^-½ · N^-½ of step 8, on the small state

  // Queries: y A gives numerator and normaliser side by side; φ's factor f cancels but in eps.
  run_tasks<S>(chunks, per, nullptr, 0, unused, [&](int64_t c0, int64_t c1, auto, S*) {
    std::vector<S> U(P.rows * C), Y(P.rows * C), R(P.rows * e), ef(P.rows), bq, bo;
    for (int64_t ci = c0; ci < c1; ++ci) {
      const Chunk ch = chunks[ci];
      const S* qa = load<S>(q, ch.row0, ch.n, C, bq);
      S* o = target<S>(out, ch.row0, ch.n, C, bo);
      for (int64_t i = 0; i < ch.n; ++i) {
        S* st = stq + (ch.row0 + i) * 3;
        features<S>(qa + i * C, P, U.data() + i * C, Y.data() + i * C, st, false);
        ef[i] = P.eps * st[2] / (st[0] * st[1]);  // eps / f
      }
      const S* Ab = A + ch.b * per;
      for (int64_t hh = 0; hh < h; ++hh) {
        mm<S>(false, false, ch.n, e, d, Y.data() + hh * d, C, Ab + hh * d * e, e, S(0), R.data(), e);
        for (int64_t i = 0; i < ch.n; ++i) {
          const S* ri = R.data() + i * e;
          const S inv = S(1) / (ri[d] + ef[i]);
          S* oi = o + i * C + hh * d;
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) oi[j] = ri[j] * inv;
        }
      }
      store<S>(out, ch.row0, ch.n, C, o);
    }
  });
  return {out, state, stats};
}

template <typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor> backward_impl(const Tensor& q, const Tensor& k, const Tensor& v,
                                                         const Tensor& inv_s, const Tensor& state,
                                                         const Tensor& stats, const Tensor& gout, int64_t heads,
                                                         double p, double eps, int64_t rows, bool need_q,
                                                         bool need_k, bool need_v, bool need_s) {
  const auto P = params<S>(q, inv_s, heads, p, eps, rows);
  const int64_t B = P.B, N = P.N, C = P.C, h = P.h, d = P.d, e = d + 1, per = h * d * e;
  const auto opts = q.options().dtype(c10::CppTypeToScalarType<S>::value);
  const bool need_state = need_k || need_v || need_s;
  Tensor gq = need_q ? at::empty(q.sizes(), q.options()) : at::empty({0}, q.options());
  Tensor gk = need_k ? at::empty(k.sizes(), k.options()) : at::empty({0}, k.options());
  Tensor gv = need_v ? at::empty(v.sizes(), v.options()) : at::empty({0}, v.options());
  Tensor gstate = at::zeros({B, h, d, e}, opts);
  const S* A = state.const_data_ptr<S>();
  S* GA = gstate.mutable_data_ptr<S>();
  const S* stq = stats.const_data_ptr<S>();
  const S* stk = stq + B * N * 3;
  const auto chunks = make_chunks(B, N, P.rows);
  std::vector<S> gs_q, gs_k;
  const int64_t gs_len = need_s ? C : 0;

  // Queries: R = [G/D, −(G·ñ)/D²] per head; ∂L/∂A += y_hᵀ R; ∂L/∂y_h = R A_hᵀ.
  if (need_q || need_s || need_state) {
    run_tasks<S>(chunks, per, need_state ? GA : nullptr, gs_len, gs_q,
                 [&](int64_t c0, int64_t c1, auto acc_for, S* gs) {
      std::vector<S> U(P.rows * C), Y(P.rows * C), G(P.rows * C), R(P.rows * e), ef(P.rows), bq, bg, bo;
      for (int64_t ci = c0; ci < c1; ++ci) {
        const Chunk ch = chunks[ci];
        const S* qa = load<S>(q, ch.row0, ch.n, C, bq);
        const S* go = load<S>(gout, ch.row0, ch.n, C, bg);
        for (int64_t i = 0; i < ch.n; ++i) {
          const S* st = stq + (ch.row0 + i) * 3;
          features<S>(qa + i * C, P, U.data() + i * C, Y.data() + i * C, const_cast<S*>(st), true);
          ef[i] = P.eps * st[2] / (st[0] * st[1]);
        }
        const S* Ab = A + ch.b * per;
        S* acc = need_state ? acc_for(ch.b) : nullptr;
        for (int64_t hh = 0; hh < h; ++hh) {
          const S* Ah = Ab + hh * d * e;
          mm<S>(false, false, ch.n, e, d, Y.data() + hh * d, C, Ah, e, S(0), R.data(), e);
          for (int64_t i = 0; i < ch.n; ++i) {
            S* ri = R.data() + i * e;
            const S* gi = go + i * C + hh * d;
            const S inv = S(1) / (ri[d] + ef[i]);
            S gdn = 0;
#pragma omp simd reduction(+ : gdn)
            for (int64_t j = 0; j < d; ++j) {
              gdn += ri[j] * gi[j];
              ri[j] = gi[j] * inv;
            }
            ri[d] = -gdn * inv * inv;
          }
          if (acc) mm<S>(true, false, d, e, ch.n, Y.data() + hh * d, C, R.data(), e, S(1), acc + hh * d * e, e);
          if (need_q || need_s)
            mm<S>(false, true, ch.n, d, e, R.data(), e, Ah, e, S(0), G.data() + hh * d, C);
        }
        if (need_q || need_s) {
          S* ga = need_q ? target<S>(gq, ch.row0, ch.n, C, bo) : nullptr;
          for (int64_t i = 0; i < ch.n; ++i) {
            const S* st = stq + (ch.row0 + i) * 3;
            focus_backward<S>(G.data() + i * C, nullptr, U.data() + i * C, Y.data() + i * C, st, S(1) / st[0],
                              qa + i * C, P, ga ? ga + i * C : nullptr, gs);
          }
          if (ga) store<S>(gq, ch.row0, ch.n, C, ga);
        }
      }
    });
  }

  // Keys and values, from ∂L/∂A / N: ∂L/∂v = f y_h ∂L/∂A_h[:, :d]; ∂L/∂φ = v_h ∂L/∂A_h[:, :d]ᵀ + ∂L/∂A_h[:, d].
  if (need_state) {
    gstate.div_(N);
    run_tasks<S>(chunks, per, nullptr, gs_len, gs_k, [&](int64_t c0, int64_t c1, auto, S* gs) {
      std::vector<S> U(P.rows * C), Y(P.rows * C), G(P.rows * C), gks(C), bk, bv, bdv, bdk;
      for (int64_t ci = c0; ci < c1; ++ci) {
        const Chunk ch = chunks[ci];
        const S* ka = load<S>(k, ch.row0, ch.n, C, bk);
        const S* GAb = GA + ch.b * per;
        for (int64_t hh = 0; hh < h; ++hh)
          for (int64_t i = 0; i < d; ++i) gks[hh * d + i] = GAb[hh * d * e + i * e + d];
        for (int64_t i = 0; i < ch.n; ++i)
          features<S>(ka + i * C, P, U.data() + i * C, Y.data() + i * C,
                      const_cast<S*>(stk + (ch.row0 + i) * 3), true);
        if (need_v) {
          S* dv = target<S>(gv, ch.row0, ch.n, C, bdv);
          for (int64_t hh = 0; hh < h; ++hh)
            mm<S>(false, false, ch.n, d, d, Y.data() + hh * d, C, GAb + hh * d * e, e, S(0), dv + hh * d, C);
          for (int64_t i = 0; i < ch.n; ++i) {
            const S* st = stk + (ch.row0 + i) * 3;
            const S f = st[0] * st[1] / st[2];
            S* di = dv + i * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) di[c] *= f;
          }
          store<S>(gv, ch.row0, ch.n, C, dv);
        }
        if (need_k || need_s) {
          const S* va = load<S>(v, ch.row0, ch.n, C, bv);
          for (int64_t hh = 0; hh < h; ++hh)
            mm<S>(false, true, ch.n, d, d, va + hh * d, C, GAb + hh * d * e, e, S(0), G.data() + hh * d, C);
          S* ga = need_k ? target<S>(gk, ch.row0, ch.n, C, bdk) : nullptr;
          for (int64_t i = 0; i < ch.n; ++i) {
            const S* st = stk + (ch.row0 + i) * 3;
            focus_backward<S>(G.data() + i * C, gks.data(), U.data() + i * C, Y.data() + i * C, st,
                              st[1] / st[2], ka + i * C, P, ga ? ga + i * C : nullptr, gs);
          }
          if (ga) store<S>(gk, ch.row0, ch.n, C, ga);
        }
      }
    });
  }

  Tensor gscale = at::zeros({need_s ? C : 0}, opts);
  if (need_s) {  // ∂L/∂s_c = −Σ ∂L/∂x' · x' / s_c, summed in task order
    S* g = gscale.mutable_data_ptr<S>();
    for (const auto* part : {&gs_q, &gs_k})
      for (size_t t = 0; t < part->size() / C; ++t)
        for (int64_t c = 0; c < C; ++c) g[c] -= (*part)[t * C + c];
    if (P.inv_s)
      for (int64_t c = 0; c < C; ++c) g[c] *= P.inv_s[c];
  }
  return {gq, gk, gv, gscale};
}

std::tuple<Tensor, Tensor, Tensor> fla_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const std::optional<Tensor>& inv_scale, int64_t heads, double p,
                                               double eps, int64_t rows) {
  const Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const Tensor is = inv_scale.has_value() ? inv_scale->contiguous() : Tensor();
  if (q.scalar_type() == at::kDouble) return forward_impl<double>(qc, kc, vc, is, heads, p, eps, rows);
  return forward_impl<float>(qc, kc, vc, is, heads, p, eps, rows);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> fla_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                        const std::optional<Tensor>& inv_scale,
                                                        const Tensor& state, const Tensor& stats,
                                                        const Tensor& grad_out, int64_t heads, double p,
                                                        double eps, int64_t rows, bool need_q, bool need_k,
                                                        bool need_v, bool need_s) {
  const Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), gc = grad_out.contiguous();
  const Tensor is = inv_scale.has_value() ? inv_scale->contiguous() : Tensor();
  const Tensor sc = state.contiguous(), stc = stats.contiguous();
  if (q.scalar_type() == at::kDouble)
    return backward_impl<double>(qc, kc, vc, is, sc, stc, gc, heads, p, eps, rows, need_q, need_k, need_v,
                                 need_s);
  return backward_impl<float>(qc, kc, vc, is, sc, stc, gc, heads, p, eps, rows, need_q, need_k, need_v, need_s);
}

}  // namespace

TORCH_LIBRARY(vlmzoo_fla, m) {
  m.def("forward(Tensor q, Tensor k, Tensor v, Tensor? inv_scale, int heads, float p, float eps, int rows)"
        " -> (Tensor, Tensor, Tensor)",
        &fla_forward);
  m.def("backward(Tensor q, Tensor k, Tensor v, Tensor? inv_scale, Tensor state, Tensor stats, "
        "Tensor grad_out, int heads, float p, float eps, int rows, bool need_q, bool need_k, bool need_v, "
        "bool need_s) -> (Tensor, Tensor, Tensor, Tensor)",
        &fla_backward);
}
"""

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}  # "ops" once built, "error" (a message) once the build failed


def chunk_rows(channels: int) -> int:
    """Tokens per chunk for C = ``channels``."""
    return max(MIN_CHUNK_ROWS, CHUNK_BYTES // (4 * channels))


def _isa() -> tuple[str, list[str]]:
    """The CPU capability PyTorch detected at run time, and the compiler flags that match it."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return "avx512", ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"]
    if capability == "AVX2":
        return "avx2", ["-mavx2", "-mfma", "-mf16c"]
    return "generic", []


def _build_flags() -> tuple[str, list[str]]:
    tag, isa = _isa()
    flags = ["-O3", "-fopenmp", *isa]  # -fopenmp: at::parallel_for is an OpenMP region in this file
    digest = hashlib.sha256("\0".join([_SOURCE, *flags, torch.__version__]).encode()).hexdigest()[:12]
    return f"vlmzoo_fla_{tag}_{digest}", flags


def toolchain_available() -> bool:
    """A C++ compiler and ninja are on PATH (what building the extension needs; nothing is built)."""
    from torch.utils.cpp_extension import is_ninja_available

    compiler = os.environ.get("CXX", "c++")
    return shutil.which(compiler) is not None and is_ninja_available()


def build_error() -> str | None:
    """Why the extension could not be built in this process (None: not tried, or it built)."""
    error = _STATE.get("error")
    return None if error is None else str(error)


def load_extension():
    """The compiled ops (``torch.ops.vlmzoo_fla``), built on first use; raises
    :class:`vlmzoo.kernels.BackendUnavailableError` when they cannot be built (tried once per process)."""
    from vlmzoo.kernels import BackendUnavailableError

    with _LOCK:
        if "ops" in _STATE:
            return _STATE["ops"]
        if "error" not in _STATE:
            try:
                _STATE["ops"] = _build()
                return _STATE["ops"]
            except Exception as error:  # no compiler, no ninja, a compile error: all the same to callers
                _STATE["error"] = f"{type(error).__name__}: {str(error).strip()[-2000:]}"
    raise BackendUnavailableError(
        f"backend='cpp' needs its C++ extension, which could not be built here ({_STATE['error']}). "
        "Install a C++ compiler and ninja, or use backend='auto' or 'torch'."
    )


def _build():
    if not toolchain_available():
        raise VlmzooError(f"no C++ compiler ({os.environ.get('CXX', 'c++')}) or no ninja on PATH")
    from torch.utils import cpp_extension

    name, flags = _build_flags()
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    source_dir = os.path.join(root, "vlmzoo_sources")
    os.makedirs(source_dir, exist_ok=True)
    path = os.path.join(source_dir, f"{name}.cpp")
    if not os.path.exists(path):  # written once per source version; the rename is atomic
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(_SOURCE)
        os.replace(tmp, path)
    cpp_extension.load(
        name=name,
        sources=[path],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        with_cuda=False,
        verbose=False,
    )
    return torch.ops.vlmzoo_fla


class FocusedLinearAttentionCpp(torch.autograd.Function):
    """(q, k, v, scale, num_heads, p, eps) -> out; saves the inputs, the [B, h, d, d+1] state and
    three numbers per token of q and k (as the torch backend)."""

    @staticmethod
    def forward(ctx, q, k, v, scale, num_heads, focusing_factor, eps):  # type: ignore[override]
        ops = load_extension()
        dtype = torch.promote_types(q.dtype, torch.float32)
        inv_scale = None if scale is None else scale.detach().to(dtype).reciprocal()
        rows = chunk_rows(q.shape[-1])
        out, state, stats = ops.forward(q, k, v, inv_scale, num_heads, focusing_factor, eps, rows)
        ctx.save_for_backward(q, k, v, scale, state, stats)
        ctx.hyper = (num_heads, focusing_factor, eps, rows, dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, scale, state, stats = ctx.saved_tensors
        num_heads, p, eps, rows, dtype = ctx.hyper
        needs = tuple(bool(x) for x in ctx.needs_input_grad[:4])
        inv_scale = None if scale is None else scale.to(dtype).reciprocal()
        grads = load_extension().backward(
            q, k, v, inv_scale, state, stats, grad_out.to(q.dtype), num_heads, p, eps, rows, *needs
        )
        gq, gk, gv, gs = (g if need else None for g, need in zip(grads, needs, strict=True))
        if gs is not None:
            gs = gs.to(scale.dtype)
        return gq, gk, gv, gs, None, None, None


# The ops have no meta/fake kernels, so torch.compile runs this call eagerly (one graph break);
# under compilation backend="auto" uses the reference formula, which Inductor fuses itself.
@torch.compiler.disable
def focused_linear_attention_cpp(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    scale: torch.Tensor | None = None,
    focusing_factor: float = 3.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """q, k, v [B, N, C] on the CPU, scale [C] or None -> [B, N, C]. Unvalidated: use the dispatch."""
    return FocusedLinearAttentionCpp.apply(q, k, v, scale, num_heads, float(focusing_factor), float(eps))
