// Torch-free helpers on packed binary codes: LSB-first int64 words, bit j of a
// code is (word[j / 64] >> (j % 64)) & 1. Shared by the CPU and CUDA kernels.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define NHL_HD __host__ __device__ __forceinline__
#else
#define NHL_HD inline
#endif

namespace nhl {

NHL_HD int words_for_bits(int64_t bits) { return static_cast<int>((bits + 63) / 64); }

// Mask of the bits of word `w` that belong to the first `bits` bits of a code.
NHL_HD uint64_t prefix_mask(int64_t bits, int w) {
  const int64_t lo = static_cast<int64_t>(w) * 64;
  if (bits >= lo + 64) return ~uint64_t(0);
  if (bits <= lo) return 0;
  return (uint64_t(1) << (bits - lo)) - 1;
}

NHL_HD int popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

}  // namespace nhl
