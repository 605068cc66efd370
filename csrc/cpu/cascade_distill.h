// The distillation terms shared by the ops cascade_distill and nhl_objective (csrc/cpu/cascade_distill_cpu.cpp).
#pragma once
#include <torch/all.h>

#include <tuple>

namespace nhl {

// Whether the float32 AVX-512 kernels (kernels/gemm_avx512.h) serve t: float32 on a CPU with AVX-512F, unless
// NHL_OBJECTIVE_KERNELS=generic forces the portable path (the tests run both).
bool use_avx512_kernels(const at::Tensor& t);

// ((K-1,) float64 D_k, (B, sum b_k) packed dD_k/du in u's dtype) for a contiguous float/double u (B, bits[-1]).
std::tuple<at::Tensor, at::Tensor> cascade_distill_terms(const at::Tensor& u, at::IntArrayRef bits);

}  // namespace nhl
