// csq_grads: CSQ's per-length losses and their closed-form gradients, packed (spec: reference.csq_grads).
//   t = sign(labels @ centers), the tie sign where that is 0 (multi-label), in {-1, +1}
//   e(x, t) = BCE-with-logits(2x, (t+1)/2) + lambda (|tanh x| - 1)^2,  L_k = mean over the batch and c < b_k
//   de/dx   = 2 (sigmoid(2x) - (t+1)/2) + 2 lambda (|tanh x| - 1) sign(x) (1 - tanh^2 x)
// One pass with one exp and one log1p per element (E = exp(-2|x|) gives sigmoid(2x), |tanh x| and the
// softplus), SIMD through ATen's Vectorized (Sleef) where the build targets AVX2: the ~20 torch ops it
// replaces cost more than the arithmetic at training batch sizes.
#if defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX2
#elif !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY DEFAULT  // ATen's portable Vectorized (scalar loops)
#endif
#include <ATen/cpu/vec/vec.h>
#include <torch/all.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"

namespace nhl {

namespace {

// one row: length k reads u[:, :b_k] against the centre scores s[tbase_k : tbase_k + b_k]
template <typename T>
void csq_row(const T* u, const T* s, const T* tie, const std::vector<int64_t>& tbase,
             const std::vector<int64_t>& offset, at::IntArrayRef bits, T lambda, T grad_scale_b, T* grad,
             double* sums) {
  using V = at::vec::Vectorized<T>;
  const V one(1), two(2), half(0.5), zero(0), lam(lambda), two_lam(2 * lambda);
  for (size_t k = 0; k < bits.size(); ++k) {
    const T* sk = s + tbase[k];
    const T* tiek = tie + tbase[k];
    T* gk = grad + offset[k];
    const V scale(grad_scale_b / T(bits[k]));  // dL_k/de = 1 / (B b_k)
    V acc(0);
    for (int64_t c = 0; c < bits[k]; c += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), bits[k] - c);
      const V x = V::loadu(u + c, n);
      const V score = V::loadu(sk + c, n);
      const V sgn = V::blendv(zero, one, score > zero) - V::blendv(zero, one, score < zero);
      const V target = V::blendv(sgn, V::loadu(tiek + c, n), score == zero);  // +-1
      const V t01 = (target + one) * half;
      const V E = (x.abs() * V(-2)).exp();  // exp(-2|x|) in (0, 1]
      const V inv = one / (one + E);
      const V sig = V::blendv(E * inv, inv, x >= zero);  // sigmoid(2x)
      const V dev = (one - E) * inv - one;                // |tanh x| - 1
      const V z = two * x;
      // BCE-with-logits as torch evaluates it: (1 - t) z - min(z, 0) + log1p(exp(-|z|))
      const V e = (one - t01) * z - at::vec::minimum(z, zero) + E.log1p() + lam * dev * dev;
      const V sign = V::blendv(zero, one, x > zero) - V::blendv(zero, one, x < zero);
      const V th_abs = dev + one;
      const V dx = two * (sig - t01) + two_lam * dev * sign * (one - th_abs * th_abs);
      (dx * scale).store(gk + c, n);
      acc = acc + V::set(zero, e, n);  // lanes past n hold padding, not elements
    }
    T lanes[V::size()];
    acc.store(lanes);
    double s = 0;
    for (int64_t i = 0; i < V::size(); ++i) s += double(lanes[i]);
    sums[k] += s;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> csq_grads_cpu(const at::Tensor& u_in, const at::Tensor& labels_in,
                                                 const at::Tensor& centers_in, const at::Tensor& tie_in,
                                                 at::IntArrayRef bits, double lambda) {
  // the GEMM below re-enters the dispatcher: under autocast it would come back in bfloat16
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const std::vector<int64_t> offset = check_codes("csq_grads", u_in, bits);  // packed column layout
  const int64_t K = static_cast<int64_t>(bits.size());
  const int64_t B = u_in.size(0), b_max = u_in.size(1);
  const int64_t P = offset[K];
  TORCH_CHECK_VALUE(labels_in.dim() == 2 && labels_in.size(0) == B, "csq_grads: labels must be (B, C) multi-hot with B=",
                    B, ", got shape ", labels_in.sizes());
  TORCH_CHECK_VALUE(centers_in.dim() == 2 && centers_in.size(0) == labels_in.size(1) &&
                        (centers_in.size(1) == P || centers_in.size(1) == b_max),
                    "csq_grads: centers must be (C, sum b_k) = (", labels_in.size(1), ", ", P,
                    ") (a centre per length) or (C, b_max) = (", labels_in.size(1), ", ", b_max,
                    ") (nested centres), got shape ", centers_in.sizes());
  TORCH_CHECK_VALUE(tie_in.dim() == 1 && tie_in.size(0) == centers_in.size(1), "csq_grads: tie must be (",
                    centers_in.size(1), ",), one sign per centre column, got shape ", tie_in.sizes());
  check_same_dtype("csq_grads", "labels", labels_in, "u", u_in);
  check_same_dtype("csq_grads", "centers", centers_in, "u", u_in);
  check_same_dtype("csq_grads", "tie", tie_in, "u", u_in);
  // centre column of length k's first bit: its own segment, or column 0 of the shared (nested) centres
  std::vector<int64_t> tbase(K, 0);
  if (centers_in.size(1) == P) tbase.assign(offset.begin(), offset.end() - 1);
  const at::Tensor u = u_in.contiguous(), tie = tie_in.contiguous();
  const at::Tensor scores = at::mm(labels_in, centers_in).contiguous();  // (B, T): label-summed centres
  const int64_t T_cols = scores.size(1);
  at::Tensor grads = at::empty({B, P}, u.options());
  std::vector<double> sums(K, 0.0);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "csq_grads_cpu", [&] {
    const scalar_t* up = u.data_ptr<scalar_t>();
    const scalar_t* sp = scores.data_ptr<scalar_t>();
    scalar_t* gp = grads.data_ptr<scalar_t>();
    const scalar_t inv_b = B > 0 ? scalar_t(1) / scalar_t(B) : scalar_t(0);
    for (int64_t r = 0; r < B; ++r)
      csq_row<scalar_t>(up + r * b_max, sp + r * T_cols, tie.data_ptr<scalar_t>(), tbase, offset, bits,
                        scalar_t(lambda), inv_b, gp + r * P, sums.data());
  });
  at::Tensor losses = at::empty({K}, u.options().dtype(at::kDouble));
  double* lp = losses.data_ptr<double>();
  for (int64_t k = 0; k < K; ++k) lp[k] = sums[k] / (double(B) * double(bits[k]));  // B = 0: nan, as a mean
  return {losses.to(u.scalar_type()), grads};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("csq_grads", &csq_grads_cpu); }

}  // namespace nhl
