// unpack: (N, W) int64 words -> (N, bits) float32 of +-1 (+1 where the bit is set).
// One thread per output element (coalesced writes); the words are re-read through the cache.
// The op's tensor glue is at the end.
#include <algorithm>

#include "cuda/launchers.h"

namespace {

using u64 = unsigned long long;
constexpr int kThreads = 256;

__global__ void unpack_kernel(const u64* __restrict__ packed, int64_t n, int64_t words, int64_t bits,
                              float* __restrict__ out) {
  const int64_t total = n * bits;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = e / bits, j = e - row * bits;
    const u64 word = packed[row * words + (j >> 6)];
    out[e] = ((word >> (j & 63)) & 1ull) ? 1.f : -1.f;
  }
}

}  // namespace

extern "C" cudaError_t nhl_unpack_cuda(const int64_t* packed, int64_t n, int64_t words, int64_t bits, float* out,
                                       cudaStream_t stream) {
  if (n <= 0 || bits <= 0) return cudaSuccess;
  if (bits > 64 * words) return cudaErrorInvalidValue;
  const int64_t blocks = std::min<int64_t>((n * bits + kThreads - 1) / kThreads, 1 << 20);
  unpack_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(reinterpret_cast<const u64*>(packed), n,
                                                                         words, bits, out);
  return cudaGetLastError();
}

#ifndef NHL_KERNELS_ONLY
// ------------------------------------------------------------------ glue: unpack(Tensor packed, int bits) -> Tensor
#include "cuda/glue.h"

namespace nhl {

at::Tensor unpack_cuda(const at::Tensor& packed_in, int64_t bits) {
  const auto guard = glue::on_gpu("unpack", {{"packed", packed_in}});
  check_packed("unpack", "packed", packed_in);
  check_bits("unpack", bits, packed_in.size(1));
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor out = at::empty({packed.size(0), bits}, packed.options().dtype(at::kFloat));
  glue::check_launch("unpack", nhl_unpack_cuda(packed.data_ptr<int64_t>(), packed.size(0), packed.size(1), bits,
                                               out.data_ptr<float>(), glue::current_stream()));
  return out;
}

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) { m.impl("unpack", &unpack_cuda); }

}  // namespace nhl
#endif  // NHL_KERNELS_ONLY
