// Torch-free CUDA building blocks of the metric kernels: one warp per query, the query's
// per-length histograms ((items | relevant << 32) per bin, kernels/ap.h) in shared memory (or a
// global scratch row when they do not fit), the database streamed by the 32 lanes.
#pragma once
#include <cstdint>

#include "kernels/ap.h"

namespace nhl {

constexpr int kWarpMaxLengths = 64;

// Per-block copy of the length tables, built from bits[] by the first warp.
struct SharedLengths {
  int full[kWarpMaxLengths];
  int offset[kWarpMaxLengths];
  uint64_t partial[kWarpMaxLengths];
};

__device__ inline NestedLengths load_lengths(SharedLengths& s, const int64_t* bits, int L) {
  if (threadIdx.x == 0) {
    int off = 0;
    for (int l = 0; l < L; ++l) {
      const int b = int(bits[l]);
      s.full[l] = b / 64;
      s.partial[l] = b % 64 ? (uint64_t(1) << (b % 64)) - 1 : 0;
      s.offset[l] = off;
      off += b + 1;
    }
  }
  __syncthreads();
  return NestedLengths{L, s.full, s.partial, s.offset};
}

// Pass 1 for query `qi` by one warp: hist (bins words, zeroed here) gets every database item.
__device__ inline void warp_histogram(const uint64_t* q, const uint64_t* db, int64_t n, int words, const uint64_t* ql,
                                      const uint64_t* dl, int label_words, const NestedLengths& len, int bins,
                                      int64_t qi, uint64_t* hist) {
  const int lane = threadIdx.x & 31;
  for (int b = lane; b < bins; b += 32) hist[b] = 0;
  __syncwarp();
  const int ls = label_words == 0 ? 1 : label_words;
  const uint64_t* qc = q + qi * words;
  const uint64_t* qlab = ql + qi * ls;
  int d[kWarpMaxLengths];
  for (int64_t i = lane; i < n; i += 32) {
    nested_distances(qc, db + i * words, len, d);
    const uint64_t inc = 1 + (uint64_t(relevant(qlab, dl + i * ls, label_words)) << 32);
    for (int l = 0; l < len.count; ++l)
      atomicAdd(reinterpret_cast<unsigned long long*>(hist + len.offset[l] + d[l]), (unsigned long long)inc);
  }
  __syncwarp();
}

}  // namespace nhl
