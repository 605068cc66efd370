// Torch-free CPU passes of the retrieval metrics over a block of queries (see kernels/ap.h).
//
// The database is streamed in tiles of kApTile items; inside a tile each query of the block runs
// over the items with its code, label and histogram hot in L1. Working set per thread:
// nq * bins * 8 bytes of histograms (bins = sum_l (bits[l] + 1)) + one tile of codes and labels.
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels/ap.h"

namespace nhl {

constexpr int64_t kApTile = 512;
constexpr int kApMaxLengths = 64;

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

// Pass 1: hist[qq * bins + offset[l] + d] += 1 | relevant << 32 for queries q0 .. q0 + nq.
template <int LW>
void histogram_block(const ApProblem& p, int64_t q0, int nq, uint64_t* hist) {
  const int W = p.words, LS = label_stride(p), L = p.len.count;
  std::fill(hist, hist + int64_t(nq) * p.bins, uint64_t(0));
  int d[kApMaxLengths];
  for (int64_t t0 = 0; t0 < p.n; t0 += kApTile) {
    const int64_t t1 = std::min(p.n, t0 + kApTile);
    for (int qq = 0; qq < nq; ++qq) {
      const uint64_t* qc = p.q + (q0 + qq) * W;
      const uint64_t* ql = p.q_labels + (q0 + qq) * LS;
      uint64_t* h = hist + int64_t(qq) * p.bins;
      for (int64_t i = t0; i < t1; ++i) {
        nested_distances(qc, p.db + i * W, p.len, d);
        const uint64_t inc = 1 + (uint64_t(relevant_t<LW>(ql, p.db_labels + i * LS, p.label_words)) << 32);
        for (int l = 0; l < L; ++l) h[p.len.offset[l] + d[l]] += inc;
      }
    }
  }
}

// Pass 2 (after histogram_to_base on every length): walk the database in index order again; each
// item bumps its bin, which then holds its rank (low half) and, if relevant, its relevant-rank
// (high half). Relevant items with rank <= k add relevant-rank / rank to acc and 1 to hits.
// Bins above cut[qq * L + l] (past the top k) are skipped.
template <int LW>
void rank_block(const ApProblem& p, int64_t q0, int nq, uint64_t* base, const int* cut, uint64_t k,
                double* acc, int64_t* hits) {
  const int W = p.words, LS = label_stride(p), L = p.len.count;
  int d[kApMaxLengths];
  std::fill(acc, acc + int64_t(nq) * L, 0.0);
  std::fill(hits, hits + int64_t(nq) * L, int64_t(0));
  for (int64_t t0 = 0; t0 < p.n; t0 += kApTile) {
    const int64_t t1 = std::min(p.n, t0 + kApTile);
    for (int qq = 0; qq < nq; ++qq) {
      const uint64_t* qc = p.q + (q0 + qq) * W;
      const uint64_t* ql = p.q_labels + (q0 + qq) * LS;
      uint64_t* h = base + int64_t(qq) * p.bins;
      const int* c = cut + qq * L;
      double* a = acc + qq * L;
      int64_t* hit = hits + qq * L;
      for (int64_t i = t0; i < t1; ++i) {
        nested_distances(qc, p.db + i * W, p.len, d);
        const bool rel = relevant_t<LW>(ql, p.db_labels + i * LS, p.label_words);
        if (!rel) {
          for (int l = 0; l < L; ++l)
            if (d[l] <= c[l]) h[p.len.offset[l] + d[l]] += 1;
        } else {
          for (int l = 0; l < L; ++l) {
            if (d[l] > c[l]) continue;
            const uint64_t v = (h[p.len.offset[l] + d[l]] += 1 + kRelevantOne);
            const uint64_t rank = v & kTotalMask;
            if (rank <= k) {
              a[l] += double(v >> 32) / double(rank);
              hit[l] += 1;
            }
          }
        }
      }
    }
  }
}

}  // namespace nhl
