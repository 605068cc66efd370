// nested_projection epilogue: one pass over the GEMM output adds the bias and applies the
// relaxation, writing z and u. Every code length is a prefix of these rows.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/acc_type.cuh"
#include "cuda/projection_launchers.h"
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
