// cascade_distill: the long-short cascade self-distillation of the NHL objective, value and closed-form
// gradient for all K-1 (student k, teacher k+1) pairs in one call (spec: reference.cascade_distill_fused).
//   S_k = u[:, :b_k] u[:, :b_k]^T (prefix Grams, one b_max-wide Gram in total: S_k = S_{k-1} + block block^T)
//   N_k = S_k / r_k row-wise, r_k = max(||S_k row||, eps);  D_k = ||N_k - N_{k+1}||^2 / B^2 (teacher detached)
//   E = 2 (N_k - N_{k+1}) / B^2,  A = (E - N_k rowsum(E * N_k)) / r_k (E / r_k where r_k was clamped)
//   dD_k/du[:, :b_k] = (A + A^T) u[:, :b_k]
// The torch form is ~40 small ops (B x B elementwise passes, per-op overhead dominates at B <= 256);
// here every B x B entry is visited in a few fused loops; the GEMMs stay at::addmm / at::mm.
#include <torch/all.h>
#include <torch/library.h>

#include "cpu/cascade_distill.h"

#include <cmath>
#include <vector>

namespace nhl {

namespace {

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

void check_lengths(const char* op, at::IntArrayRef bits, int64_t width) {
  const int64_t K = static_cast<int64_t>(bits.size());
  TORCH_CHECK(K >= 1, op, ": bits must not be empty");
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK(bits[k] >= 1 && (k == 0 || bits[k] > bits[k - 1]), op, ": bits must be strictly increasing and >= 1");
  }
  TORCH_CHECK(bits[K - 1] == width, op, ": u must have bits[-1] columns");
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
  {
    const at::Tensor first = u.narrow(1, 0, bits[0]);
    at::Tensor gram0 = grams[0];
    at::mm_out(gram0, first, first.t());
    for (int64_t k = 1; k < K; ++k) {  // S_k = S_{k-1} + block block^T, the add fused into the GEMM
      const at::Tensor block = u.narrow(1, bits[k - 1], bits[k] - bits[k - 1]);
      at::Tensor out = grams[k];
      at::addmm_out(out, grams[k - 1], block, block.t());
    }
  }
  at::Tensor norms = at::empty({K, B}, u.options());
  at::Tensor sym = at::empty({K - 1, B, B}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "cascade_distill_cpu", [&] {
    distill_terms<scalar_t>(grams.data_ptr<scalar_t>(), norms.data_ptr<scalar_t>(), sym.data_ptr<scalar_t>(),
                            dist_d.data_ptr<double>(), K, B);
  });
  int64_t lo = 0;
  for (int64_t k = 0; k + 1 < K; ++k) {  // only the b_k columns D_k depends on
    at::Tensor seg = grad.narrow(1, lo, bits[k]);
    at::mm_out(seg, sym[k], u.narrow(1, 0, bits[k]));
    lo += bits[k];
  }
  return {dist_d, grad};
}

std::tuple<at::Tensor, at::Tensor> cascade_distill_cpu(const at::Tensor& u_in, at::IntArrayRef bits) {
  TORCH_CHECK(u_in.dim() == 2, "cascade_distill: u must be (B, b_max)");
  TORCH_CHECK(u_in.scalar_type() == at::kFloat || u_in.scalar_type() == at::kDouble,
              "cascade_distill: u must be float32 or float64");
  TORCH_CHECK(bits.size() >= 2, "cascade_distill: bits needs at least 2 lengths");
  check_lengths("cascade_distill", bits, u_in.size(1));
  auto [dist_d, grad] = cascade_distill_terms(u_in.contiguous(), bits);
  return {dist_d.to(u_in.scalar_type()), grad};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("cascade_distill", &cascade_distill_cpu); }

}  // namespace nhl
