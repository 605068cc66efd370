// Torch-free multi-length Hamming distances on packed codes (CPU).
//
// All L requested lengths come out of ONE pass over the words: for each word, the
// lengths whose last bit lies in that word read the running count plus the masked
// popcount of their part of the word; the running count then takes the whole word.
// L lengths therefore cost L + W popcounts instead of L * W. The hot code sizes
// (1 and 2 words: 64/128-bit codes) are compile-time specialisations, like faiss's
// HammingComputer8/16; WU = 0 is the generic runtime-width version.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/bits.h"
#include "kernels/nibble_avx2.h"

namespace nhl {

// Where each requested length ends: the word holding its last bit and that word's mask.
struct LengthPlan {
  int L = 0;
  int words = 0;  // words the longest length reads: ceil(bits[L-1] / 64)
  std::vector<int> bits, last_word;
  std::vector<uint64_t> last_mask;

  LengthPlan() = default;
  LengthPlan(const int64_t* b, int n) : L(n), bits(n), last_word(n), last_mask(n) {
    for (int l = 0; l < n; ++l) {
      bits[l] = static_cast<int>(b[l]);
      last_word[l] = static_cast<int>((b[l] - 1) / 64);
      last_mask[l] = prefix_mask(b[l], last_word[l]);
    }
    words = n ? last_word[n - 1] + 1 : 0;
  }
  int max_bits() const { return L ? bits[L - 1] : 0; }
};

// out[l] = Hamming distance between the first bits[l] bits of q and d (WU words, 0 = plan.words).
template <int WU>
inline void distances(const uint64_t* __restrict q, const uint64_t* __restrict d, const LengthPlan& plan,
                      int32_t* __restrict out) {
  const int words = WU ? WU : plan.words;
  int acc = 0, l = 0;
#pragma GCC unroll 4
  for (int w = 0; w < words; ++w) {
    const uint64_t x = q[w] ^ d[w];
    for (; l < plan.L && plan.last_word[l] == w; ++l) out[l] = acc + popcount64(x & plan.last_mask[l]);
    acc += popcount64(x);
  }
}

// Full distance matrix block: out[(l * Q + i) * N + j] for queries [q0, q1) x database [n0, n1).
// q is (Q, W) and db (N, W) row-major words. The database is walked in tiles that stay in
// L1/L2 while every query of the block passes over them.
template <int WU>
inline void hamming_block(const uint64_t* q, const uint64_t* db, int64_t W, int64_t Q, int64_t N,
                          const LengthPlan& plan, int64_t q0, int64_t q1, int64_t n0, int64_t n1,
                          int32_t* out) {
  constexpr int64_t kTile = 2048;
  const int L = plan.L;
  const int64_t plane = Q * N;
  int32_t d[64];
  std::vector<int32_t> dyn;
  int32_t* dist = d;
  if (L > 64) {
    dyn.resize(L);
    dist = dyn.data();
  }
  for (int64_t t0 = n0; t0 < n1; t0 += kTile) {
    const int64_t t1 = std::min(n1, t0 + kTile);
    for (int64_t i = q0; i < q1; ++i) {
      const uint64_t* qi = q + i * W;
      int32_t* row = out + i * N;
      if (L == 1 && WU) {  // single length: no per-length loop
        for (int64_t j = t0; j < t1; ++j) {
          distances<WU>(qi, db + j * W, plan, dist);
          row[j] = dist[0];
        }
        continue;
      }
      for (int64_t j = t0; j < t1; ++j) {
        distances<WU>(qi, db + j * W, plan, dist);
        for (int l = 0; l < L; ++l) row[l * plane + j] = dist[l];
      }
    }
  }
}

#if defined(__AVX2__)
// 64/128-bit codes: distances of 32 codes at a time from the nibble-transposed tile.
template <int WU>
inline void hamming_block_avx2(const uint64_t* q, const uint64_t* db, int64_t W, int64_t Q, int64_t N,
                               const avx2::UnitPlan& up, int64_t q0, int64_t q1, int64_t n0, int64_t n1,
                               int32_t* out) {
  using avx2::kLanes;
  constexpr int U = 16 * WU;
  constexpr int64_t kGroups = 16;
  alignas(32) uint8_t tile[kGroups * U * kLanes];
  avx2::QueryTables<WU> qt;
  int32_t* rows[64];
  for (int64_t t0 = n0; t0 < n1; t0 += kGroups * kLanes) {
    const int64_t t1 = std::min(n1, t0 + kGroups * kLanes);
    const int64_t groups = (t1 - t0 + kLanes - 1) / kLanes;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t first = t0 + g * kLanes;
      avx2::transpose_group<WU>(db + first * W, W, static_cast<int>(std::min<int64_t>(kLanes, t1 - first)),
                                tile + g * U * kLanes);
    }
    for (int64_t i = q0; i < q1; ++i) {
      qt.init(q + i * W, up);
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t first = t0 + g * kLanes;
        for (int l = 0; l < up.L; ++l) rows[l] = out + (l * Q + i) * N + first;
        avx2::group_distances<WU>(tile + g * U * kLanes, qt, up, rows,
                                  static_cast<int>(std::min<int64_t>(kLanes, t1 - first)));
      }
    }
  }
}
#endif

inline void hamming_block_any(const uint64_t* q, const uint64_t* db, int64_t W, int64_t Q, int64_t N,
                              const LengthPlan& plan, int64_t q0, int64_t q1, int64_t n0, int64_t n1,
                              int32_t* out, bool allow_simd = true) {
#if defined(__AVX2__)
  avx2::UnitPlan up;
  if (allow_simd && plan.words <= 2 && up.init(plan.bits.data(), plan.L)) {
    if (plan.words == 1) return hamming_block_avx2<1>(q, db, W, Q, N, up, q0, q1, n0, n1, out);
    return hamming_block_avx2<2>(q, db, W, Q, N, up, q0, q1, n0, n1, out);
  }
#else
  (void)allow_simd;
#endif
  switch (plan.words) {
    case 1: return hamming_block<1>(q, db, W, Q, N, plan, q0, q1, n0, n1, out);
    case 2: return hamming_block<2>(q, db, W, Q, N, plan, q0, q1, n0, n1, out);
    default: return hamming_block<0>(q, db, W, Q, N, plan, q0, q1, n0, n1, out);
  }
}

}  // namespace nhl
