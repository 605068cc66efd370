// Torch-free exact multi-length top-k scan (CPU): queries [q0, q1) against database rows
// [n0, n1), every length at once, leaving each (query, length) list with its best
// min(k, n1 - n0) candidates in the lists (in index order; emit_sorted orders them).
//
// One pass over the database in tiles that stay in L1 while every query of the block passes
// over them. Per (query, length) a threshold (the k-th best distance so far) filters items;
// the few that pass go to a bounded candidate list cut back by counting selection
// (topk_select.h). Memory: the lists (O(queries * L * k)) plus one tile; never Q x N.
// 64/128-bit codes on AVX2 use the nibble filter (nibble_avx2.h: 64 codes per step, all
// lengths in registers; on AVX-512 CPUs one zmm per unit, nibble_avx512.h); other widths use
// the scalar popcount path.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/hamming.h"
#include "kernels/nibble_avx2.h"
#include "kernels/nibble_avx512.h"
#include "kernels/topk_records.h"
#include "kernels/topk_select.h"

namespace nhl {

struct TopkScanArgs {
  const uint64_t* q;   // (Q, W) words
  const uint64_t* db;  // (N, W) words
  int64_t W;
  const LengthPlan* plan;
  // Warm start (AVX2 path): with at least `sample_min_rows` rows, first scan every
  // `sample_every`-th group of 32 codes for starting thresholds (0 disables; tests lower these).
  int64_t sample_min_rows = 32768;
  int64_t sample_every = 64;
  double sample_margin = 1.5;  // the sample's threshold should admit ~margin * k codes overall
};

template <int WU, class Lists>
inline void topk_scan_scalar(const TopkScanArgs& a, int64_t q0, int64_t q1, int64_t n0, int64_t n1,
                             Lists& lists) {
  constexpr int64_t kTile = 2048;
  const int L = lists.L;
  std::vector<int32_t> dist(L);
  for (int64_t t0 = n0; t0 < n1; t0 += kTile) {
    const int64_t t1 = std::min(n1, t0 + kTile);
    for (int64_t i = q0; i < q1; ++i) {
      const uint64_t* qrow = a.q + i * a.W;
      for (int64_t j = t0; j < t1; ++j) {
        distances<WU>(qrow, a.db + j * a.W, *a.plan, dist.data());
        lists.offer(i - q0, dist.data(), j);
      }
    }
  }
}

#if defined(__AVX2__)
// The AVX2 scan over nibble-transposed tiles of up to kGroups groups of 32 codes. A tile's groups
// are given by their first row and size, so the same code scans contiguous tiles and samples.
// Groups 2p and 2p + 1 (one filter step) share 64-byte rows: unit u of the pair at
// tile[(p * U + u) * 64], the second group in the upper 32 bytes.
template <int WU>
struct NibbleScan {
  static constexpr int U = 16 * WU;
  static constexpr int kGroups = 16;  // 512 codes per tile: 16 KiB (128-bit) of transposed nibbles
  const TopkScanArgs& a;
  const avx2::UnitPlan& up;
  int64_t q0, nq;
  int L;
  static constexpr int kSteps = kGroups / 2;
  static constexpr int kSub = 64 / kSteps;  // queries filtered before their hits are handled
  std::vector<uint8_t> tile_raw, thr_raw, dist_raw;
  uint8_t *tile, *thr, *dist;  // 64-byte aligned; dist: per (query of the sub-block, step), (L, 64)
  std::vector<avx2::QueryTables<WU>> qt;
  bool wide;  // the AVX-512 filter and record appends (scan_avx512())
  int64_t first[kGroups];
  int size[kGroups];
  uint64_t step_lanes[kSteps];           // the lanes of step s (groups 2s, 2s + 1) that hold codes
  int64_t row0[kSteps], row1[kSteps];    // step s's lane < 32 is row row0 + lane, else row1 + lane
  uint64_t hits[kSub * kSteps];  // per (query of the sub-block, step): the lanes that hit

  static uint8_t* align64(std::vector<uint8_t>& v) {
    return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t(63));
  }
  NibbleScan(const TopkScanArgs& args, const avx2::UnitPlan& plan, int64_t q0_, int64_t q1, int L_, bool wide_)
      : a(args), up(plan), q0(q0_), nq(q1 - q0_), L(L_), tile_raw(kGroups * U * avx2::kLanes + 64),
        thr_raw(nq * L * avx2::kLanes + 64), dist_raw(int64_t(kSub) * kSteps * L * 64 + 64), qt(nq), wide(wide_) {
    tile = align64(tile_raw);
    thr = align64(thr_raw);
    dist = align64(dist_raw);
    for (int64_t qi = 0; qi < nq; ++qi) qt[qi].init(a.q + (q0 + qi) * a.W, up);
  }

  // Per query: uint8 thresholds broadcast to 32 lanes (refreshed when a list's threshold drops).
  template <class Lists>
  void refresh(const Lists& lists, int64_t qi, uint64_t which) {
    for (; which; which &= which - 1) {
      const int l = __builtin_ctzll(which);
      _mm256_store_si256(reinterpret_cast<__m256i*>(thr + (qi * L + l) * avx2::kLanes),
                         _mm256_set1_epi8(static_cast<char>(std::min(lists.thresh[qi * L + l], 255))));
    }
  }
  template <class Lists>
  void refresh_all(const Lists& lists) {
    for (int64_t qi = 0; qi < nq; ++qi) refresh(lists, qi, L == 64 ? ~uint64_t(0) : (uint64_t(1) << L) - 1);
  }

  // Scan the groups first[0..groups) for queries [qa, qb) of the block, kSub queries at a time:
  // first every step of every query is filtered (its distances and hit lanes kept), with no
  // branch on hits; then the steps that hit go to the lists. Why: a hit is rare and
  // unpredictable, and a mispredicted branch inside the filter loop also throws
  // away the filter work of the next steps already in flight (a step's hit mask resolves only
  // after its whole chain of unit sums). Lanes are judged against the thresholds at the tile's
  // start: a threshold that fell meanwhile only lets a few more records in (topk_records.h).
  template <class Lists>
  void scan_tile(int64_t groups, int64_t qa, int64_t qb, Lists& lists) {
    using avx2::kLanes;
    for (int64_t g = 0; g < groups; ++g)
      avx2::transpose_group<WU>(a.db + first[g] * a.W, a.W, size[g], pair_of(g) + (g & 1) * kLanes, 2 * kLanes);
    const int steps = static_cast<int>((groups + 1) / 2);
    auto lanes = [](int n) { return n == kLanes ? 0xFFFFFFFFull : (uint64_t(1) << n) - 1; };
    for (int s = 0; s < steps; ++s) {  // a lone last group's pair half is masked off
      const int64_t g = 2 * s;
      step_lanes[s] = lanes(size[g]) | (g + 1 < groups ? lanes(size[g + 1]) << 32 : 0);
      row0[s] = first[g];
      row1[s] = (g + 1 < groups ? first[g + 1] : first[g]) - kLanes;
    }
    for (int64_t q = qa; q < qb; q += kSub) {
      const int64_t qe = std::min(qb, q + kSub);
#ifdef NHL_RECORDS_AVX512
      if (wide) {
        offer_steps_avx512(filter_queries_avx512(q, qe, steps), q, lists);
        continue;
      }
#endif
      uint64_t any = 0;  // bit i: step i of the sub-block (query i / kSteps, step i % kSteps) hit
      for (int64_t qi = q; qi < qe; ++qi)
        for (int s = 0; s < steps; ++s) {
          const int i = static_cast<int>(qi - q) * kSteps + s;
          hits[i] = avx2::filter_two_groups<WU>(pair_of(2 * s), qt[qi], up, thr + qi * L * kLanes, step_dist(i)) & step_lanes[s];
          any |= uint64_t(hits[i] != 0) << i;
        }
      for (; any; any &= any - 1) {
        const int i = __builtin_ctzll(any), s = i % kSteps;
        const int64_t qi = q + i / kSteps;
        const uint64_t lowered = lists.offer_lanes(qi, step_dist(i), hits[i], row0[s], row1[s]);
        if (lowered) refresh(lists, qi, lowered);
      }
    }
  }

#ifdef NHL_RECORDS_AVX512
  // scan_tile's filter loop with the AVX-512 filter (one AVX-512 function, so it inlines);
  // returns the mask of sub-block steps that hit.
  NHL_TARGET_AVX512 uint64_t filter_queries_avx512(int64_t q, int64_t qe, int steps) {
    uint64_t any = 0;
    for (int64_t qi = q; qi < qe; ++qi)
      for (int s = 0; s < steps; ++s) {
        const int i = static_cast<int>(qi - q) * kSteps + s;
        hits[i] = avx512::filter_pair<WU>(pair_of(2 * s), qt[qi], up, thr + qi * L * avx2::kLanes, step_dist(i)) & step_lanes[s];
        any |= uint64_t(hits[i] != 0) << i;
      }
    return any;
  }
  template <class Lists>
  NHL_TARGET_AVX512 void offer_steps_avx512(uint64_t any, int64_t q, Lists& lists) {
    for (; any; any &= any - 1) {
      const int i = __builtin_ctzll(any), s = i % kSteps;
      const int64_t qi = q + i / kSteps;
      const uint64_t lowered = offer_wide(lists, qi, step_dist(i), hits[i], row0[s], row1[s]);
      if (lowered) refresh(lists, qi, lowered);
    }
  }
  NHL_TARGET_AVX512 uint64_t offer_wide(RecordLists& lists, int64_t qi, const uint8_t* d, uint64_t lanes, int64_t r0, int64_t r1) {
    return lists.offer_lanes_avx512(qi, d, lanes, r0, r1);
  }
  template <class Lists>  // CandidateLists (where record lists do not apply)
  uint64_t offer_wide(Lists& lists, int64_t qi, const uint8_t* d, uint64_t lanes, int64_t r0, int64_t r1) {
    return lists.offer_lanes(qi, d, lanes, r0, r1);
  }
#endif

  // Where the filter leaves the distances of step i of the sub-block.
  uint8_t* step_dist(int i) const { return dist + int64_t(i) * L * 64; }

  uint8_t* pair_of(int64_t g) const { return tile + (g / 2) * U * 2 * avx2::kLanes; }

  // Rows [n0, n1) in order, for queries [qa, qb).
  template <class Lists>
  void scan_rows(int64_t n0, int64_t n1, int64_t qa, int64_t qb, Lists& lists) {
    for (int64_t t0 = n0; t0 < n1;) {
      int64_t groups = 0;
      for (; groups < kGroups && t0 < n1; ++groups, t0 += avx2::kLanes) {
        first[groups] = t0;
        size[groups] = static_cast<int>(std::min<int64_t>(avx2::kLanes, n1 - t0));
      }
      scan_tile(groups, qa, qb, lists);
    }
  }

  // Every `every`-th group of 32 rows of [n0, n1) (whole groups only), all queries.
  template <class Lists>
  void scan_sample(int64_t n0, int64_t n1, int64_t every, Lists& lists) {
    const int64_t full_groups = (n1 - n0) / avx2::kLanes;
    int64_t groups = 0;
    for (int64_t g = every / 2; g < full_groups; g += every) {
      first[groups] = n0 + g * avx2::kLanes;
      size[groups] = avx2::kLanes;
      if (++groups == kGroups) scan_tile(groups, 0, nq, lists), groups = 0;
    }
    if (groups) scan_tile(groups, 0, nq, lists);
  }
};

// Whether to scan with the AVX-512 filter: as the record lists append (so that a test setting
// RecordLists::wide picks both paths), else as the CPU and NHL_TOPK_NO_AVX512 say.
inline bool scan_avx512(const RecordLists& lists) { return lists.wide; }
template <class Lists>
inline bool scan_avx512(const Lists&) { return records_avx512(); }

template <int WU, class Lists>
inline void topk_scan_avx2(const TopkScanArgs& a, int64_t q0, int64_t q1, int64_t n0, int64_t n1,
                           Lists& lists, const avx2::UnitPlan& up) {
  const int L = lists.L;
  const int64_t nq = q1 - q0, rows = n1 - n0, k = lists.k;
  NibbleScan<WU> scan(a, up, q0, q1, L, scan_avx512(lists));
  // Warm start. A streaming top-k admits ~k (1 + ln(N / k)) codes per list, most of them pushed
  // out later; starting from thresholds that a sample says admit ~1.5 k codes overall cuts that
  // to ~k. The sample's ks-th smallest distance t_s (ks = margin * k * sample fraction) gives
  // the threshold t_s + 1. If a list then still gets fewer than k codes, its query is rescanned
  // from scratch, so the result stays exact whatever the sample.
  std::vector<int32_t> start(nq * L, 0);
  bool warm = false;
  if (a.sample_every > 0 && rows >= a.sample_min_rows) {
    const int64_t sample_groups = (rows / avx2::kLanes + a.sample_every / 2) / a.sample_every;
    const double frac = double(sample_groups * avx2::kLanes) / double(rows);
    const int64_t ks = static_cast<int64_t>(a.sample_margin * double(k) * frac) + 4;
    auto take_thresholds = [&](auto& sample) {
      scan.refresh_all(sample);
      scan.scan_sample(n0, n1, a.sample_every, sample);
      sample.settle_all();
      for (int64_t list = 0; list < nq * L; ++list) {
        const int32_t t = std::min(lists.thresh[list], sample.thresh[list] + 1);
        if (t < lists.thresh[list]) lists.thresh[list] = start[list] = t, warm = true;
      }
    };
    if (sample_groups > 0 && ks * 4 <= sample_groups * avx2::kLanes) {
      if (rows <= int64_t(UINT32_MAX)) {  // record lists: one record per sampled hit, as in the scan
        RecordLists sample;  // early on every sampled row is a record: room for 8 L ks of them
        sample.reset(nq, ks, lists.max_d, 8 * L * ks, n0);
        sample.wide = scan.wide;
        take_thresholds(sample);
      } else {
        CandidateLists sample;
        sample.reset(nq, ks, lists.max_d, ks + std::max<int64_t>(ks, 64));
        take_thresholds(sample);
      }
    }
  }
  scan.refresh_all(lists);
  scan.scan_rows(n0, n1, 0, nq, lists);
  if (!warm) return;
  lists.settle_all();  // thresholds as every record says
  for (int64_t qi = 0; qi < nq; ++qi) {  // exactness check: a warm list must have lowered its threshold
    bool short_list = false;
    for (int l = 0; l < L; ++l) short_list |= start[qi * L + l] > 0 && lists.thresh[qi * L + l] == start[qi * L + l];
    if (!short_list) continue;
    lists.reset_query(qi);
    scan.refresh(lists, qi, L == 64 ? ~uint64_t(0) : (uint64_t(1) << L) - 1);
    scan.scan_rows(n0, n1, qi, qi + 1, lists);
  }
}
#endif

// Scan queries [q0, q1) x rows [n0, n1) into `lists` (already reset for q1 - q0 queries):
// CandidateLists (topk_select.h) or RecordLists (topk_records.h, reset with base = n0).
template <class Lists>
inline void topk_scan(const TopkScanArgs& a, int64_t q0, int64_t q1, int64_t n0, int64_t n1, Lists& lists,
                      bool allow_simd = true) {
  const int words = a.plan->words;
#if defined(__AVX2__)
  avx2::UnitPlan up;
  if (allow_simd && words <= 2 && up.init(a.plan->bits.data(), a.plan->L)) {
    if (words == 1) return topk_scan_avx2<1, Lists>(a, q0, q1, n0, n1, lists, up);
    return topk_scan_avx2<2, Lists>(a, q0, q1, n0, n1, lists, up);
  }
#else
  (void)allow_simd;
#endif
  if (words == 1) return topk_scan_scalar<1, Lists>(a, q0, q1, n0, n1, lists);
  if (words == 2) return topk_scan_scalar<2, Lists>(a, q0, q1, n0, n1, lists);
  return topk_scan_scalar<0, Lists>(a, q0, q1, n0, n1, lists);
}

}  // namespace nhl
