// project_and_pack: rows of x stream through cuBLAS GEMM chunks (at::mm_out, in the glue at the
// end), then this epilogue: signs of (x W^T + b) packed into int64 words. One warp per
// (row, word): lane l tests columns 64w + l and 64w + 32 + l, and two warp ballots are
// the word's low and high halves (LSB-first, the engine's layout).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/acc_type.cuh"
#include "cuda/launchers.h"

namespace {

using nhl::cuda::AccType;
using nhl::cuda::from_acc;
using nhl::cuda::to_acc;

template <typename T>
__device__ __forceinline__ bool positive(const T* row, const T* bias, int64_t col, int64_t cols) {
  using A = typename AccType<T>::type;
  if (col >= cols) return false;
  const T v = from_acc<T>(to_acc(row[col]) + to_acc(bias[col]));  // rounded like addmm
  return to_acc(v) > A(0);
}

template <typename T>
__global__ void sign_pack_kernel(const T* __restrict__ z, const T* __restrict__ bias, int64_t rows, int64_t cols,
                                 int64_t words, uint64_t* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  // t is uniform across the warp, so every lane reaches both ballots
  for (int64_t t = warp; t < rows * words; t += warps) {
    const int64_t r = t / words, w = t - r * words;
    const T* row = z + r * cols;
    const unsigned lo = __ballot_sync(0xffffffffu, positive(row, bias, w * 64 + lane, cols));
    const unsigned hi = __ballot_sync(0xffffffffu, positive(row, bias, w * 64 + 32 + lane, cols));
    if (lane == 0) out[t] = static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << 32);
  }
}

template <typename T>
cudaError_t launch(const void* z, const void* bias, int64_t rows, int64_t cols, uint64_t* out, cudaStream_t stream) {
  const int64_t words = (cols + 63) / 64, tasks = rows * words;
  if (tasks == 0) return cudaSuccess;
  const int threads = 256, warps_per_block = threads / 32;
  const int blocks = static_cast<int>(std::min<int64_t>((tasks + warps_per_block - 1) / warps_per_block, 65535));
  sign_pack_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(z), static_cast<const T*>(bias), rows,
                                                       cols, words, out);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t nhl_sign_pack_epilogue(const void* z, const void* bias, int64_t rows, int64_t cols,
                                              uint64_t* out, int dtype, cudaStream_t stream) {
  switch (dtype) {
    case nhl::kProjF32: return launch<float>(z, bias, rows, cols, out, stream);
    case nhl::kProjF64: return launch<double>(z, bias, rows, cols, out, stream);
    case nhl::kProjF16: return launch<__half>(z, bias, rows, cols, out, stream);
    case nhl::kProjBF16: return launch<__nv_bfloat16>(z, bias, rows, cols, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

#ifndef NHL_KERNELS_ONLY
// ------------------------------------------------------------------ glue: project_and_pack(Tensor x, Tensor weight, Tensor bias) -> Tensor
#include <ATen/ops/mm.h>

#include "cuda/glue.h"

namespace nhl {

at::Tensor project_and_pack_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const auto guard = glue::on_gpu("project_and_pack", {{"x", x}, {"weight", weight}, {"bias", bias}});
  check_projection_args("project_and_pack", x, weight, bias);
  const int64_t n = x.size(0), bits = weight.size(0), words = (bits + 63) / 64;
  at::Tensor out = at::empty({n, words}, x.options().dtype(at::kLong));
  if (n == 0 || bits == 0) return out.zero_();
  // Rows stream through one GEMM buffer of about 64 MiB: the (N, bits) float codes never exist at once.
  const int64_t chunk = std::min<int64_t>(n, std::max<int64_t>(1024, (int64_t(64) << 20) / (bits * x.element_size())));
  at::Tensor buffer = at::empty({chunk, bits}, x.options());
  const at::Tensor wt = weight.t(), b = bias.contiguous();
  auto* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const cudaStream_t stream = glue::current_stream();
  const int dtype = glue::projection_dtype(x.scalar_type());
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t rows = std::min(chunk, n - start);
    at::Tensor z = buffer.narrow(0, 0, rows);
    at::mm_out(z, x.narrow(0, start, rows), wt);
    glue::check_launch("project_and_pack",
                       nhl_sign_pack_epilogue(z.data_ptr(), b.data_ptr(), rows, bits, dst + start * words, dtype, stream));
  }
  return out;
}

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) { m.impl("project_and_pack", &project_and_pack_cuda); }

}  // namespace nhl
#endif  // NHL_KERNELS_ONLY
