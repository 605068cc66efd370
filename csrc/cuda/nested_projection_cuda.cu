// nested_projection: z = x W^T by cuBLAS (at::mm, in the glue at the end), then this epilogue: one
// pass over the GEMM output adds the bias and applies the relaxation, writing z and u. Every code
// length is a prefix of these rows.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/acc_type.cuh"
#include "cuda/launchers.h"
#include "kernels/relax.h"

namespace {

using nhl::cuda::AccType;
using nhl::cuda::from_acc;
using nhl::cuda::to_acc;

template <typename T>
__global__ void relax_epilogue_kernel(T* __restrict__ z, T* __restrict__ u, const T* __restrict__ bias,
                                      int64_t rows, int64_t cols, nhl::Relax relax) {
  using A = typename AccType<T>::type;
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    // round z + b to T first, exactly as addmm does, so u and the packed signs agree with z
    const T zt = from_acc<T>(to_acc(z[i]) + to_acc(bias[i % cols]));
    z[i] = zt;
    u[i] = from_acc<T>(nhl::apply_relax<A>(to_acc(zt), relax));
  }
}

template <typename T>
cudaError_t launch(void* z, void* u, const void* bias, int64_t rows, int64_t cols, nhl::Relax relax,
                   cudaStream_t stream) {
  const int64_t n = rows * cols;
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65535));
  relax_epilogue_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<T*>(z), static_cast<T*>(u),
                                                            static_cast<const T*>(bias), rows, cols, relax);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t nhl_nested_projection_epilogue(void* z, void* u, const void* bias, int64_t rows, int64_t cols,
                                                      int relax, int dtype, cudaStream_t stream) {
  const auto r = static_cast<nhl::Relax>(relax);
  switch (dtype) {
    case nhl::kProjF32: return launch<float>(z, u, bias, rows, cols, r, stream);
    case nhl::kProjF64: return launch<double>(z, u, bias, rows, cols, r, stream);
    case nhl::kProjF16: return launch<__half>(z, u, bias, rows, cols, r, stream);
    case nhl::kProjBF16: return launch<__nv_bfloat16>(z, u, bias, rows, cols, r, stream);
    default: return cudaErrorInvalidValue;
  }
}

#ifndef NHL_KERNELS_ONLY
// ------------------------------------------------------------------ glue: nested_projection(Tensor x, Tensor weight, Tensor bias, str relax) -> (Tensor, Tensor)
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>

#include <tuple>

#include "cuda/glue.h"

namespace nhl {

std::tuple<at::Tensor, at::Tensor> nested_projection_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                          const at::Tensor& bias, c10::string_view relax_name) {
  const auto guard = glue::on_gpu("nested_projection", {{"x", x}, {"weight", weight}, {"bias", bias}});
  check_projection_args("nested_projection", x, weight, bias);
  const Relax relax = check_relax("nested_projection", relax_name);
  at::Tensor z = at::mm(x, weight.t());  // cuBLAS; the epilogue adds the bias and relaxes in one pass
  at::Tensor u = at::empty_like(z);
  const at::Tensor b = bias.contiguous();
  glue::check_launch("nested_projection",
                     nhl_nested_projection_epilogue(z.data_ptr(), u.data_ptr(), b.data_ptr(), z.size(0), z.size(1),
                                                    static_cast<int>(relax), glue::projection_dtype(x.scalar_type()),
                                                    glue::current_stream()));
  return {u, z};
}

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) { m.impl("nested_projection", &nested_projection_cuda); }

}  // namespace nhl
#endif  // NHL_KERNELS_ONLY
