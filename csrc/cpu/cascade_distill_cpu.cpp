// cascade_distill: the long-short cascade self-distillation of the NHL objective, value and closed-form
// gradient for all K-1 (student k, teacher k+1) pairs in one call (spec: reference.cascade_distill_fused).
//   S_k = u[:, :b_k] u[:, :b_k]^T (prefix Grams, one b_max-wide Gram in total: S_k = S_{k-1} + block block^T)
//   N_k = S_k / r_k row-wise, r_k = max(||S_k row||, eps);  D_k = ||N_k - N_{k+1}||^2 / B^2 (teacher detached)
//   E = 2 (N_k - N_{k+1}) / B^2,  A = (E - N_k rowsum(E * N_k)) / r_k (E / r_k where r_k was clamped)
//   dD_k/du[:, :b_k] = (A + A^T) u[:, :b_k]
// The torch form is ~40 small ops (B x B elementwise passes, per-op overhead dominates at B <= 256);
// here every B x B entry is visited in a few fused loops. The products (2M multiply-adds each at B = 128) cost
// 5x their arithmetic as one BLAS call per length: float32 on AVX-512 CPUs takes kernels/gemm_avx512.h (all
// prefix Grams in one pass), other types/CPUs the loops of prefix_grams and at::mm.
#include <torch/all.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/cascade_distill.h"
#include "kernels/gemm_avx512.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace nhl {

namespace {

// grams[k] = S_k = u[:, :b_k] u[:, :b_k]^T for every k, row by row: S_k's row i is S_{k-1}'s plus the block's
// columns, four columns of u per pass over the row (the portable path: one GEMM call per length costs more
// at B <= 128, the blocks being 8..64 wide). uT (b_max, B) is u transposed, so each pass reads rows.
template <typename T>
void prefix_grams(const T* u, const T* uT, int64_t B, int64_t width, at::IntArrayRef bits, T* grams) {
  const int64_t K = static_cast<int64_t>(bits.size());
  const int64_t BB = B * B;
  for (int64_t i = 0; i < B; ++i) {
    const T* ui = u + i * width;
    for (int64_t k = 0; k < K; ++k) {
      T* out = grams + k * BB + i * B;
      if (k == 0) {
        std::fill(out, out + B, T(0));
      } else {
        std::copy(out - BB, out - BB + B, out);
      }
      int64_t c = k == 0 ? 0 : bits[k - 1];
      for (; c + 4 <= bits[k]; c += 4) {
        const T a0 = ui[c], a1 = ui[c + 1], a2 = ui[c + 2], a3 = ui[c + 3];
        const T *r0 = uT + c * B, *r1 = r0 + B, *r2 = r1 + B, *r3 = r2 + B;
#pragma omp simd
        for (int64_t j = 0; j < B; ++j) out[j] += (a0 * r0[j] + a1 * r1[j]) + (a2 * r2[j] + a3 * r3[j]);
      }
      for (; c < bits[k]; ++c) {
        const T a = ui[c];
        const T* r = uT + c * B;
#pragma omp simd
        for (int64_t j = 0; j < B; ++j) out[j] += a * r[j];
      }
    }
  }
}

template <typename T>
void distill_terms(T* grams, T* norms, T* sym, double* dist, int64_t K, int64_t B) {
  const int64_t BB = B * B;
  const T eps = T(1e-12);  // F.normalize's
  // row-normalise every Gram in place: grams -> N_k, norms -> r_k
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t i = 0; i < B; ++i) {
      T* row = grams + k * BB + i * B;
      T ss = 0;
#pragma omp simd reduction(+ : ss)  // lets the reduction vectorise (its order changes, not its precision)
      for (int64_t j = 0; j < B; ++j) ss += row[j] * row[j];
      T r = std::sqrt(ss);
      r = r > eps ? r : eps;
      norms[k * B + i] = r;
      const T inv = T(1) / r;
      for (int64_t j = 0; j < B; ++j) row[j] *= inv;
    }
  }
  const T scale = T(2) / T(BB);
  for (int64_t k = 0; k + 1 < K; ++k) {
    const T* student = grams + k * BB;
    const T* teacher = grams + (k + 1) * BB;
    T* a = sym + k * BB;
    double total = 0;
    for (int64_t i = 0; i < B; ++i) {
      const T* s = student + i * B;
      const T* t = teacher + i * B;
      T* ai = a + i * B;
      T dot = 0;  // rowsum(E * N_k)
      T sq = 0;   // one row in T, the rows summed in double
#pragma omp simd reduction(+ : sq, dot)
      for (int64_t j = 0; j < B; ++j) {
        const T d = s[j] - t[j];
        sq += d * d;
        const T e = scale * d;
        ai[j] = e;
        dot += e * s[j];
      }
      total += double(sq);
      const T r = norms[k * B + i];
      const T inv = T(1) / r;
      if (r > eps) {
        for (int64_t j = 0; j < B; ++j) ai[j] = (ai[j] - s[j] * dot) * inv;
      } else {
        for (int64_t j = 0; j < B; ++j) ai[j] *= inv;
      }
    }
    dist[k] = total / double(BB);
    // A + A^T in place (upper and lower triangles together)
    for (int64_t i = 0; i < B; ++i) {
      a[i * B + i] *= T(2);
      for (int64_t j = i + 1; j < B; ++j) {
        const T v = a[i * B + j] + a[j * B + i];
        a[i * B + j] = v;
        a[j * B + i] = v;
      }
    }
  }
}

}  // namespace

bool use_avx512_kernels(const at::Tensor& t) {
#ifdef NHL_HAVE_GEMM_AVX512
  const char* forced = std::getenv("NHL_OBJECTIVE_KERNELS");
  if (forced && std::strcmp(forced, "generic") == 0) return false;
  return t.scalar_type() == at::kFloat && gemm_avx512_supported();
#else
  (void)t;
  return false;
#endif
}

std::tuple<at::Tensor, at::Tensor> cascade_distill_terms(const at::Tensor& u, at::IntArrayRef bits) {
  // the GEMMs below re-enter the dispatcher: under autocast they would come back in bfloat16
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const int64_t K = static_cast<int64_t>(bits.size());
  const int64_t B = u.size(0);
  int64_t total_cols = 0;
  for (int64_t k = 0; k < K; ++k) total_cols += bits[k];
  at::Tensor grad = at::zeros({B, total_cols}, u.options());
  at::Tensor dist_d = at::zeros({K - 1}, u.options().dtype(at::kDouble));
  if (B == 0) return {dist_d, grad};
  at::Tensor grams = at::empty({K, B, B}, u.options());
  const at::Tensor uT = u.t().contiguous();
  const bool avx512 = use_avx512_kernels(u);
#ifdef NHL_HAVE_GEMM_AVX512
  if (avx512)  // every prefix Gram in one pass, stored at each b_k
    gemm_nn_prefix_avx512(u.data_ptr<float>(), u.size(1), uT.data_ptr<float>(), B, B, B, bits.data(), int(K),
                          grams.data_ptr<float>(), B, B * B);
#endif
  if (!avx512) {
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "cascade_distill_grams", [&] {
      prefix_grams<scalar_t>(u.data_ptr<scalar_t>(), uT.data_ptr<scalar_t>(), B, u.size(1), bits,
                             grams.data_ptr<scalar_t>());
    });
  }
  at::Tensor norms = at::empty({K, B}, u.options());
  at::Tensor sym = at::empty({K - 1, B, B}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "cascade_distill_cpu", [&] {
    distill_terms<scalar_t>(grams.data_ptr<scalar_t>(), norms.data_ptr<scalar_t>(), sym.data_ptr<scalar_t>(),
                            dist_d.data_ptr<double>(), K, B);
  });
  int64_t lo = 0;
  for (int64_t k = 0; k + 1 < K; ++k) {  // only the b_k columns D_k depends on
#ifdef NHL_HAVE_GEMM_AVX512
    if (avx512) {
      gemm_nn_prefix_avx512(sym.data_ptr<float>() + k * B * B, B, u.data_ptr<float>(), u.size(1), B, bits[k], &B, 1,
                            grad.data_ptr<float>() + lo, total_cols, 0);
      lo += bits[k];
      continue;
    }
#endif
    at::Tensor seg = grad.narrow(1, lo, bits[k]);
    at::mm_out(seg, sym[k], u.narrow(1, 0, bits[k]));
    lo += bits[k];
  }
  return {dist_d, grad};
}

std::tuple<at::Tensor, at::Tensor> cascade_distill_cpu(const at::Tensor& u_in, at::IntArrayRef bits) {
  check_codes("cascade_distill", u_in, bits);
  TORCH_CHECK_VALUE(bits.size() >= 2, "cascade_distill: bits=", bits, " needs at least 2 lengths");
  auto [dist_d, grad] = cascade_distill_terms(u_in.contiguous(), bits);
  return {dist_d.to(u_in.scalar_type()), grad};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("cascade_distill", &cascade_distill_cpu); }

}  // namespace nhl
