// Nested code lengths as a kernel argument (by value, no device copy), and the fused per-word
// walk that yields the distance of every length from one pass over the words.
#pragma once
#include <cstdint>

#include "kernels/bits.h"

namespace nhl {
namespace cuda {

using u64 = unsigned long long;

// Lengths handled by one kernel launch; longer lists run as consecutive groups.
constexpr int kMaxLengths = 32;

struct Lengths {
  int n;                       // lengths in this group
  int words;                   // words covering the longest one
  int bits[kMaxLengths];       // strictly increasing
  int last_word[kMaxLengths];  // (bits - 1) / 64
  int bin_offset[kMaxLengths]; // start of this length's histogram (bits + 1 bins) in a query's row
  int bins;                    // sum of (bits + 1): one query's histogram row
  u64 mask[kMaxLengths];       // the bits of last_word that belong to the code
};

// Group of lengths bits[first, first + count) as a kernel argument.
inline Lengths make_lengths(const int64_t* bits, int64_t first, int count) {
  Lengths len{};
  len.n = count;
  int bins = 0;
  for (int l = 0; l < count; ++l) {
    const int64_t b = bits[first + l];
    len.bits[l] = static_cast<int>(b);
    len.last_word[l] = static_cast<int>((b - 1) / 64);
    len.mask[l] = prefix_mask(b, len.last_word[l]);
    len.bin_offset[l] = bins;
    bins += static_cast<int>(b) + 1;
  }
  len.bins = bins;
  len.words = len.last_word[count - 1] + 1;
  return len;
}

// Calls visit(i, l, d) with the distance d between query i of the tile (i < nvalid) and the
// database code `db_row` (nullptr: an all-zero code, for lanes past the end) over the first
// bits[l] bits, for every i and l, in an order that is the same for every thread (visit may
// hold warp collectives). One pass over the words: acc += popcount(x) per word, and a length
// ending in word w gets acc + popcount(x & mask).
template <int QT, typename Visit>
__device__ __forceinline__ void for_each_distance(const u64* __restrict__ q_tile, int nvalid, int64_t words,
                                                  const u64* __restrict__ db_row, const Lengths& len, Visit&& visit) {
  int acc[QT];
#pragma unroll
  for (int i = 0; i < QT; ++i) acc[i] = 0;
  int lp = 0;
  for (int w = 0; w < len.words; ++w) {
    const u64 y = db_row ? db_row[w] : 0ull;
    int le = lp;
    while (le < len.n && len.last_word[le] == w) ++le;
#pragma unroll
    for (int i = 0; i < QT; ++i) {
      if (i < nvalid) {
        const u64 x = q_tile[i * words + w] ^ y;
        for (int l = lp; l < le; ++l) visit(i, l, acc[i] + __popcll(x & len.mask[l]));
        acc[i] += __popcll(x);
      }
    }
    lp = le;
  }
}

}  // namespace cuda
}  // namespace nhl
