// pack: (N, b) real/bool codes -> (N, ceil(b/64)) int64 words, bit j of word j/64 at j%64,
// set where code > 0. One warp per output word: each lane reads 2 of its 64 codes (coalesced
// across the warp) and two ballots assemble the word. The op's tensor glue is at the end.
#include <algorithm>

#include "cuda/acc_type.cuh"
#include "cuda/launchers.h"

namespace {

using u64 = unsigned long long;
constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ bool positive(T v) { return nhl::cuda::to_acc(v) > 0; }

template <typename T>
__global__ void pack_kernel(const T* __restrict__ codes, int64_t n, int64_t bits, int64_t words,
                            u64* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t stride = (int64_t(gridDim.x) * blockDim.x) >> 5;
  // t is the same for all lanes of a warp, so the ballots below always see the full warp.
  for (int64_t t = first; t < n * words; t += stride) {
    const int64_t row = t / words, w = t - row * words;
    const T* src = codes + row * bits;
    const int64_t j0 = w * 64 + lane, j1 = j0 + 32;
    const unsigned lo = __ballot_sync(0xffffffffu, j0 < bits && positive(src[j0]));
    const unsigned hi = __ballot_sync(0xffffffffu, j1 < bits && positive(src[j1]));
    if (lane == 0) out[t] = (u64(hi) << 32) | u64(lo);
  }
}

template <typename T>
cudaError_t launch(const void* codes, int64_t n, int64_t bits, int64_t* out, cudaStream_t stream) {
  const int64_t words = (bits + 63) / 64;
  const int64_t warps_per_block = kThreads / 32;
  const int64_t blocks = std::min<int64_t>((n * words + warps_per_block - 1) / warps_per_block, 1 << 20);
  pack_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(static_cast<const T*>(codes), n, bits,
                                                                         words, reinterpret_cast<u64*>(out));
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t nhl_pack_cuda(const void* codes, int code_type, int64_t n, int64_t bits, int64_t* out,
                                     cudaStream_t stream) {
  if (n <= 0 || bits <= 0) return cudaSuccess;
  switch (code_type) {
    case NHL_CODES_BOOL: return launch<unsigned char>(codes, n, bits, out, stream);  // torch bool is 1 byte
    case NHL_CODES_F16: return launch<__half>(codes, n, bits, out, stream);
    case NHL_CODES_BF16: return launch<__nv_bfloat16>(codes, n, bits, out, stream);
    case NHL_CODES_F32: return launch<float>(codes, n, bits, out, stream);
    case NHL_CODES_F64: return launch<double>(codes, n, bits, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

#ifndef NHL_KERNELS_ONLY
// ------------------------------------------------------------------ glue: pack(Tensor codes) -> Tensor
#include "cuda/glue.h"

namespace nhl {

at::Tensor pack_cuda(const at::Tensor& codes_in) {
  const auto guard = glue::on_gpu("pack", {{"codes", codes_in}});
  check_pack_codes("pack", codes_in);
  int code_type = NHL_CODES_F32;
  switch (codes_in.scalar_type()) {
    case at::kBool: code_type = NHL_CODES_BOOL; break;
    case at::kHalf: code_type = NHL_CODES_F16; break;
    case at::kBFloat16: code_type = NHL_CODES_BF16; break;
    case at::kDouble: code_type = NHL_CODES_F64; break;
    default: break;  // float32 (check_pack_codes admitted only these)
  }
  const at::Tensor codes = codes_in.contiguous();
  const int64_t n = codes.size(0), bits = codes.size(1);
  at::Tensor out = at::empty({n, (bits + 63) / 64}, codes.options().dtype(at::kLong));
  glue::check_launch("pack", nhl_pack_cuda(codes.data_ptr(), code_type, n, bits, out.data_ptr<int64_t>(),
                                           glue::current_stream()));
  return out;
}

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) { m.impl("pack", &pack_cuda); }

}  // namespace nhl
#endif  // NHL_KERNELS_ONLY
