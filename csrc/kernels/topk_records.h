// Torch-free exact multi-length top-k candidates kept as ONE record list per query (CPU).
//
// CandidateLists (topk_select.h) stores an accepted row once per length that accepts it: with
// 5 lengths that is up to 5 scattered (int32, int64) writes and a data-dependent branch per
// length. Here a row that passes ANY length's threshold is stored once, as a record (uint32
// row offset + one uint8 distance per length); during the scan each (query, length) only
// keeps its threshold t (the exact k-th best distance so far) and `below`, the number of
// records with d < t. The per-length top k is selected from the records at the end. Records
// are appended in increasing row order, so the tie rule (lower index first) holds for free.
//
// Why a record may be reused for a length that did not accept it: for length l with final
// threshold t, every record with d_l < t was accepted by l (thresholds only fall), and the
// records with d_l == t that l accepted precede in row order those it rejected (a rejection
// at d_l == t means t had already fallen there). So "all d_l < t, then the first k - below
// at d_l == t, in record order" is exactly l's top k. Compaction (when the list reaches cap)
// drops records that no length keeps by that same rule, bounding a query to cap records.
// The same facts make `below` a function of the records alone (the records with d_l < t_l:
// all held, none dropped), so no histogram is kept: when below reaches k, t falls by counting
// the records at the next distance down (a SIMD pass; thresholds fall rarely). Records are
// counted into `below` in batches (settle(): one SIMD pass per length over the new ones), so
// an append is only stores; a threshold then falls a batch late, which admits a few more
// records and changes nothing else (a record beyond every threshold is never taken).
// Needs distances <= 255 (bits <= 255) and fewer than 2^32 rows per scan.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kernels/avx512_dispatch.h"
#include "kernels/topk_select.h"

namespace nhl {

// Storage left uninitialised: records are written before they are read, and zeroing the whole
// capacity (2 L k records per query) costs more than the scan itself at small k.
template <class T>
struct UninitArray {
  std::unique_ptr<T[]> p;
  int64_t size = 0;
  void reserve(int64_t n) {
    if (n > size) p.reset(new T[n]), size = n;
  }
  T* data() { return p.get(); }
  const T* data() const { return p.get(); }
};

struct RecordLists : LengthThresholds {
  int64_t cap = 0, base = 0;    // base: the scan's first row (records hold row - base)
  int64_t seg = 0;              // cap + 64: slack for whole-vector stores past the last record
  bool wide = false;            // AVX-512 paths (the scan then calls offer_lanes_avx512)
  std::vector<int64_t> nrec;    // per query: records held
  std::vector<int64_t> counted; // per query: records [0, counted) are in `below` (settle())
  static constexpr int64_t kSettle = 64;
  UninitArray<uint32_t> rows;   // (nq, seg) row offsets
  UninitArray<uint8_t> dists;   // (nq, L, seg) distances: per length contiguous (SIMD passes)
  std::vector<uint8_t> pick_d;   // emit_sorted: the distances and rows of the records it takes
  std::vector<uint32_t> pick_r;
  std::vector<int64_t> quarter_pos;  // emit_sorted's counting sort

  uint32_t* rows_of(int64_t qi) { return rows.data() + qi * seg; }
  const uint32_t* rows_of(int64_t qi) const { return rows.data() + qi * seg; }
  uint8_t* dists_of(int64_t qi, int l) { return dists.data() + (qi * L + l) * seg; }
  const uint8_t* dists_of(int64_t qi, int l) const { return dists.data() + (qi * L + l) * seg; }

  // Bytes one query needs (for sizing query blocks).
  static int64_t bytes_per_query(int64_t k, int L) { return default_cap(k, L) * (4 + L) + int64_t(L) * 16; }
  // After compaction at most L * k records remain, so cap = 2 L k makes compaction O(L) per
  // record; + 4 kSettle leaves room for whole scan steps (offer_lanes) and for the records
  // that wait to be counted (small k would compact every few steps otherwise).
  static int64_t default_cap(int64_t k, int L) { return 2 * L * k + 4 * kSettle; }

  void reset(int64_t nq_, int64_t k_, const std::vector<int>& bits, int64_t cap_ = 0, int64_t base_ = 0) {
    reset_thresholds(nq_, k_, bits);
    base = base_;
    cap = cap_ > 0 ? std::max(cap_, L * k + 64) : default_cap(k, L);
    seg = cap + 64;
    wide = records_avx512();
    rows.reserve(nq * seg);
    dists.reserve(nq * seg * L);
    nrec.assign(nq, 0);
    counted.assign(nq, 0);
    pick_d.resize(cap + 64);  // + a whole-vector store
    pick_r.resize(cap + 64);
  }

  // Empty query qi (all lengths), thresholds back to "anything enters".
  void reset_query(int64_t qi) {
    nrec[qi] = counted[qi] = 0;
    reset_query_thresholds(qi);
  }

  // Offer row j (above every row offered before for this query) with its distances dist[0..L)
  // to query qi: a record if some length's threshold passes it, counted as offer_lanes' are.
  // Returns the mask of lengths whose threshold dropped. L <= 64.
  uint64_t offer(int64_t qi, const int32_t* dist, int64_t j) {
    const int32_t* th = thresh.data() + qi * L;
    bool pass = false;
    for (int l = 0; l < L; ++l) pass |= dist[l] < th[l];
    if (!pass) return 0;
    const uint64_t lowered = make_room(qi, 1);
    const int64_t n = nrec[qi];
    rows_of(qi)[n] = static_cast<uint32_t>(j - base);
    for (int l = 0; l < L; ++l) dists_of(qi, l)[n] = static_cast<uint8_t>(dist[l]);
    nrec[qi] = n + 1;
    return lowered | settle_if_due(qi);
  }

  // Offer the rows of the set bits of `lanes` (a 64-lane scan step: lane < 32 is row row0 + lane,
  // else row1 + lane), each passing some length's threshold, with their distances
  // dist[l * 64 + lane]. The lanes are appended as records and counted later, by settle(), once
  // kSettle records are pending: an append is stores only, and a threshold falls at most that
  // many records late, which lets a few more records in (each length still accepts exactly the
  // rows below its running threshold: header). Returns the mask of lengths whose threshold
  // dropped.
  uint64_t offer_lanes(int64_t qi, const uint8_t* dist, uint64_t lanes, int64_t row0, int64_t row1) {
    uint64_t lowered = make_room(qi, __builtin_popcountll(lanes));
    int64_t n = nrec[qi];
    uint32_t* r = rows_of(qi);
    uint8_t* rd = dists_of(qi, 0);
    row0 -= base, row1 -= base;
    const int nl = L;  // locals: the byte stores below may alias any member
    const int64_t stride = seg;
    for (; lanes; lanes &= lanes - 1, ++n) {
      const int lane = __builtin_ctzll(lanes);
      r[n] = static_cast<uint32_t>((lane < 32 ? row0 : row1) + lane);
      const uint8_t* from = dist + lane;
      uint8_t* to = rd + n;
      for (int l = 0; l < nl; ++l, from += 64, to += stride) *to = *from;
    }
    nrec[qi] = n;
    return lowered | settle_if_due(qi);
  }

  // Before appending `hits` records: count and compact when they would not fit (cap >= L k + 64
  // and compaction keeps at most L k). Returns the mask of lengths whose threshold dropped.
  uint64_t make_room(int64_t qi, int64_t hits) {
    if (nrec[qi] + hits <= cap) return 0;
    const uint64_t lowered = settle(qi);
    compact(qi);
    return lowered;
  }
  uint64_t settle_if_due(int64_t qi) { return nrec[qi] - counted[qi] >= kSettle ? settle(qi) : 0; }

#ifdef NHL_RECORDS_AVX512
  // offer_lanes with one 64-lane compress per length (and the rows by one byte compress when
  // the step is contiguous and has at most 16 hits, the usual case; else four dword
  // compresses): no per-record loop, so no branch on how many lanes hit. Called from the
  // AVX-512 scan loop (topk_scan.h), into which it is inlined; dist 64-aligned.
  NHL_TARGET_AVX512 __attribute__((always_inline)) uint64_t offer_lanes_avx512(int64_t qi, const uint8_t* dist, uint64_t lanes, int64_t row0,
                                                int64_t row1) {
    const int hits = __builtin_popcountll(lanes);
    const uint64_t lowered = make_room(qi, hits);
    const int64_t n = nrec[qi];
    uint8_t* rd = dists_of(qi, 0) + n;
    uint32_t* r = rows_of(qi) + n;
    const int nl = L;  // locals: the stores below may alias any member
    const int64_t stride = seg;
    if (hits <= 16 && row0 == row1) {  // 16-byte stores: the step's records touch one line per stream
      for (int l = 0; l < nl; ++l)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(rd + l * stride),
                         low16(_mm512_maskz_compress_epi8(lanes, _mm512_load_si512(dist + l * 64))));
      const __m128i hit_ids = low16(_mm512_maskz_compress_epi8(lanes, lane_ids()));
      _mm512_storeu_si512(r, _mm512_add_epi32(_mm512_maskz_cvtepu8_epi32(0xFFFF, hit_ids),
                                              _mm512_set1_epi32(static_cast<int32_t>(row0 - base))));
    } else {  // stores write whole vectors (seg = cap + 64)
      for (int l = 0; l < nl; ++l) _mm512_storeu_si512(rd + l * stride, _mm512_maskz_compress_epi8(lanes, _mm512_load_si512(dist + l * 64)));
      const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
      for (int c = 0; c < 4; ++c) {  // lanes 16c..16c+15: rows (c < 2 ? row0 : row1) + lane
        const __mmask16 m = static_cast<__mmask16>(lanes >> (16 * c));
        const int64_t first = (c < 2 ? row0 : row1) - base + 16 * c;
        _mm512_storeu_si512(r, _mm512_maskz_compress_epi32(m, _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(first)))));
        r += __builtin_popcount(m);
      }
    }
    nrec[qi] = n + hits;
    return lowered | settle_if_due(qi);
  }
  // The low 16 bytes, by a zero-masked extract: GCC 12 warns (falsely) about the plain cast's
  // undefined source, and a masked 16-byte store costs several times more on AMD cores.
  NHL_TARGET_AVX512 static __m128i low16(__m512i v) { return _mm512_maskz_extracti32x4_epi32(0xF, v, 0); }
  NHL_TARGET_AVX512 static __m512i lane_ids() {  // bytes 0..63
    alignas(64) static const uint8_t ids[64] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63};
    return _mm512_load_si512(ids);
  }
#endif

  // Records of length l's distances d[0..n) below t.
  static int64_t count_below(const uint8_t* d, int64_t n, int32_t t) {
    if (t > 255) return n;  // uint8 distances
    int64_t c = 0, j = 0;
#if defined(__AVX2__)
    const __m256i tv = _mm256_set1_epi8(static_cast<char>(t)), zero = _mm256_setzero_si256();
    for (; j + 32 <= n; j += 32) {  // subs(t, d) > 0 where d < t
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + j));
      c += __builtin_popcount(~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_subs_epu8(tv, v), zero))));
    }
#endif
    for (; j < n; ++j) c += d[j] < t;
    return c;
  }

  void settle_all() {
    for (int64_t qi = 0; qi < nq; ++qi) settle(qi);
  }

  // Count the records of query qi appended since the last count into `below` (against the
  // thresholds now) and lower the thresholds that reach k. Returns the mask of lengths whose
  // threshold dropped. Everything that reads `below` (compact, extract, emit_sorted) settles
  // first.
  uint64_t settle(int64_t qi) {
    const int64_t from = counted[qi], n = nrec[qi] - from;
    if (n == 0) return 0;
    uint64_t full = 0;
    for (int l = 0; l < L; ++l) {
      const int64_t list = qi * L + l;
      full |= uint64_t((below[list] += count_below(dists_of(qi, l) + from, n, thresh[list])) >= k) << l;
    }
    counted[qi] = nrec[qi];
    for (uint64_t m = full; m; m &= m - 1) lower(qi, __builtin_ctzll(m));
    return full;
  }

  // Records of query qi at distance v for length l.
  int64_t count_at(int64_t qi, int l, int v) const {
    const uint8_t* d = dists_of(qi, l);
    const int64_t n = nrec[qi];
    int64_t c = 0, j = 0;
#if defined(__AVX2__)
    const __m256i vv = _mm256_set1_epi8(static_cast<char>(v));
    for (; j + 32 <= n; j += 32)
      c += __builtin_popcount(static_cast<uint32_t>(
          _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + j)), vv))));
#endif
    for (; j < n; ++j) c += d[j] == v;
    return c;
  }

  // Length l of query qi has below >= k: lower t to the k-th best distance of its records (the
  // smallest t with below(t) < k). Usually one or two steps down, each a SIMD count; a longer
  // fall (a list's first) takes one histogram pass.
  void lower(int64_t qi, int l) {
    const int64_t list = qi * L + l;
    int32_t t = thresh[list] - 1;
    int64_t c = below[list] - count_at(qi, l, t);
    for (int step = 0; step < 2 && c >= k; ++step) c -= count_at(qi, l, --t);
    if (c >= k) {
      const uint8_t* d = dists_of(qi, l);
      int64_t* h = scratch.data();  // h[t] collects every distance >= t
      std::fill(h, h + t + 1, 0);
      for (int64_t j = 0, n = nrec[qi]; j < n; ++j) ++h[std::min<int32_t>(d[j], t)];
      do c -= h[--t];
      while (c >= k);
    }
    thresh[list] = t;
    below[list] = c;
  }

  // One stable pass keeping the records some length still needs; returns how many.
  int64_t compact(int64_t qi) {
    settle(qi);
    int64_t need[64];
    const int32_t* th = thresh.data() + qi * L;
    for (int l = 0; l < L; ++l) need[l] = k - below[qi * L + l];
    uint32_t* r = rows_of(qi);
    uint8_t* d = dists_of(qi, 0);
    const int64_t n = nrec[qi];
    int64_t out = 0;
    for (int64_t j = 0; j < n; ++j) {
      int64_t keep = 0;
      for (int l = 0; l < L; ++l) {
        const int32_t dl = d[l * seg + j];
        const int64_t at = (dl == th[l]) & (need[l] > 0);
        need[l] -= at;
        keep |= (dl < th[l]) | at;
        d[l * seg + out] = static_cast<uint8_t>(dl);
      }
      r[out] = r[j];
      out += keep;
    }
    return nrec[qi] = counted[qi] = out;
  }

  // Length l's best min(k, offered) items of query qi, in index order; returns how many.
  int64_t extract(int64_t list, int32_t* out_d, int64_t* out_i) {
    const int64_t m = pick(list);
    for (int64_t j = 0; j < m; ++j) out_d[j] = pick_d[j], out_i[j] = base + pick_r[j];
    return m;
  }

  // The records list `list` (query qi, length l) takes: all d < t, then the first k - below at
  // d == t, in record order, copied to pick_d / pick_r; returns how many (min(k, offered)).
  int64_t pick(int64_t list) {
    const int64_t qi = list / L;
    settle(qi);
    const uint8_t* d = dists_of(qi, static_cast<int>(list % L));
    const int64_t need = k - below[list];
#ifdef NHL_RECORDS_AVX512
    if (wide) return pick_avx512(d, rows_of(qi), nrec[qi], thresh[list], need, pick_d.data(), pick_r.data());
#endif
    return pick_records(d, rows_of(qi), nrec[qi], thresh[list], need, pick_d.data(), pick_r.data());
  }

  // Length l's best min(k, offered) items of query qi sorted (distance, then index): the
  // records it takes (pick(): distances and rows side by side, so the sort reads them in
  // order), counted per distance, then placed by a stable counting sort.
  void emit_sorted(int64_t list, int32_t* out_d, int64_t* out_i) {
    const int64_t m = pick(list);
    const int l = static_cast<int>(list % L);
    const int32_t t = thresh[list];
    const uint8_t* pd = pick_d.data();
    const uint32_t* pr = pick_r.data();
    // The counting sort in four quarters of the records, interleaved: a counter bumped by
    // consecutive items waits on its own store, so one chain would cost a store-forwarding
    // latency per item. Quarter j's items of distance v go after quarters 0..j-1's (stable).
    const int nb = std::min(t, max_d[l]) + 1;
    if (quarter_pos.size() < static_cast<size_t>(4 * nb)) quarter_pos.resize(4 * nb);
    int64_t* pos = quarter_pos.data();  // pos[j * nb + v]
    std::fill(pos, pos + 4 * nb, 0);
    const int64_t from[5] = {0, m / 4, m / 2, 3 * m / 4, m};
    auto each = [&](auto&& f) {  // f(quarter, item) over the quarters in step
      const int64_t len = from[1];  // the shortest quarter
      for (int64_t i = 0; i < len; ++i)
        for (int j = 0; j < 4; ++j) f(j, from[j] + i);
      for (int j = 0; j < 4; ++j)
        for (int64_t i = from[j] + len; i < from[j + 1]; ++i) f(j, i);
    };
    each([&](int j, int64_t i) { ++pos[j * nb + pd[i]]; });
    int64_t at = 0;
    for (int v = 0; v < nb; ++v)
      for (int j = 0; j < 4; ++j) {
        const int64_t c = pos[j * nb + v];
        pos[j * nb + v] = at;
        at += c;
      }
    const int64_t b = base;
    each([&](int j, int64_t i) {
      const int32_t dj = pd[i];
      const int64_t slot = pos[j * nb + dj]++;
      out_d[slot] = dj;
      out_i[slot] = b + pr[i];
    });
  }

  // The records (of n: distances d, rows r) a length with threshold t takes: every d < t and the
  // first `need` at d == t, in record order, into pd / pr; returns how many.
  static int64_t pick_records(const uint8_t* d, const uint32_t* r, int64_t n, int32_t t, int64_t need, uint8_t* pd,
                              uint32_t* pr) {
    int64_t m = 0;
    auto take = [&](int64_t j) {  // branch-free: at d == t, whether `need` is left is data-dependent
      const int32_t dj = d[j];
      const int64_t in = (dj < t) | ((dj == t) & (need > 0));
      need -= (dj == t) & in;
      pd[m] = static_cast<uint8_t>(dj);
      pr[m] = r[j];
      m += in;
    };
    int64_t j = 0;
#if defined(__AVX2__)
    // Most records belong to other lengths: find the few with d <= t 32 at a time.
    const __m256i tv = _mm256_set1_epi8(static_cast<char>(std::min<int32_t>(t, 255)));
    for (; j + 32 <= n; j += 32) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + j));
      uint32_t bits = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_min_epu8(v, tv), v)));
      for (; bits; bits &= bits - 1) take(j + __builtin_ctz(bits));
    }
#endif
    for (; j < n; ++j)
      if (d[j] <= t) take(j);
    return m;
  }

#ifdef NHL_RECORDS_AVX512
  // pick_records 64 records at a time, branch-free: the mask of d < t, plus the first `need`
  // set bits of the mask of d == t (pdep finds the last one); their distances and rows are
  // compress-stored (whole vectors: pd / pr have 64 entries of slack).
  NHL_TARGET_AVX512 static int64_t pick_avx512(const uint8_t* d, const uint32_t* r, int64_t n, int32_t t, int64_t need,
                                               uint8_t* pd, uint32_t* pr) {
    if (t > 255) return pick_records(d, r, n, t, need, pd, pr);  // uint8 lanes: every record is below t
    const __m512i tv = _mm512_set1_epi8(static_cast<char>(t));
    int64_t m = 0;
    for (int64_t j = 0; j < n; j += 64) {
      const __mmask64 valid = n - j >= 64 ? ~__mmask64(0) : (__mmask64(1) << (n - j)) - 1;
      const __m512i v = _mm512_maskz_loadu_epi8(valid, d + j);
      const uint64_t lt = _mm512_mask_cmplt_epu8_mask(valid, v, tv), eq = _mm512_mask_cmpeq_epu8_mask(valid, v, tv);
      const int64_t take = std::min<int64_t>(__builtin_popcountll(eq), need);
      need -= take;
      const uint64_t last = take ? _pdep_u64(uint64_t(1) << (take - 1), eq) : 0;  // the take-th set bit
      const uint64_t keep = lt | (eq & ((last << 1) - 1) & -uint64_t(take > 0));
      if (!keep) continue;
      _mm512_storeu_si512(pd + m, _mm512_maskz_compress_epi8(keep, v));
      for (int c = 0; c < 4; ++c) {
        const __mmask16 k16 = static_cast<__mmask16>(keep >> (16 * c));
        _mm512_storeu_si512(pr + m, _mm512_maskz_compress_epi32(k16, _mm512_maskz_loadu_epi32(k16, r + j + 16 * c)));
        m += __builtin_popcount(k16);
      }
    }
    return m;
  }
#endif
};

}  // namespace nhl
