// Torch-free multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012 / TPAMI 2014) over packed codes.
//
// Tables: substring j is the bit range [start_j, start_j + width_j) of the code; its table is a CSR
// directory over the 2^width_j keys (offsets, uint32) and the ids of the codes in each bucket, ascending.
// Substrings are disjoint but need not cover the code: by pigeonhole, a code within distance r of the
// query over the first b bits is within r on the union of the m substrings inside [0, b), so one of
// them is within floor(r / m). Nested lengths share the tables: length b uses the substrings inside
// its prefix (the caller passes how many).
//
// Search of one query at one length grows rho = 0, 1, ...: at step rho it probes substring j at exactly
// distance rho (every key at Hamming distance rho from the query's key). After substrings 0..j have been
// probed at rho and the others at rho - 1, every code at distance <= m*rho + j has been seen (an unseen
// code differs by >= rho+1 on j+1 substrings and >= rho on the rest). Candidates are de-duplicated with
// a bitset and verified by popcount into a max-heap of (distance, id); the search stops once the heap
// holds k codes and its worst distance is within the radius proven complete -- then the k smallest
// (distance, id) pairs are exact, ties included (every code at the k-th distance has been seen).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/bits.h"

namespace nhl {
namespace mih {

// The `width` bits of a code starting at bit `start` (width <= 32), LSB-first like the code.
inline uint32_t substring_key(const uint64_t* code, int start, int width) {
  const int w = start >> 6, s = start & 63;
  uint64_t v = code[w] >> s;
  if (s + width > 64) v |= code[w + 1] << (64 - s);
  return static_cast<uint32_t>(v & ((uint64_t(1) << width) - 1));
}

// Hamming distance over the first `bits` bits.
inline int prefix_distance(const uint64_t* a, const uint64_t* b, int bits) {
  const int full = bits >> 6, rem = bits & 63;
  int d = 0;
  for (int w = 0; w < full; ++w) d += popcount64(a[w] ^ b[w]);
  if (rem) d += popcount64((a[full] ^ b[full]) & ((uint64_t(1) << rem) - 1));
  return d;
}

struct Table {
  int start, width;
  const uint32_t* offsets;  // 2^width + 1
  const uint32_t* ids;      // N, bucket by bucket, ascending within a bucket
};

// Counting sort of ids 0..n-1 by the substring key: offsets (2^width + 1) and ids (n), stable (ids ascending).
inline void build_table(const uint64_t* codes, int64_t n, int words, int start, int width, uint32_t* offsets,
                        uint32_t* ids) {
  const int64_t buckets = int64_t(1) << width;
  std::memset(offsets, 0, sizeof(uint32_t) * (buckets + 1));
  for (int64_t i = 0; i < n; ++i) ++offsets[substring_key(codes + i * words, start, width) + 1];
  for (int64_t b = 0; b < buckets; ++b) offsets[b + 1] += offsets[b];
  std::vector<uint32_t> fill(offsets, offsets + buckets);
  for (int64_t i = 0; i < n; ++i) ids[fill[substring_key(codes + i * words, start, width)]++] = static_cast<uint32_t>(i);
}

// Per-thread scratch: the seen-bitset (cleared through the list of ids it marked) and the heap.
struct Scratch {
  std::vector<uint64_t> seen;
  std::vector<uint32_t> marked;
  std::vector<std::pair<int32_t, int64_t>> heap;  // max-heap on (distance, id)
  explicit Scratch(int64_t n) : seen((n + 63) / 64, 0) {}
  void clear() {
    for (uint32_t id : marked) seen[id >> 6] = 0;
    marked.clear();
    heap.clear();
  }
};

struct Result {
  bool gave_up;   // the work passed the budget: the caller answers this (query, length) by a flat scan
  int64_t work;   // buckets probed + candidates verified
};

// k nearest codes of `q` over the first `bits` bits, using tables[0 .. m-1]. out_d / out_i get k
// entries ascending by (distance, id). budget < 0: never give up.
inline Result search_one(const uint64_t* q, const uint64_t* codes, int64_t n, int words, const Table* tables,
                         int m, int bits, int64_t k, int64_t budget, Scratch& s, int32_t* out_d, int64_t* out_i) {
  s.clear();
  auto& heap = s.heap;
  heap.reserve(static_cast<size_t>(k));
  uint32_t qkey[64];
  int max_width = 0;
  for (int j = 0; j < m; ++j) {
    qkey[j] = substring_key(q, tables[j].start, tables[j].width);
    max_width = std::max(max_width, tables[j].width);
  }
  int64_t work = 0;
  bool done = false;
  auto offer = [&](uint32_t id) {
    uint64_t& word = s.seen[id >> 6];
    const uint64_t bit = uint64_t(1) << (id & 63);
    if (word & bit) return;
    word |= bit;
    s.marked.push_back(id);
    const std::pair<int32_t, int64_t> c(prefix_distance(q, codes + int64_t(id) * words, bits), id);
    if (static_cast<int64_t>(heap.size()) < k) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end());
    } else if (c < heap.front()) {
      std::pop_heap(heap.begin(), heap.end());
      heap.back() = c;
      std::push_heap(heap.begin(), heap.end());
    }
  };
  for (int rho = 0; rho <= max_width && !done; ++rho) {
    for (int j = 0; j < m && !done; ++j) {
      const Table& t = tables[j];
      if (rho > t.width) continue;  // unreachable: the search ends at rho == width (all codes seen)
      // masks of `rho` set bits among `width` (Gosper's hack), key = query key ^ mask
      const uint64_t limit = uint64_t(1) << t.width;
      for (uint64_t mask = (uint64_t(1) << rho) - 1; mask < limit;) {
        const uint32_t key = qkey[j] ^ static_cast<uint32_t>(mask);
        const uint32_t b0 = t.offsets[key], b1 = t.offsets[key + 1];
        work += 1 + (b1 - b0);
        for (uint32_t p = b0; p < b1; ++p) {
          if (p + 8 < b1) __builtin_prefetch(codes + int64_t(t.ids[p + 8]) * words);
          offer(t.ids[p]);
        }
        if (budget >= 0 && work > budget) return {true, work};
        if (mask == 0) break;
        const uint64_t c = mask & (~mask + 1), r = mask + c;
        mask = (((r ^ mask) >> 2) / c) | r;
      }
      // every key of this substring probed: every code has been seen
      const int64_t complete = rho == t.width ? INT64_MAX : int64_t(m) * rho + j;
      if (static_cast<int64_t>(heap.size()) == std::min(k, n) && heap.front().first <= complete) done = true;
    }
  }
  std::sort_heap(heap.begin(), heap.end());
  for (size_t i = 0; i < heap.size(); ++i) {
    out_d[i] = heap[i].first;
    out_i[i] = heap[i].second;
  }
  return {false, work};
}

}  // namespace mih
}  // namespace nhl
