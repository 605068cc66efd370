// nested_projection: (u, z) with z = x W^T + b (one addmm for every code length: the
// code of length b_k is the first b_k columns) and u = relax(z) in one fused pass.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include "kernels/relax.h"

namespace nhl {

Relax relax_or_throw(c10::string_view relax) {
  const int r = parse_relax(relax.data(), relax.size());
  TORCH_CHECK(r >= 0, "nested_projection: relax must be one of none, tanh, sign_ste, got ", std::string(relax));
  return static_cast<Relax>(r);
}

void check_projection_args(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D (B, in_features), got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D (b_max, in_features), got ", weight.dim(), "-D");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), op, ": bias must be 1-D of length ", weight.size(0));
  TORCH_CHECK(x.size(1) == weight.size(1), op, ": x has ", x.size(1), " features, weight expects ", weight.size(1));
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() && x.scalar_type() == bias.scalar_type(), op,
              ": x, weight and bias must share one dtype, got ", x.scalar_type(), ", ", weight.scalar_type(), ", ",
              bias.scalar_type());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
}

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
  const Relax relax = relax_or_throw(relax_name);
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
