// Torch-free exact top-k selection for small integer keys (Hamming distances in [0, b]).
//
// Order: ascending distance, ties by lower database index. Candidates are always kept in
// increasing index order (the database is streamed in order), so a *stable* selection and a
// *stable* counting sort give the tie rule for free. Selection is by counting over the b + 1
// possible distances (a histogram finds the k-th smallest distance d* and how many items at
// d* are needed), which beats a heap for small integer keys: O(n + b), no comparisons.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace nhl {

// Keep, in place and in order, the min(n, k) smallest (distance, index) pairs of d[0..n),
// idx[0..n) (held in increasing index order): every item with d < d*, then the first `need`
// items with d == d*. Returns the threshold a later (higher-index) item must beat: d* when
// n >= k, else max_d + 1 (everything may still enter). hist needs max_d + 1 ints.
inline int select_smallest(int32_t* d, int64_t* idx, int64_t& n, int64_t k, int max_d, int64_t* hist) {
  if (n < k) return max_d + 1;
  std::fill(hist, hist + max_d + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++hist[d[i]];
  int kth = 0;
  int64_t below = 0;  // items with distance < kth
  while (below + hist[kth] < k) below += hist[kth++];
  int64_t need = k - below, out = 0;
  for (int64_t i = 0; i < n; ++i) {  // branch-free: which items stay is data-dependent
    const int32_t di = d[i];
    const int64_t at = (di == kth) & (need > 0);
    need -= at;
    d[out] = di;
    idx[out] = idx[i];
    out += (di < kth) | at;
  }
  n = out;
  return kth;
}

// Stable counting sort of n (distance, index) pairs by distance into out_d / out_idx.
inline void sort_by_distance(const int32_t* d, const int64_t* idx, int64_t n, int max_d, int64_t* hist,
                             int32_t* out_d, int64_t* out_idx) {
  std::fill(hist, hist + max_d + 2, 0);
  for (int64_t i = 0; i < n; ++i) ++hist[d[i] + 1];
  for (int v = 0; v <= max_d; ++v) hist[v + 1] += hist[v];  // hist[v] = first slot of distance v
  for (int64_t i = 0; i < n; ++i) {
    const int64_t at = hist[d[i]]++;
    out_d[at] = d[i];
    out_idx[at] = idx[i];
  }
}

// Per (query, length) running thresholds: the state both candidate stores (CandidateLists
// here, RecordLists in topk_records.h) keep for the exact top-k.
struct LengthThresholds {
  int64_t k = 0;
  int L = 0;
  int64_t nq = 0;
  std::vector<int> max_d;        // per length: bits[l]
  std::vector<int32_t> thresh;   // per (query, length): the running k-th best distance (+1 before k items)
  std::vector<int64_t> below;    // below[list] = accepted items with d < thresh[list]
  std::vector<int64_t> scratch;  // bmax + 2 per-distance counts (selection, final counting sort)

  void reset_thresholds(int64_t nq_, int64_t k_, const std::vector<int>& bits) {
    nq = nq_;
    k = k_;
    L = static_cast<int>(bits.size());
    max_d = bits;
    const size_t lists = static_cast<size_t>(nq * L);
    below.assign(lists, 0);
    thresh.resize(lists);
    for (int64_t i = 0; i < nq; ++i)
      for (int l = 0; l < L; ++l) thresh[i * L + l] = bits[l] + 1;
    scratch.resize(static_cast<size_t>(*std::max_element(bits.begin(), bits.end())) + 2);
  }

  // Thresholds of query qi back to "anything enters".
  void reset_query_thresholds(int64_t qi) {
    for (int l = 0; l < L; ++l) {
      below[qi * L + l] = 0;
      thresh[qi * L + l] = max_d[l] + 1;
    }
  }
};

// Bounded candidate lists for a block of queries x L lengths, with an exact running threshold.
// Each list keeps a histogram of the distances it accepted and t = the smallest distance with
// at least k accepted items at or below it: exactly the k-th best distance seen so far. A new
// (higher-index) item enters only when d < t (at d == t it loses the tie to k earlier items),
// so after the first k items only items that belong to the running top-k are ever stored.
// Items pushed out stay in the buffer until it reaches `cap`, when one stable pass keeps the k
// best (all d < t, then the first k - below at d == t). Memory per list: cap pairs + b + 1
// counts, cap = 2k by default, so compaction costs O(1) per accepted item.
struct CandidateLists : LengthThresholds {
  int64_t cap = 0, hist_stride = 0;
  std::vector<int32_t> dist, hist;  // hist: per list, counts of accepted distances
  std::vector<int64_t> idx, count;

  void reset(int64_t nq_, int64_t k_, const std::vector<int>& bits, int64_t cap_ = 0, int64_t /*base: rows are stored whole*/ = 0) {
    reset_thresholds(nq_, k_, bits);
    hist_stride = static_cast<int64_t>(scratch.size()) - 1;  // bmax + 1
    hist.assign(nq * L * hist_stride, 0);
    cap = cap_ > k ? cap_ : std::max<int64_t>(2 * k, k + 16);
    const size_t lists = static_cast<size_t>(nq * L);
    if (dist.size() < lists * cap) {
      dist.resize(lists * cap);
      idx.resize(lists * cap);
    }
    count.assign(lists, 0);
  }

  // Empty the lists of query qi (all lengths), thresholds back to "anything enters".
  void reset_query(int64_t qi) {
    reset_query_thresholds(qi);
    for (int l = 0; l < L; ++l) count[qi * L + l] = 0;
    std::fill(hist.begin() + qi * L * hist_stride, hist.begin() + (qi + 1) * L * hist_stride, 0);
  }

  int32_t* dist_of(int64_t list) { return dist.data() + list * cap; }
  int64_t* idx_of(int64_t list) { return idx.data() + list * cap; }

  // Offer item (d, i), i above every index offered before, to list `list` (= query * L + length).
  // Returns true when the list's threshold dropped.
  bool push(int64_t list, int32_t d, int64_t i) { return d < thresh[list] && accept(list, d, i); }

  // push() for an item already known to beat the list's threshold.
  bool accept(int64_t list, int32_t d, int64_t i) {
    int64_t& n = count[list];
    if (n == cap) n = compact(list);
    dist_of(list)[n] = d;
    idx_of(list)[n] = i;
    ++n;
    int32_t* h = hist.data() + list * hist_stride;
    ++h[d];
    int64_t& c = below[list];
    if (++c < k) return false;
    int32_t& t = thresh[list];
    do c -= h[--t];  // lower t to the smallest distance with >= k items at or below it
    while (c >= k);
    return true;
  }

  // One stable pass keeping the list's best min(k, n) items; returns how many.
  int64_t compact(int64_t list) {
    const int32_t t = thresh[list];
    int64_t need = k - below[list], out = 0;
    int32_t* d = dist_of(list);
    int64_t* ix = idx_of(list);
    const int64_t n = count[list];
    for (int64_t j = 0; j < n; ++j) {  // branch-free, as in select_smallest
      const int32_t dj = d[j];
      const int64_t at = (dj == t) & (need > 0);
      need -= at;
      d[out] = dj;
      ix[out] = ix[j];
      out += (dj < t) | at;
    }
    return out;
  }

  // Cut list `list` to its best min(k, count) items (still in index order); returns how many.
  int64_t shrink(int64_t list) { return count[list] = compact(list); }

  // Offer row j with its distances dist[0..L) to every length of query qi (the interface the
  // scan shares with RecordLists). Returns the mask of lengths whose threshold dropped (L <= 64).
  // Branch-free test of all lengths first: which lengths accept is data-dependent.
  uint64_t offer(int64_t qi, const int32_t* dist, int64_t j) {
    if (L > 64) {  // scalar path only (its caller ignores the mask)
      for (int l = 0; l < L; ++l) push(qi * L + l, dist[l], j);
      return 0;
    }
    const int32_t* th = thresh.data() + qi * L;
    uint64_t pass = 0, lowered = 0;
    for (int l = 0; l < L; ++l) pass |= uint64_t(dist[l] < th[l]) << l;
    while (pass) {
      const int l = __builtin_ctzll(pass);
      pass &= pass - 1;
      lowered |= uint64_t(accept(qi * L + l, dist[l], j)) << l;
    }
    return lowered;
  }

  // offer() for each set bit of `lanes` (a 64-lane scan step; the interface of RecordLists):
  // lane < 32 is row row0 + lane, else row1 + lane, with distances dist[l * 64 + lane].
  uint64_t offer_lanes(int64_t qi, const uint8_t* dist, uint64_t lanes, int64_t row0, int64_t row1) {
    int32_t d[64];
    uint64_t lowered = 0;
    for (; lanes; lanes &= lanes - 1) {
      const int lane = __builtin_ctzll(lanes);
      for (int l = 0; l < L; ++l) d[l] = dist[l * 64 + lane];
      lowered |= offer(qi, d, (lane < 32 ? row0 : row1) + lane);
    }
    return lowered;
  }

  // The scan's interface with RecordLists, which counts lazily; every item here is counted as
  // it comes.
  void settle_all() {}

  // List `list`'s best min(k, count) items in index order into out_d / out_idx; returns how many.
  int64_t extract(int64_t list, int32_t* out_d, int64_t* out_idx) {
    const int64_t n = shrink(list);
    std::copy_n(dist_of(list), n, out_d);
    std::copy_n(idx_of(list), n, out_idx);
    return n;
  }

  // Write list `list`'s best min(k, count) items sorted (distance, then index) to out_d / out_idx.
  void emit_sorted(int64_t list, int32_t* out_d, int64_t* out_idx) {
    const int64_t n = shrink(list);
    sort_by_distance(dist_of(list), idx_of(list), n, max_d[list % L], scratch.data(), out_d, out_idx);
  }
};

}  // namespace nhl
