// nhl_objective: the NHL objective's forward for one batch in one call (spec: reference.nhl_objective):
// the cascade distillation, the K x K gradient dots through the input Gram, the dominance-aware weights,
// the weighted total and its gradient w.r.t. u (weights constant). A training step with a closed-form base
// loss (CSQ) then runs no autograd graph of small ops at all: ~40 torch ops and their backward nodes
// cost more than the arithmetic at B <= 256.
//   O_k = L_k + distill D_k, G = [dO_1/du[:, :b_1], ..., dO_K/du[:, :b_K]] (B, sum b_k), Gz = G * du/dz
//   d_ij = <g_i[:b_i], g_j[:b_i]> with g_k = Gz_k^T x:  = <Gz_i, (x x^T) Gz_j> over length i's columns
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/all.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "checks.h"
#include "cpu/cascade_distill.h"
#include "kernels/gemm_avx512.h"

namespace nhl {

namespace {

// oneDNN's linear (x W^T) when torch was built with it: its fp32 GEMM picks the CPU's widest ISA, while
// MKL's sgemm runs AVX2 kernels on AMD CPUs (the Gram then takes half the time on Zen 4/5).
std::optional<c10::OperatorHandle> onednn_linear() {
  auto op = c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
  if (!op) return std::nullopt;
  const auto& args = op->schema().arguments();  // X, W, B?, attr, scalars, algorithm
  if (args.size() != 6 || args[0].name() != "X" || args[1].name() != "W") return std::nullopt;
  return op;
}

// a b^T. Float32 products of 2M+ multiply-adds go to oneDNN (below that its per-call setup costs more than
// it saves); the rest to at::mm (MKL or whatever BLAS torch has).
at::Tensor gemm_nt(const at::Tensor& a, const at::Tensor& b) {
  static const std::optional<c10::OperatorHandle> linear = onednn_linear();
  const double work = double(a.size(0)) * double(b.size(0)) * double(a.size(1));
  if (linear && a.scalar_type() == at::kFloat && work >= double(1 << 21) && at::globalContext().userEnabledMkldnn()) {
    torch::jit::Stack stack{a, b, c10::IValue(), std::string("none"), c10::List<std::optional<at::Scalar>>(),
                            c10::IValue()};
    linear->callBoxed(&stack);
    return stack[0].toTensor();
  }
  return at::mm(a, b.t());
}

// (B, B) x x^T. Float32 on an AVX-512 CPU: the kernel that multiplies only the upper triangle's tiles (half the
// work). Otherwise through BLAS; from 96 rows on only the upper half of the blocks (x_1 [x_1; x_2]^T and
// x_2 x_2^T: 3/4 of the work) and the lower-left block mirrored.
at::Tensor input_gram(const at::Tensor& x) {
  const int64_t B = x.size(0);
#ifdef NHL_HAVE_GEMM_AVX512
  if (use_avx512_kernels(x)) {
    at::Tensor gram = at::empty({B, B}, x.options());
    gram_avx512(x.data_ptr<float>(), B, x.size(1), x.size(1), gram.data_ptr<float>());
    return gram;
  }
#endif
  if (B < 96) return gemm_nt(x, x);
  const int64_t h = B / 2;
  const at::Tensor top = gemm_nt(x.narrow(0, 0, h), x);                                 // (h, B)
  const at::Tensor bottom = gemm_nt(x.narrow(0, h, B - h), x.narrow(0, h, B - h));     // (B-h, B-h)
  at::Tensor gram = at::empty({B, B}, x.options());
  gram.narrow(0, 0, h).copy_(top);
  gram.narrow(0, h, B - h).narrow(1, h, B - h).copy_(bottom);
  gram.narrow(0, h, B - h).narrow(1, 0, h).copy_(top.narrow(1, h, B - h).t());
  return gram;
}

// sum over rows r < n and columns c < w of a[r, c] * b[r, c] (row strides lda, ldb), in double
template <typename T>
double block_dot(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t n, int64_t w) {
  double total = 0;
  for (int64_t r = 0; r < n; ++r) {
    const T* ar = a + r * lda;
    const T* br = b + r * ldb;
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < w; ++c) acc += ar[c] * br[c];
    total += double(acc);
  }
  return total;
}

// the dominance rule (reference.dominance_weights): weights (K,), conflicts (K, K) from the dots
template <typename T>
void dominance(const T* d, int64_t K, double beta, bool faithful, T* w, bool* conflict) {
  std::vector<T> alpha(K * K, T(1));
  for (int64_t i = 0; i + 1 < K; ++i) {
    const T norm2 = faithful ? d[0] : d[i * K + i];  // faithful: ||g_1[:b_i]||^2 = d[0, 0] for every i
    const T tau = T(beta) * norm2 / T(K - 1);
    for (int64_t j = i + 1; j < K; ++j) {
      const bool c = d[i * K + j] < -tau;
      conflict[i * K + j] = c;
      alpha[i * K + j] = c ? tau / -d[i * K + j] : T(1);
    }
    const T anchor = alpha[i * K + i + 1];
    for (int64_t j = i + 2; j < K; ++j) alpha[i * K + j] = std::min(alpha[i * K + j], anchor);
  }
  T sum = 0;
  for (int64_t j = 0; j < K; ++j) {
    T p = 1;
    for (int64_t i = 0; i < j; ++i) p *= alpha[i * K + j];
    w[j] = p;
    sum += p;
  }
  for (int64_t j = 0; j < K; ++j) w[j] = T(K) * w[j] / sum;
}

void check_same(const char* name, const at::Tensor& t, const at::Tensor& u, at::IntArrayRef shape) {
  check_same_dtype("nhl_objective", name, t, "u", u);
  check_shape("nhl_objective", name, t, shape);
}

// Everything after the distillation terms: dots and weights (when adaptive), total and grad_u.
struct Terms {
  at::Tensor grads, grad_d, deriv, x, losses, dist_d;  // losses, dist_d: float64
  at::IntArrayRef bits;
  std::vector<int64_t> offset;
  double beta, distill;
  bool faithful, closed_form, adaptive;
};

template <typename T>
void weigh_and_fold(const Terms& in, at::Tensor& weights, at::Tensor& conflicts, at::Tensor& dots, at::Tensor& total,
                    at::Tensor& grad_u) {
  const at::IntArrayRef bits = in.bits;
  const std::vector<int64_t>& offset = in.offset;
  const int64_t K = static_cast<int64_t>(bits.size());
  const int64_t B = grad_u.size(0), b_max = grad_u.size(1), P = offset[K];
  const bool adaptive = in.adaptive, use_distill = in.grad_d.defined();
  const double distill = in.distill;
  const at::Tensor &grads = in.grads, &grad_d = in.grad_d, &deriv = in.deriv, &x = in.x;
  if (adaptive) {
    // Gz (B, P): dO_k/dz = (dO_k/du) * du/dz, packed columns
    at::Tensor Gz = at::empty({B, P}, grad_u.options());
    {
      const T* gl = grads.defined() ? grads.data_ptr<T>() : nullptr;
      const T* gd = use_distill ? grad_d.data_ptr<T>() : nullptr;
      const T* dv = deriv.defined() ? deriv.data_ptr<T>() : nullptr;
      const T dw = T(distill);
      T* gz = Gz.data_ptr<T>();
      for (int64_t r = 0; r < B; ++r) {
        T* out = gz + r * P;
        for (int64_t p = 0; p < P; ++p) out[p] = gl ? gl[r * P + p] : T(0);
        if (gd)
          for (int64_t p = 0; p < P; ++p) out[p] += dw * gd[r * P + p];
        if (dv)
          for (int64_t k = 0; k < K; ++k)
            for (int64_t c = 0; c < bits[k]; ++c) out[offset[k] + c] *= dv[r * b_max + c];
      }
    }
    T* d = dots.data_ptr<T>();
    const T* l = Gz.data_ptr<T>();
    if (B <= P) {  // through the B x B input Gram: d_ij = <Gz_i, (x x^T) Gz_j> over length i's columns
      const at::Tensor gram = input_gram(x);
      at::Tensor right;  // (B, P) (x x^T) Gz
#ifdef NHL_HAVE_GEMM_AVX512
      if (use_avx512_kernels(x)) {
        right = at::empty({B, P}, grad_u.options());
        gemm_nn_prefix_avx512(gram.data_ptr<float>(), B, Gz.data_ptr<float>(), P, B, P, &B, 1,
                              right.data_ptr<float>(), P, 0);
      }
#endif
      if (!right.defined()) right = at::mm(gram, Gz);
      const T* rt = right.data_ptr<T>();
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = i; j < K; ++j)
          d[i * K + j] = d[j * K + i] = T(block_dot(l + offset[i], P, rt + offset[j], P, B, bits[i]));
    } else {  // the weight gradients themselves, (sum b_k, in): cheaper than the Gram for B > sum b_k
      const at::Tensor g = at::mm(Gz.t(), x);
      const int64_t width = x.size(1);
      const T* gp = g.data_ptr<T>();
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = i; j < K; ++j)
          d[i * K + j] = d[j * K + i] =
              T(block_dot(gp + offset[i] * width, width, gp + offset[j] * width, width, bits[i], width));
    }
    dominance<T>(d, K, in.beta, in.faithful, weights.data_ptr<T>(), conflicts.data_ptr<bool>());
  }
  // final weights: faithful quirk 3 drops the longest length's term when distillation is on
  std::vector<T> final_w(weights.data_ptr<T>(), weights.data_ptr<T>() + K);
  if (in.faithful && adaptive && use_distill) final_w[K - 1] = 0;
  const double* L = in.losses.data_ptr<double>();
  const double* D = in.dist_d.data_ptr<double>();
  double sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    const double term = (in.closed_form ? L[k] : 0.0) + (k + 1 < K ? distill * D[k] : 0.0);
    sum += double(final_w[k]) * term;
  }
  total.fill_(sum);
  // d total / du = sum_k final_k (dL_k/du if closed_form) + final_k distill dD_k/du, folded onto u's columns
  const T* gl = grads.defined() && in.closed_form ? grads.data_ptr<T>() : nullptr;
  const T* gd = use_distill ? grad_d.data_ptr<T>() : nullptr;
  T* out = grad_u.data_ptr<T>();
  for (int64_t r = 0; r < B; ++r) {
    T* row = out + r * b_max;
    for (int64_t k = 0; k < K; ++k) {
      const T wl = final_w[k], wd = final_w[k] * T(distill);
      const int64_t base = r * P + offset[k];
      if (gl && gd) {
#pragma omp simd
        for (int64_t c = 0; c < bits[k]; ++c) row[c] += wl * gl[base + c] + wd * gd[base + c];
      } else if (gl) {
#pragma omp simd
        for (int64_t c = 0; c < bits[k]; ++c) row[c] += wl * gl[base + c];
      } else if (gd) {
#pragma omp simd
        for (int64_t c = 0; c < bits[k]; ++c) row[c] += wd * gd[base + c];
      }
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> nhl_objective_cpu(
    const at::Tensor& u_in, const std::optional<at::Tensor>& grads_in, const at::Tensor& losses_in,
    const std::optional<at::Tensor>& x_in, const std::optional<at::Tensor>& deriv_in, at::IntArrayRef bits,
    double beta, double distill, bool faithful, bool closed_form) {
  // the GEMMs below re-enter the dispatcher: under autocast they would come back in bfloat16
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const std::vector<int64_t> offset = check_codes("nhl_objective", u_in, bits);  // packed column layout
  const int64_t K = static_cast<int64_t>(bits.size());
  const int64_t B = u_in.size(0), b_max = u_in.size(1);
  const int64_t P = offset[K];
  TORCH_CHECK_VALUE(losses_in.dim() == 1 && losses_in.size(0) == K, "nhl_objective: losses must be (K,) = (", K,
                    ",), got shape ", losses_in.sizes());
  TORCH_CHECK_VALUE(!closed_form || grads_in.has_value(), "nhl_objective: closed_form needs grads");
  TORCH_CHECK_VALUE(beta > 0, "nhl_objective: beta must be > 0, got ", beta);
  TORCH_CHECK_VALUE(distill >= 0, "nhl_objective: distill must be >= 0, got ", distill);
  const at::Tensor u = u_in.contiguous();
  at::Tensor grads, x, deriv;
  if (grads_in) {
    check_same("grads", *grads_in, u, {B, P});
    grads = grads_in->contiguous();
  }
  if (x_in) {
    TORCH_CHECK_VALUE(x_in->dim() == 2 && x_in->size(0) == B, "nhl_objective: x must be (B, in) with B=", B,
                      ", got shape ", x_in->sizes());
    check_same("x", *x_in, u, x_in->sizes());
    x = x_in->contiguous();
  }
  if (deriv_in) {
    check_same("relax_deriv", *deriv_in, u, {B, b_max});
    deriv = deriv_in->contiguous();
  }
  const bool use_distill = distill > 0 && K > 1;
  at::Tensor dist_d = at::zeros({K - 1}, u.options().dtype(at::kDouble));
  at::Tensor grad_d;  // (B, P) packed dD_k/du
  if (use_distill) std::tie(dist_d, grad_d) = cascade_distill_terms(u, bits);
  // weights need x and some gradient to weigh (dO_k/du = grads + distill grad_d, packed)
  const bool adaptive = x.defined() && K > 1 && (grads.defined() || use_distill);

  const auto opts = u.options();
  at::Tensor weights = at::ones({K}, opts);
  at::Tensor conflicts = at::zeros({K, K}, opts.dtype(at::kBool));
  at::Tensor dots = at::zeros({K, K}, opts);
  at::Tensor total = at::empty({}, opts);
  at::Tensor grad_u = at::zeros({B, b_max}, opts);
  const at::Tensor losses = losses_in.to(at::kDouble).contiguous();
  Terms terms{grads, grad_d, deriv, x, losses, dist_d, bits, offset, beta, distill, faithful, closed_form, adaptive};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "nhl_objective_cpu", [&] {
    weigh_and_fold<scalar_t>(terms, weights, conflicts, dots, total, grad_u);
  });
  return {total, grad_u, weights, conflicts, dots, dist_d.to(u.scalar_type())};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("nhl_objective", &nhl_objective_cpu); }

}  // namespace nhl
