// What the CPU forward and backward of sorted_nce share (csrc/cpu/sorted_nce_cpu.cpp, sorted_nce_backward_cpu.cpp):
// the prefix distances of every length from one running Gram, a z^T (the hard forward's <a_i, z_j*>) and the
// latents' norms the per-anchor core (kernels/sorted_nce.h) reads.
#pragma once
#include <torch/all.h>

#include "kernels/sorted_nce.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace nhl {

struct SortedNcePrep {
  at::Tensor dist;   // (K, B, N): D_k = (b_k - u[:, :b_k] v[:, :b_k]^T) / (2 b_k), B anchors, N candidates
  at::Tensor z, a;   // contiguous latents: z (N, d) candidates', a (B, d) anchors'
  at::Tensor zn2;    // (N,) |z_j|^2
  at::Tensor mt;     // (B, N) a z^T
  at::Tensor anorm;  // (B,) |a_i|
};

inline SortedNcePrep sorted_nce_prepare(const char* op, const at::Tensor& u, const at::Tensor& v, const at::Tensor& z,
                                        const at::Tensor& z_anchor, at::IntArrayRef bits) {
  // the GEMMs re-enter the dispatcher: under autocast they would come back in bfloat16
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const int64_t K = static_cast<int64_t>(bits.size()), B = u.size(0), N = v.size(0);
  SortedNcePrep p;
  const at::Tensor uc = u.contiguous(), vc = v.contiguous();
  p.dist = at::empty({K, B, N}, u.options());
  at::Tensor gram = at::zeros({B, N}, u.options());
  int64_t lo = 0;
  for (int64_t k = 0; k < K; ++k) {  // the Gram of the first b_k columns: the previous one plus this block's
    gram.addmm_(uc.narrow(1, lo, bits[k] - lo), vc.narrow(1, lo, bits[k] - lo).t());
    p.dist[k].copy_(gram).mul_(-0.5 / double(bits[k])).add_(0.5);
    lo = bits[k];
  }
  // NaN distances would break the sort's ordering (undefined behaviour), not only the value
  TORCH_CHECK_VALUE(at::isfinite(p.dist).all().item<bool>(), op, ": u and v must be finite");
  p.z = z.contiguous();
  p.a = z_anchor.contiguous();
  p.zn2 = p.z.square().sum(1);
  p.mt = at::mm(p.a, p.z.t());
  p.anorm = at::linalg_vector_norm(p.a, 2, {1});
  return p;
}

template <typename T>
sorted_nce::Inputs<T> sorted_nce_inputs(const SortedNcePrep& p, int64_t m, double tau, bool hard) {
  sorted_nce::Inputs<T> in;
  in.B = p.z.size(0);  // the per-anchor core's B is the candidate count N
  in.d = p.z.size(1);
  in.m = m;
  in.inv_tau = T(1.0 / tau);
  in.hard = hard;
  in.z = p.z.data_ptr<T>();
  in.a = p.a.data_ptr<T>();
  in.zn2 = p.zn2.data_ptr<T>();
  in.mt = p.mt.data_ptr<T>();
  in.anorm = p.anorm.data_ptr<T>();
  return in;
}

inline int sorted_nce_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int sorted_nce_thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace nhl
