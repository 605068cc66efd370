// sorted_nce: SortedNCE of every code length through a fused SoftSort (spec: reference.sorted_nce), streamed
// per anchor: no (B, N, N) permutation and no (B, N, d) sorted latents (B anchors, N candidates), O(N d) memory
// per thread beyond the (K, B, N) distances. The soft latents come from two linear recurrences over the sorted
// order (O(N d) per anchor, kernels/sorted_nce.h); the hard (straight-through) forward is O(N log N) per anchor
// after a z^T.
#include <torch/all.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "cpu/sorted_nce_prep.h"

namespace nhl {

namespace {

template <typename T>
void forward_losses(const sorted_nce::Inputs<T>& in, int64_t B, const T* dist, at::ArrayRef<double> sort_tau,
                    T* per_anchor) {
  const int64_t K = static_cast<int64_t>(sort_tau.size()), N = in.B;  // B anchors, N candidates
#pragma omp parallel
  {
    sorted_nce::Workspace<T> ws;
    ws.init(in, false);
    for (int64_t k = 0; k < K; ++k) {
      const T inv_ts = T(1.0 / sort_tau[k]);
#pragma omp for schedule(dynamic, 4)
      for (int64_t i = 0; i < B; ++i) {
        const T* drow = dist + (k * B + i) * N;
        sorted_nce::sort_row(in, drow, inv_ts, ws);
        per_anchor[k * B + i] = sorted_nce::anchor_loss(in, i, ws);
      }
    }
  }
}

}  // namespace

at::Tensor sorted_nce_cpu(const at::Tensor& u, const at::Tensor& v, const at::Tensor& z, const at::Tensor& z_anchor,
                          at::IntArrayRef bits, int64_t m, double tau, at::ArrayRef<double> sort_tau, bool hard) {
  check_sorted_nce("sorted_nce", u, v, z, z_anchor, bits, m, tau, sort_tau);
  const SortedNcePrep p = sorted_nce_prepare("sorted_nce", u, v, z, z_anchor, bits);
  const int64_t K = static_cast<int64_t>(bits.size()), B = u.size(0);
  at::Tensor per_anchor = at::empty({K, B}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "sorted_nce_cpu", [&] {
    const auto in = sorted_nce_inputs<scalar_t>(p, m, tau, hard);
    forward_losses<scalar_t>(in, B, p.dist.data_ptr<scalar_t>(), sort_tau, per_anchor.data_ptr<scalar_t>());
  });
  return per_anchor.to(at::kDouble).mean(1).to(u.scalar_type());  // the anchors summed in double
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("sorted_nce", &sorted_nce_cpu); }

}  // namespace nhl
