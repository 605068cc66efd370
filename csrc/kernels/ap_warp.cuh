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

// One warp's walk of the database for query `qi`, 32 items at a time in index order:
// fn(i0, valid, d, rel, rel_lanes) with the lane's item i0 + lane, its distance d[l] for every
// length (meaningless where !valid, past the end), its relevance and the warp's relevant lanes.
// Every lane calls fn equally often, so fn may hold warp collectives.
template <class Fn>
__device__ inline void for_each_warp_item(const uint64_t* q, const uint64_t* db, int64_t n, int words,
                                          const uint64_t* ql, const uint64_t* dl, int label_words,
                                          const NestedLengths& len, int64_t qi, Fn fn) {
  const int lane = threadIdx.x & 31;
  const int ls = label_words == 0 ? 1 : label_words;
  const uint64_t* qc = q + qi * words;
  const uint64_t* qlab = ql + qi * ls;
  int d[kWarpMaxLengths];
  for (int64_t i0 = 0; i0 < n; i0 += 32) {
    const int64_t i = i0 + lane;
    const bool valid = i < n;
    bool rel = false;
    if (valid) {
      nested_distances(qc, db + i * words, len, d);
      rel = relevant(qlab, dl + i * ls, label_words);
    }
    fn(i0, valid, d, rel, __ballot_sync(0xffffffffu, rel));
  }
}

// Pass 1 for query `qi` by one warp: hist (bins words, zeroed here) gets every database item.
// The lanes whose items fall in one bin add once (__match_any_sync), as 32-bit atomics on the
// bin's two halves: a 64-bit shared-memory atomicAdd compiles to a compare-and-swap loop, and
// the halves never carry into each other (N < 2^32, kernels/ap.h).
__device__ inline void warp_histogram(const uint64_t* q, const uint64_t* db, int64_t n, int words, const uint64_t* ql,
                                      const uint64_t* dl, int label_words, const NestedLengths& len, int bins,
                                      int64_t qi, uint64_t* hist) {
  const int lane = threadIdx.x & 31;
  for (int b = lane; b < bins; b += 32) hist[b] = 0;
  __syncwarp();
  for_each_warp_item(q, db, n, words, ql, dl, label_words, len, qi,
                     [&](int64_t, bool valid, const int* d, bool, unsigned rel_lanes) {
    for (int l = 0; l < len.count; ++l) {
      const int key = valid ? len.offset[l] + d[l] : -1 - lane;  // lanes past the end: groups of one
      const unsigned peers = __match_any_sync(0xffffffffu, key);
      if (valid && lane == __ffs(peers) - 1) {
        unsigned* bin = reinterpret_cast<unsigned*>(hist + key);  // [0]: total, [1]: relevant
        atomicAdd(bin, unsigned(__popc(peers)));
        const unsigned r = __popc(peers & rel_lanes);
        if (r) atomicAdd(bin + 1, r);
      }
    }
  });
  __syncwarp();
}

}  // namespace nhl
