// nested_projection: (u, z) with z = x W^T + b (one addmm for every code length: the
// code of length b_k is the first b_k columns) and u = relax(z) in one fused pass.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include "checks.h"

namespace nhl {

template <typename scalar_t>
static void relax_rows(const scalar_t* z, scalar_t* u, int64_t n, Relax relax) {
  using acc_t = at::opmath_type<scalar_t>;  // float for half/bfloat16
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) u[i] = static_cast<scalar_t>(apply_relax<acc_t>(static_cast<acc_t>(z[i]), relax));
  });
}

std::tuple<at::Tensor, at::Tensor> nested_projection_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                         const at::Tensor& bias, c10::string_view relax_name) {
  check_projection_args("nested_projection", x, weight, bias);
  const Relax relax = check_relax("nested_projection", relax_name);
  // BLAS adds the broadcast bias in the GEMM itself (beta = 1).
  at::Tensor z = at::addmm(bias, x, weight.t()).contiguous();
  at::Tensor u = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "nested_projection_cpu", [&] {
    relax_rows(z.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), z.numel(), relax);
  });
  return {u, z};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("nested_projection", &nested_projection_cpu); }

}  // namespace nhl
