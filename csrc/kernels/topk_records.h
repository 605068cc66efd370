// Torch-free exact multi-length top-k candidates kept as ONE record list per query (CPU).
//
// CandidateLists (topk_select.h) stores an accepted row once per length that accepts it: with
// 5 lengths that is up to 5 scattered (int32, int64) writes and a data-dependent branch per
// length. Here a row that passes ANY length's threshold is stored once, as a record (uint32
// row offset + one uint8 distance per length); during the scan each (query, length) only
// keeps its histogram, count below the threshold and the threshold itself (the exact k-th
// best distance so far, updated from the histogram as in CandidateLists). The per-length top
// k is selected from the records at the end. Records are appended in increasing row order, so
// the tie rule (lower index first) holds for free.
//
// Why a record may be reused for a length that did not accept it: for length l with final
// threshold t, every record with d_l < t was accepted by l (thresholds only fall), and the
// records with d_l == t that l accepted precede in row order those it rejected (a rejection
// at d_l == t means t had already fallen there). So "all d_l < t, then the first k - below
// at d_l == t, in record order" is exactly l's top k. Compaction (when the list reaches cap)
// drops records that no length keeps by that same rule, bounding a query to cap records.
// Needs distances <= 255 (bits <= 255) and fewer than 2^32 rows per scan.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kernels/topk_select.h"

namespace nhl {

struct RecordLists : LengthThresholds<int64_t> {
  int64_t cap = 0, base = 0;    // base: the scan's first row (records hold row - base)
  std::vector<int64_t> nrec;    // per query: records held
  std::vector<uint32_t> rows;   // (nq, cap) row offsets
  std::vector<uint8_t> dists;   // (nq, L, cap) distances: per length contiguous (SIMD emit)

  // Bytes one query needs (for sizing query blocks).
  static int64_t bytes_per_query(int64_t k, int L, int bmax) {
    return default_cap(k, L) * (4 + L) + int64_t(L) * (bmax + 1) * 8;
  }
  // After compaction at most L * k records remain, so cap = 2 L k makes compaction O(L) per record.
  static int64_t default_cap(int64_t k, int L) { return std::max<int64_t>(2 * L * k, L * k + 64); }

  void reset(int64_t nq_, int64_t k_, const std::vector<int>& bits, int64_t cap_ = 0, int64_t base_ = 0) {
    reset_thresholds(nq_, k_, bits);
    base = base_;
    cap = cap_ > L * k ? cap_ : default_cap(k, L);
    if (rows.size() < static_cast<size_t>(nq * cap)) rows.resize(nq * cap);
    if (dists.size() < static_cast<size_t>(nq * cap * L)) dists.resize(nq * cap * L);
    nrec.assign(nq, 0);
  }

  // Empty query qi (all lengths), thresholds back to "anything enters".
  void reset_query(int64_t qi) {
    nrec[qi] = 0;
    reset_query_thresholds(qi);
  }

  // Offer row j (above every row offered before for this query) with its distances dist[0..L)
  // to query qi. Returns the mask of lengths whose threshold dropped. L <= 64.
  uint64_t offer(int64_t qi, const int32_t* dist, int64_t j) {
    int32_t* th = thresh.data() + qi * L;
    uint64_t pass = 0;
    for (int l = 0; l < L; ++l) pass |= uint64_t(dist[l] < th[l]) << l;
    if (!pass) return 0;
    int64_t& n = nrec[qi];
    if (n == cap) n = compact(qi);
    rows[qi * cap + n] = static_cast<uint32_t>(j - base);
    uint8_t* rd = dists.data() + qi * L * cap + n;
    ++n;
    for (int l = 0; l < L; ++l) rd[l * cap] = static_cast<uint8_t>(dist[l]);
    // Histograms only of the accepting lengths (usually one): touching all L would cost L
    // cache lines per record.
    uint64_t lowered = 0;
    for (uint64_t m = pass; m; m &= m - 1) {
      const int l = __builtin_ctzll(m);
      const int64_t list = qi * L + l;
      int64_t* h = hist.data() + list * hist_stride;
      ++h[dist[l]];
      int64_t c = below[list] + 1;
      if (c >= k) {  // lower t to the smallest distance with >= k items at or below it
        int32_t t = th[l];
        do c -= h[--t];
        while (c >= k);
        th[l] = t;
        lowered |= uint64_t(1) << l;
      }
      below[list] = c;
    }
    return lowered;
  }

  // One stable pass keeping the records some length still needs; returns how many.
  int64_t compact(int64_t qi) {
    int64_t need[64];
    const int32_t* th = thresh.data() + qi * L;
    for (int l = 0; l < L; ++l) need[l] = k - below[qi * L + l];
    uint32_t* r = rows.data() + qi * cap;
    uint8_t* d = dists.data() + qi * L * cap;
    const int64_t n = nrec[qi];
    int64_t out = 0;
    for (int64_t j = 0; j < n; ++j) {
      int64_t keep = 0;
      for (int l = 0; l < L; ++l) {
        const int32_t dl = d[l * cap + j];
        const int64_t at = (dl == th[l]) & (need[l] > 0);
        need[l] -= at;
        keep |= (dl < th[l]) | at;
        d[l * cap + out] = static_cast<uint8_t>(dl);
      }
      r[out] = r[j];
      out += keep;
    }
    return nrec[qi] = out;
  }

  // Length l's best min(k, offered) items of query qi, in index order; returns how many.
  int64_t extract(int64_t list, int32_t* out_d, int64_t* out_i) const {
    const int64_t qi = list / L;
    const int l = static_cast<int>(list % L);
    const int32_t t = thresh[list];
    int64_t need = k - below[list], out = 0;
    const uint32_t* r = rows.data() + qi * cap;
    const uint8_t* d = dists.data() + (qi * L + l) * cap;
    const int64_t n = nrec[qi];
    for (int64_t j = 0; j < n && out < k; ++j) {
      const int32_t dj = d[j];
      const int64_t at = (dj == t) & (need > 0);
      need -= at;
      out_d[out] = dj;
      out_i[out] = base + r[j];
      out += (dj < t) | at;
    }
    return out;
  }

  // Length l's best min(k, offered) items of query qi sorted (distance, then index), in one
  // pass: every record with d < t was accepted, so the histogram gives each distance's first
  // output slot (a counting sort without the count pass); stable, as records are in row order.
  void emit_sorted(int64_t list, int32_t* out_d, int64_t* out_i) {
    const int64_t qi = list / L;
    const int l = static_cast<int>(list % L);
    const int32_t t = thresh[list];
    int64_t* pos = scratch.data();
    const int64_t* h = hist.data() + list * hist_stride;
    pos[0] = 0;
    for (int v = 0; v < t && v <= max_d[l]; ++v) pos[v + 1] = pos[v] + h[v];
    int64_t need = k - below[list];
    const uint32_t* r = rows.data() + qi * cap;
    const uint8_t* d = dists.data() + (qi * L + l) * cap;
    const int64_t n = nrec[qi];
    auto take = [&](int64_t j) {
      const int32_t dj = d[j];
      if (dj > t || (dj == t && need == 0)) return;
      need -= dj == t;
      const int64_t slot = pos[dj]++;
      out_d[slot] = dj;
      out_i[slot] = base + r[j];
    };
    int64_t j = 0;
#if defined(__AVX2__)
    // Most records belong to other lengths: find the few with d <= t 32 at a time.
    const __m256i tv = _mm256_set1_epi8(static_cast<char>(std::min<int32_t>(t, 255)));
    for (; j + 32 <= n; j += 32) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + j));
      uint32_t m = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_min_epu8(v, tv), v)));
      for (; m; m &= m - 1) take(j + __builtin_ctz(m));
    }
#endif
    for (; j < n; ++j) take(j);
  }
};

}  // namespace nhl
