// sorted_nce_backward: (du, dv, dz, dz_anchor) of sorted_nce for the per-length weights `grad` (spec:
// reference.sorted_nce_backward), recomputing each anchor's sort and SoftSort recurrences (flash-attention
// style: the forward keeps nothing). The per-anchor core (O(N d), kernels/sorted_nce.h) leaves the B x N
// coefficient matrix C of the a-direction, a per-thread N x d latent gradient and dD (B anchors, N candidates);
// the rest is GEMMs here.
#include <torch/all.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/sorted_nce_prep.h"

namespace nhl {

namespace {

template <typename T>
void backward_terms(const sorted_nce::Inputs<T>& in, int64_t B, const T* dist, at::ArrayRef<double> sort_tau,
                    const std::vector<double>& grad, T* coef, T* delta, T* dzb, T* hbeta, T* ddist) {
  const int64_t K = static_cast<int64_t>(sort_tau.size()), N = in.B, d = in.d;  // B anchors, N candidates
#pragma omp parallel
  {
    const int tid = sorted_nce_thread_id();
    sorted_nce::Workspace<T> ws;
    ws.init(in, true);
    T* zb = dzb ? dzb + int64_t(tid) * N * d : nullptr;
    T* hb = hbeta ? hbeta + int64_t(tid) * N : nullptr;
    for (int64_t k = 0; k < K; ++k) {
      if (grad[k] == 0) continue;  // the same k on every thread: the loop's barriers stay matched
      const T inv_ts = T(1.0 / sort_tau[k]);
      const T scale = T(grad[k] / double(B));
      // one anchor per iteration: row i of coef and delta[i] are its own (the barrier ends each length);
      // a static schedule gives each thread the same anchors every call, so the per-thread dz partial
      // sum, and the gradients, are the same bits run to run (a dynamic one made backward non-reentrant)
#pragma omp for schedule(static)
      for (int64_t i = 0; i < B; ++i) {
        const T* drow = dist + (k * B + i) * N;
        sorted_nce::sort_row(in, drow, inv_ts, ws);
        delta[i] += sorted_nce::anchor_backward(in, i, inv_ts, scale, ws, coef + i * N, zb, hb,
                                                ddist + (k * B + i) * N);
      }
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sorted_nce_backward_cpu(
    const at::Tensor& grad, const at::Tensor& u, const at::Tensor& v, const at::Tensor& z, const at::Tensor& z_anchor,
    at::IntArrayRef bits, int64_t m, double tau, at::ArrayRef<double> sort_tau, bool hard) {
  const char* op = "sorted_nce_backward";
  check_sorted_nce(op, u, v, z, z_anchor, bits, m, tau, sort_tau);
  const int64_t K = static_cast<int64_t>(bits.size()), B = u.size(0), N = v.size(0), d = z.size(1);
  check_same_dtype(op, "grad", grad, "u", u);
  check_shape(op, "grad", grad, {K});
  const SortedNcePrep p = sorted_nce_prepare(op, u, v, z, z_anchor, bits);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::Tensor g64 = grad.detach().to(at::kDouble).contiguous();
  const std::vector<double> gvec(g64.data_ptr<double>(), g64.data_ptr<double>() + K);
  const int64_t threads = sorted_nce_threads();
  at::Tensor coef = at::zeros({B, N}, u.options());
  at::Tensor delta = at::zeros({B}, u.options());
  // per-thread latent partial sums: soft a B x d buffer, hard only the coefficients of z_j (dz_j += h_j z_j)
  at::Tensor dzb = hard ? at::Tensor() : at::zeros({threads, N, d}, u.options());
  at::Tensor hbeta = hard ? at::zeros({threads, N}, u.options()) : at::Tensor();
  at::Tensor ddist = at::zeros({K, B, N}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "sorted_nce_backward_cpu", [&] {
    const auto in = sorted_nce_inputs<scalar_t>(p, m, tau, hard);
    backward_terms<scalar_t>(in, B, p.dist.data_ptr<scalar_t>(), sort_tau, gvec, coef.data_ptr<scalar_t>(),
                             delta.data_ptr<scalar_t>(), hard ? nullptr : dzb.data_ptr<scalar_t>(),
                             hard ? hbeta.data_ptr<scalar_t>() : nullptr, ddist.data_ptr<scalar_t>());
  });
  // latents: dz = C^T a + the per-thread partial sums, da = C z + delta a
  at::Tensor dz = at::mm(coef.t(), p.a).add_(hard ? hbeta.sum(0).unsqueeze(1) * p.z : dzb.sum(0));
  at::Tensor da = at::addcmul(at::mm(coef, p.z), delta.unsqueeze(1), p.a);
  // codes: D_k = (b_k - u v^T) / (2 b_k), so column c of du takes every length with b_k > c:
  // du[:, block k] = W_k v[:, block k], W_k = sum_{k' >= k} -dD_k' / (2 b_k')  (dv: W_k^T u)
  const at::Tensor uc = u.contiguous(), vc = v.contiguous();
  at::Tensor du = at::empty_like(uc), dv = at::empty_like(vc);
  at::Tensor w = at::zeros({B, N}, u.options());
  for (int64_t k = K - 1; k >= 0; --k) {
    w.add_(ddist[k], -0.5 / double(bits[k]));
    const int64_t lo = k == 0 ? 0 : bits[k - 1];
    at::Tensor du_block = du.narrow(1, lo, bits[k] - lo), dv_block = dv.narrow(1, lo, bits[k] - lo);
    at::mm_out(du_block, w, vc.narrow(1, lo, bits[k] - lo));
    at::mm_out(dv_block, w.t(), uc.narrow(1, lo, bits[k] - lo));
  }
  return {du, dv, dz, da};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("sorted_nce_backward", &sorted_nce_backward_cpu); }

}  // namespace nhl
