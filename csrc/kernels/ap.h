// Torch-free helpers of the retrieval metrics (distance histograms, index-ordered AP), shared by
// the CPU and CUDA kernels.
//
// Several nested code lengths come out of one pass over the words of a pair: the distance of
// length l is the popcount of its full words (a running prefix sum over words) plus the popcount
// of its last, partial word. One relevance histogram bin holds both counters in one 64-bit word,
// total items in the low 32 bits and relevant ones in the high 32 bits, so each (item, length)
// costs a single add: requires N < 2^32 database items.
#pragma once
#include <cstdint>

#include "kernels/bits.h"

namespace nhl {

constexpr uint64_t kRelevantOne = uint64_t(1) << 32;  // +1 to the relevant half of a bin
constexpr uint64_t kTotalMask = 0xffffffffull;

// Per-length layout for nested distances and packed per-query histograms.
struct NestedLengths {
  int count;                 // L
  const int* full;           // full words of length l: bits[l] / 64
  const uint64_t* partial;   // mask of its remaining bits in word full[l] (0 when bits[l] % 64 == 0)
  const int* offset;         // first bin of length l in a per-query histogram of sum_l (bits[l] + 1) bins
};

// Distances of every nested length between codes a and b (W words each), ascending lengths.
NHL_HD void nested_distances(const uint64_t* a, const uint64_t* b, const NestedLengths& len, int* d) {
  int cum = 0, w = 0;
  for (int l = 0; l < len.count; ++l) {
    for (; w < len.full[l]; ++w) cum += popcount64(a[w] ^ b[w]);
    d[l] = cum + (len.partial[l] ? popcount64((a[w] ^ b[w]) & len.partial[l]) : 0);
  }
}

// Relevance: label_words == 0 means class indices (equal -> relevant), else bitmasks of
// label_words words (relevant when they share a set bit).
NHL_HD bool relevant(const uint64_t* ql, const uint64_t* dl, int label_words) {
  if (label_words == 0) return ql[0] == dl[0];
  for (int w = 0; w < label_words; ++w)
    if (ql[w] & dl[w]) return true;
  return false;
}

// In place: histogram bins (total | relevant << 32) of one length -> the counts strictly below each
// bin (N_<d | R_<d << 32), so that adding an item's increment yields its rank and relevant-rank.
// Returns the last bin that reaches into the top `k` (the straddling bin d*); total relevant in *rel_total.
NHL_HD int histogram_to_base(uint64_t* bins, int nbins, uint64_t k, uint64_t* rel_total) {
  uint64_t below = 0;  // N_<d | R_<d << 32
  int cut = nbins - 1;
  bool found = false;
  for (int d = 0; d < nbins; ++d) {
    const uint64_t here = bins[d];
    bins[d] = below;
    below += here;
    if (!found && (below & kTotalMask) >= k) {
      cut = d;
      found = true;
    }
  }
  *rel_total = below >> 32;
  return cut;
}

}  // namespace nhl
