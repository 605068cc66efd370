// Torch-free CPU passes of the retrieval metrics over a block of queries (see kernels/ap.h).
//
// The database is streamed in tiles of kApTile items; inside a tile each query of the block runs
// over the items with its code, label and histogram hot in L1 (one (item, length) = one add).
//
// index_ap in one pass: while counting, a relevant item's bin counter already holds its position
// p inside its distance bin (items of that bin seen so far, itself included). It is logged as a
// record (query, bin, p); once the histograms are complete, rank = N_<d + p and relevant-rank =
// R_<d + j (j counted by replaying the records in index order). Records cost memory only for
// relevant items; a block whose records overflow the buffer re-walks the database instead
// (scan mode 2), so the working set stays bounded:
//   per thread: nq * bins * 8 B of histograms (bins = sum_l (bits[l] + 1); nq chosen so this is
//               <= 16 KiB, or one query's bins when those alone are larger)
//               + kApRecordCap * 8 B of records (8 MiB) + one tile of codes and labels.
#pragma once
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/ap.h"

namespace nhl {

constexpr int64_t kApTile = 512;
constexpr int kApMaxLengths = 64;
constexpr int kApMaxBlock = 16;                  // queries per block: 4 bits of a record hold the query
constexpr int64_t kApRecordCap = int64_t(1) << 20;  // records per thread

struct ApProblem {
  const uint64_t* q;          // (Q, words)
  const uint64_t* db;         // (N, words)
  int64_t n;                  // N
  int words;                  // W
  const uint64_t* q_labels;   // (Q, label_stride)
  const uint64_t* db_labels;  // (N, label_stride)
  int label_words;            // 0: class indices, else bitmask words
  NestedLengths len;
  int bins;                   // per-query histogram size
};

inline int label_stride(const ApProblem& p) { return p.label_words == 0 ? 1 : p.label_words; }

// LW: compile-time label words (0 = class index, >0 = that many mask words, -1 = runtime).
template <int LW>
inline bool relevant_t(const uint64_t* ql, const uint64_t* dl, int label_words) {
  if constexpr (LW == 0) {
    return ql[0] == dl[0];
  } else if constexpr (LW > 0) {
    uint64_t any = 0;
    for (int w = 0; w < LW; ++w) any |= ql[w] & dl[w];
    return any != 0;
  } else {
    return relevant(ql, dl, label_words);
  }
}

constexpr int kApMaxWords = 64;
constexpr int kApMaskWords = 4;  // codes of up to 256 bits: per-word masks, no indexed loads

// One query's view of the lengths: local copies so stores to the histogram alias nothing.
struct QueryLengths {
  int count;
  int full[kApMaxLengths];
  uint64_t partial[kApMaxLengths];
  uint64_t mask[kApMaxLengths][kApMaskWords];  // bits of length l in each word (codes of <= kApMaskWords words)
  uint64_t* bins[kApMaxLengths];               // histogram of length l
  uint32_t first_bin[kApMaxLengths];
};

inline void query_lengths(const ApProblem& p, uint64_t* hist, QueryLengths& ql) {
  ql.count = p.len.count;
  for (int l = 0; l < ql.count; ++l) {
    ql.full[l] = p.len.full[l];
    ql.partial[l] = p.len.partial[l];
    for (int w = 0; w < kApMaskWords; ++w)
      ql.mask[l][w] = w < ql.full[l] ? ~uint64_t(0) : (w == ql.full[l] ? ql.partial[l] : 0);
    ql.bins[l] = hist + p.len.offset[l];
    ql.first_bin[l] = uint32_t(p.len.offset[l]);
  }
}

// Distance policies: f(l, distance of length l) for every length of an item.
// AnyLengths<WT>: runtime lengths; codes of WT <= kApMaskWords words (compile time) AND each word
// with a per-length mask in registers, longer/runtime-width codes keep a running popcount per word.
template <int WT>
struct AnyLengths {
  template <class F>
  static inline void each(const QueryLengths& len, const uint64_t* qc, const uint64_t* item, int words, F&& f) {
    if constexpr (WT > 0 && WT <= kApMaskWords) {
      uint64_t x[WT];
      for (int w = 0; w < WT; ++w) x[w] = qc[w] ^ item[w];
      for (int l = 0; l < len.count; ++l) {
        int d = 0;
        for (int w = 0; w < WT; ++w) d += popcount64(x[w] & len.mask[l][w]);
        f(l, d);
      }
    } else {
      int cum = 0, w = 0;
      for (int l = 0; l < len.count; ++l) {
        for (; w < len.full[l]; ++w) cum += popcount64(qc[w] ^ item[w]);
        f(l, cum + (len.partial[l] ? popcount64((qc[w] ^ item[w]) & len.partial[l]) : 0));
      }
      (void)words;
    }
  }
};

// FixedLengths<B...>: the common length sets known at compile time (faiss-style specialisation):
// full words are popcounted once (CSE), each length adds at most one masked popcount, and the
// histogram pointers live in registers. 8,16,32,64,128 bits: 5 popcounts, 3 ANDs per item.
template <int... B>
struct FixedLengths {
  static constexpr int kWords = (std::max({B...}) + 63) / 64;
  template <int Bits>
  static inline int distance(const uint64_t* x) {
    int d = 0;
    for (int w = 0; w < Bits / 64; ++w) d += popcount64(x[w]);
    if constexpr (Bits % 64 != 0) d += popcount64(x[Bits / 64] & ((uint64_t(1) << (Bits % 64)) - 1));
    return d;
  }
  template <class F, size_t... I>
  static inline void each_impl(const uint64_t* x, F&& f, std::index_sequence<I...>) {
    constexpr int bits[] = {B...};
    (f(int(I), distance<bits[I]>(x)), ...);
  }
  template <class F>
  static inline void each(const QueryLengths&, const uint64_t* qc, const uint64_t* item, int, F&& f) {
    uint64_t x[kWords];
    for (int w = 0; w < kWords; ++w) x[w] = qc[w] ^ item[w];
    each_impl(x, f, std::make_index_sequence<sizeof...(B)>());
  }
  static bool matches(const int64_t* bits, int count, int words) {
    constexpr int64_t mine[] = {B...};
    if (count != int(sizeof...(B)) || words != kWords) return false;
    for (int l = 0; l < count; ++l)
      if (bits[l] != mine[l]) return false;
    return true;
  }
};

// Scan items [i0, i1) for one query. Mode 0: count; 1: count and log relevant items as
// records (tag | bin << 32 | p) -- returns false (stop) when `cap` is reached; 2: rank walk
// (bins hold N_<d | R_<d << 32; bins above cut[l] skipped; accumulate AP terms).
template <class D, int LW, int MODE>
inline bool scan_query(const ApProblem& p, const uint64_t* qc_in, const uint64_t* qlab, int64_t i0, int64_t i1,
                       QueryLengths& len, uint64_t tag, uint64_t* __restrict rec, int64_t& n_rec, int64_t cap,
                       const int* cut, uint64_t k, double* acc, int64_t* hits) {
  const int W = p.words, LS = label_stride(p), L = len.count;
  uint64_t qc[kApMaxWords];
  for (int w = 0; w < W; ++w) qc[w] = qc_in[w];
  const uint64_t* __restrict db = p.db;
  const uint64_t* __restrict dbl = p.db_labels;
  // Locals, not the caller's variables: histogram stores (uint64_t) may alias int64_t/double
  // objects, which would force a reload after every add.
  int64_t nr = n_rec;
  double acc_l[kApMaxLengths];
  int64_t hits_l[kApMaxLengths];
  if constexpr (MODE == 2)
    for (int l = 0; l < L; ++l) acc_l[l] = acc[l], hits_l[l] = hits[l];
  for (int64_t i = i0; i < i1; ++i) {
    const uint64_t* item = db + i * W;
    const bool rel = relevant_t<LW>(qlab, dbl + i * LS, p.label_words);
    if constexpr (MODE == 0) {
      const uint64_t inc = 1 + (uint64_t(rel) << 32);
      D::each(len, qc, item, W, [&](int l, int d) { len.bins[l][d] += inc; });
    } else if constexpr (MODE == 1) {
      if (!rel) {
        D::each(len, qc, item, W, [&](int l, int d) { len.bins[l][d] += 1; });
      } else {
        if (nr + L > cap) return false;
        D::each(len, qc, item, W, [&](int l, int d) {
          const uint64_t v = (len.bins[l][d] += 1 + kRelevantOne);
          rec[nr++] = tag | (uint64_t(len.first_bin[l] + uint32_t(d)) << 32) | (v & kTotalMask);
        });
      }
    } else {
      D::each(len, qc, item, W, [&](int l, int d) {
        if (d > cut[l]) return;
        const uint64_t v = (len.bins[l][d] += 1 + (uint64_t(rel) << 32));
        const uint64_t rank = v & kTotalMask;
        if (rel && rank <= k) {
          acc_l[l] += double(v >> 32) / double(rank);
          hits_l[l] += 1;
        }
      });
    }
  }
  n_rec = nr;
  if constexpr (MODE == 2)
    for (int l = 0; l < L; ++l) acc[l] = acc_l[l], hits[l] = hits_l[l];
  return true;
}

template <class D, int LW, int MODE>
inline bool scan_block(const ApProblem& p, int64_t q0, int nq, uint64_t* hist, uint64_t* rec, int64_t& n_rec,
                       int64_t cap, const int* cut, uint64_t k, double* acc, int64_t* hits) {
  const int W = p.words, LS = label_stride(p), L = p.len.count;
  QueryLengths len;
  for (int64_t t0 = 0; t0 < p.n; t0 += kApTile) {
    const int64_t t1 = std::min(p.n, t0 + kApTile);
    for (int qq = 0; qq < nq; ++qq) {
      query_lengths(p, hist + int64_t(qq) * p.bins, len);
      const uint64_t tag = uint64_t(qq) << 60;
      if (!scan_query<D, LW, MODE>(p, p.q + (q0 + qq) * W, p.q_labels + (q0 + qq) * LS, t0, t1, len, tag, rec, n_rec,
                                   cap, cut + qq * L, k, acc + qq * L, hits + qq * L))
        return false;
    }
  }
  return true;
}

// Pass 1: hist[qq * bins + offset[l] + d] = (items | relevant items << 32) at distance d.
template <class D, int LW>
void histogram_block(const ApProblem& p, int64_t q0, int nq, uint64_t* hist) {
  std::fill(hist, hist + int64_t(nq) * p.bins, uint64_t(0));
  int64_t none = 0;
  scan_block<D, LW, 0>(p, q0, nq, hist, nullptr, none, 0, nullptr, 0, nullptr, nullptr);
}

// AP terms of a block (acc: sum of precisions of the relevant items within the top k, hits: their
// count), both (nq, L). rec: `cap` scratch records.
template <class D, int LW>
void index_ap_block(const ApProblem& p, int64_t q0, int nq, uint64_t k, uint64_t* hist, uint64_t* rec, int64_t cap, int* cut,
                    double* acc, int64_t* hits) {
  const int L = p.len.count;
  std::fill(hist, hist + int64_t(nq) * p.bins, uint64_t(0));
  std::fill(acc, acc + int64_t(nq) * L, 0.0);
  std::fill(hits, hits + int64_t(nq) * L, int64_t(0));
  int64_t n_rec = 0;
  const bool logged = scan_block<D, LW, 1>(p, q0, nq, hist, rec, n_rec, cap, nullptr, 0, nullptr, nullptr);
  if (!logged) histogram_block<D, LW>(p, q0, nq, hist);  // too many relevant items: count only
  for (int qq = 0; qq < nq; ++qq)
    for (int l = 0; l < L; ++l) {
      uint64_t rel_total = 0;
      const int end = l + 1 < L ? p.len.offset[l + 1] : p.bins;
      cut[qq * L + l] = histogram_to_base(hist + int64_t(qq) * p.bins + p.len.offset[l], end - p.len.offset[l], k, &rel_total);
    }
  if (!logged) {  // second walk in index order (bins now hold N_<d | R_<d << 32)
    int64_t none = 0;
    scan_block<D, LW, 2>(p, q0, nq, hist, nullptr, none, 0, cut, k, acc, hits);
    return;
  }
  // Replay the records in index order: each bumps R_<d to R_<d + j in its bin.
  std::vector<int> length_of_bin(p.bins);
  for (int l = 0; l < L; ++l)
    std::fill(length_of_bin.begin() + p.len.offset[l], l + 1 < L ? length_of_bin.begin() + p.len.offset[l + 1] : length_of_bin.end(), l);
  for (int64_t r = 0; r < n_rec; ++r) {
    const uint64_t e = rec[r];
    const int qq = int(e >> 60);
    const uint32_t bin = uint32_t(e >> 32) & 0x0fffffffu;
    const uint64_t v = (hist[int64_t(qq) * p.bins + bin] += kRelevantOne);
    const uint64_t rank = (v & kTotalMask) + (e & kTotalMask);
    if (rank <= k) {
      const int l = length_of_bin[bin];
      acc[qq * L + l] += double(v >> 32) / double(rank);
      hits[qq * L + l] += 1;
    }
  }
}

}  // namespace nhl
