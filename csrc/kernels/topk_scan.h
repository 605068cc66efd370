// Torch-free exact multi-length top-k scan (CPU): queries [q0, q1) against database rows
// [n0, n1), every length at once, leaving each (query, length) list with its best
// min(k, n1 - n0) candidates in CandidateLists (in index order; emit_sorted orders them).
//
// One pass over the database in tiles that stay in L1 while every query of the block passes
// over them. Per (query, length) a threshold (the k-th best distance so far) filters items;
// the few that pass go to a bounded candidate list cut back by counting selection
// (topk_select.h). Memory: the lists (O(queries * L * k)) plus one tile; never Q x N.
// 64/128-bit codes on AVX2 use the nibble filter (nibble_avx2.h: 32 codes per step, all
// lengths in registers); other widths use the scalar popcount path.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/hamming.h"
#include "kernels/nibble_avx2.h"
#include "kernels/topk_select.h"

namespace nhl {

struct TopkScanArgs {
  const uint64_t* q;   // (Q, W) words
  const uint64_t* db;  // (N, W) words
  int64_t W;
  const LengthPlan* plan;
};

// Offer database row j to every length of list block `qi` (distances recomputed exactly).
// Returns the mask of lengths whose threshold dropped. Branch-free test of all lengths first:
// which lengths accept is data-dependent, so per-length branches would mispredict. L <= 64.
template <int WU>
inline uint64_t offer_row(const TopkScanArgs& a, const uint64_t* qrow, int64_t j, int64_t qi, CandidateLists& lists,
                          int32_t* dist) {
  distances<WU>(qrow, a.db + j * a.W, *a.plan, dist);
  const int L = lists.L;
  const int32_t* th = lists.thresh.data() + qi * L;
  uint64_t pass = 0, lowered = 0;
  for (int l = 0; l < L; ++l) pass |= uint64_t(dist[l] < th[l]) << l;
  while (pass) {
    const int l = __builtin_ctzll(pass);
    pass &= pass - 1;
    lowered |= uint64_t(lists.accept(qi * L + l, dist[l], j)) << l;
  }
  return lowered;
}

template <int WU>
inline void topk_scan_scalar(const TopkScanArgs& a, int64_t q0, int64_t q1, int64_t n0, int64_t n1,
                             CandidateLists& lists) {
  constexpr int64_t kTile = 2048;
  const int L = lists.L;
  std::vector<int32_t> dist(L);
  for (int64_t t0 = n0; t0 < n1; t0 += kTile) {
    const int64_t t1 = std::min(n1, t0 + kTile);
    for (int64_t i = q0; i < q1; ++i) {
      const uint64_t* qrow = a.q + i * a.W;
      const int32_t* th = lists.thresh.data() + (i - q0) * L;
      for (int64_t j = t0; j < t1; ++j) {
        distances<WU>(qrow, a.db + j * a.W, *a.plan, dist.data());
        for (int l = 0; l < L; ++l)
          if (dist[l] < th[l]) lists.push((i - q0) * L + l, dist[l], j);
      }
    }
  }
}

#if defined(__AVX2__)
template <int WU>
inline void topk_scan_avx2(const TopkScanArgs& a, int64_t q0, int64_t q1, int64_t n0, int64_t n1,
                           CandidateLists& lists, const avx2::UnitPlan& up) {
  using avx2::kLanes;
  constexpr int U = 16 * WU;
  constexpr int64_t kGroups = 16;  // 512 codes per tile: 16 KiB (128-bit) of transposed nibbles
  const int L = lists.L;
  const int64_t nq = q1 - q0;
  std::vector<uint8_t> tile_raw(kGroups * U * kLanes + 32);
  uint8_t* tile = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(tile_raw.data()) + 31) & ~uintptr_t(31));
  // Per query: uint8 thresholds broadcast to 32 lanes (refreshed when a list's threshold drops).
  std::vector<uint8_t> thr_raw(nq * L * kLanes + 32);
  uint8_t* thr = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(thr_raw.data()) + 31) & ~uintptr_t(31));
  auto refresh = [&](int64_t qi, uint64_t which) {
    for (; which; which &= which - 1) {
      const int l = __builtin_ctzll(which);
      std::memset(thr + (qi * L + l) * kLanes, std::min(lists.thresh[qi * L + l], 255), kLanes);
    }
  };
  for (int64_t qi = 0; qi < nq; ++qi) refresh(qi, L == 64 ? ~uint64_t(0) : (uint64_t(1) << L) - 1);
  std::vector<avx2::QueryTables<WU>> qt(nq);
  for (int64_t qi = 0; qi < nq; ++qi) qt[qi].init(a.q + (q0 + qi) * a.W, up);
  std::vector<int32_t> dist(L);

  for (int64_t t0 = n0; t0 < n1; t0 += kGroups * kLanes) {
    const int64_t t1 = std::min(n1, t0 + kGroups * kLanes);
    const int64_t groups = (t1 - t0 + kLanes - 1) / kLanes;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t first = t0 + g * kLanes;
      avx2::transpose_group<WU>(a.db + first * a.W, a.W, static_cast<int>(std::min<int64_t>(kLanes, t1 - first)),
                                tile + g * U * kLanes);
    }
    const int tail = static_cast<int>((t1 - t0) - (groups - 1) * kLanes);
    const uint32_t tail_mask = tail == 32 ? ~0u : ((1u << tail) - 1);
    for (int64_t qi = 0; qi < nq; ++qi) {
      const uint64_t* qrow = a.q + (q0 + qi) * a.W;
      const uint8_t* qthr = thr + qi * L * kLanes;
      for (int64_t g = 0; g < groups; g += 2) {  // two groups per step; a lone last group pairs with itself
        const int64_t g1 = std::min(g + 1, groups - 1);
        uint64_t hits = avx2::filter_two_groups<WU>(tile + g * U * kLanes, tile + g1 * U * kLanes, qt[qi], up, qthr);
        if (!hits) continue;
        if (g1 == g) hits &= 0xFFFFFFFFull;
        if (g1 == groups - 1) hits &= g1 == g ? uint64_t(tail_mask) : (uint64_t(tail_mask) << 32) | 0xFFFFFFFFull;
        uint64_t lowered = 0;
        while (hits) {
          const int lane = __builtin_ctzll(hits);
          hits &= hits - 1;
          lowered |= offer_row<WU>(a, qrow, t0 + g * kLanes + lane, qi, lists, dist.data());
        }
        if (lowered) refresh(qi, lowered);
      }
    }
  }
}
#endif

// Scan queries [q0, q1) x rows [n0, n1) into `lists` (already reset for q1 - q0 queries).
inline void topk_scan(const TopkScanArgs& a, int64_t q0, int64_t q1, int64_t n0, int64_t n1, CandidateLists& lists,
                      bool allow_simd = true) {
  const int words = a.plan->words;
#if defined(__AVX2__)
  avx2::UnitPlan up;
  if (allow_simd && words <= 2 && up.init(a.plan->bits.data(), a.plan->L)) {
    if (words == 1) return topk_scan_avx2<1>(a, q0, q1, n0, n1, lists, up);
    return topk_scan_avx2<2>(a, q0, q1, n0, n1, lists, up);
  }
#else
  (void)allow_simd;
#endif
  if (words == 1) return topk_scan_scalar<1>(a, q0, q1, n0, n1, lists);
  if (words == 2) return topk_scan_scalar<2>(a, q0, q1, n0, n1, lists);
  return topk_scan_scalar<0>(a, q0, q1, n0, n1, lists);
}

}  // namespace nhl
