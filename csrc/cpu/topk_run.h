// Drives the exact multi-length top-k scan (kernels/topk_scan.h) on torch's threads and hands
// every (query, length)'s best k, sorted by (distance, then index), to a sink. Shared by the topk
// op (the sink is its output tensors) and index_ap's top-k path (the sink turns the k items'
// labels into AP@k, so nothing (L, Q, k) is ever materialised).
//
// Sink interface:
//   TopkSlot slot(int64_t query, int l, TopkSlot scratch): where the k sorted pairs go; scratch is
//                                                          a k-pair buffer private to the thread
//   void done(int64_t query, int l, TopkSlot written):     called once they are there
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/topk_scan.h"

namespace nhl {

struct TopkSlot {
  int32_t* d;
  int64_t* idx;
};

// RecordLists (one record per row that passes any length; topk_records.h) where it applies:
// records hold uint8 distances, uint32 row offsets and L-bit masks.
inline bool records_apply(const LengthPlan& plan, int64_t N) {
  return plan.L <= 64 && plan.max_bits() <= 255 && N <= int64_t(UINT32_MAX);
}

template <class Lists, class Sink>
void topk_run(const TopkScanArgs& args, int64_t Q, int64_t N, int64_t k, Sink& sink) {
  const LengthPlan& plan = *args.plan;
  const int L = plan.L;

  // Work units = (query block, database part). Few queries: split the database so every thread
  // works; each part keeps its own k best and a merge picks the final k. Query blocks are large
  // to amortise each tile's transpose over many queries, and bounded so that the candidate
  // lists (block * L * 2k pairs) stay within ~4 MiB per thread (cache-resident appends).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t parts = 1;
  if (Q < 2 * threads) parts = std::max<int64_t>(1, std::min((2 * threads + Q - 1) / Q, N / 16384));
  const int64_t list_bytes =
      std::is_same<Lists, RecordLists>::value
          ? RecordLists::bytes_per_query(k, L)
          : static_cast<int64_t>(L) * (std::max<int64_t>(2 * k, k + 16) * 12 + (plan.max_bits() + 1) * 4);
  const int64_t qb_max = std::clamp<int64_t>((int64_t(4) << 20) / list_bytes, 1, 256);
  int64_t blocks = std::max((Q + qb_max - 1) / qb_max, (threads + parts - 1) / parts);
  blocks = std::min(blocks, Q);
  const int64_t qb = (Q + blocks - 1) / blocks;
  blocks = (Q + qb - 1) / qb;

  // parts > 1: per part, per (query, length): up to k candidates in index order.
  std::vector<int32_t> cand_d;
  std::vector<int64_t> cand_i, cand_n;
  if (parts > 1) {
    cand_d.resize(parts * Q * L * k);
    cand_i.resize(parts * Q * L * k);
    cand_n.resize(parts * Q * L);
  }
  at::parallel_for(0, blocks * parts, 1, [&](int64_t begin, int64_t end) {
    Lists lists;
    std::vector<int32_t> scratch_d(parts == 1 ? k : 0);
    std::vector<int64_t> scratch_i(parts == 1 ? k : 0);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / parts, p = u % parts;
      const int64_t q0 = b * qb, q1 = std::min(Q, q0 + qb);
      const int64_t n0 = N * p / parts, n1 = N * (p + 1) / parts;
      lists.reset(q1 - q0, k, plan.bits, 0, n0);
      topk_scan(args, q0, q1, n0, n1, lists);
      for (int64_t i = q0; i < q1; ++i)
        for (int l = 0; l < L; ++l) {
          const int64_t list = (i - q0) * L + l;
          if (parts == 1) {
            const TopkSlot s = sink.slot(i, l, TopkSlot{scratch_d.data(), scratch_i.data()});
            lists.emit_sorted(list, s.d, s.idx);
            sink.done(i, l, s);
          } else {
            const int64_t slot = (p * Q + i) * L + l;
            cand_n[slot] = lists.extract(list, cand_d.data() + slot * k, cand_i.data() + slot * k);
          }
        }
    }
  });
  if (parts > 1) {  // merge: parts in order keep the candidates in index order
    at::parallel_for(0, Q * L, 1, [&](int64_t begin, int64_t end) {
      std::vector<int32_t> d(parts * k), scratch_d(k);
      std::vector<int64_t> ix(parts * k), scratch_i(k), hist(plan.max_bits() + 2);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t i = t / L;
        const int l = static_cast<int>(t % L);
        int64_t n = 0;
        for (int64_t p = 0; p < parts; ++p) {
          const int64_t slot = (p * Q + i) * L + l, m = cand_n[slot];
          std::copy_n(cand_d.data() + slot * k, m, d.data() + n);
          std::copy_n(cand_i.data() + slot * k, m, ix.data() + n);
          n += m;
        }
        select_smallest(d.data(), ix.data(), n, k, plan.bits[l], hist.data());
        const TopkSlot s = sink.slot(i, l, TopkSlot{scratch_d.data(), scratch_i.data()});
        sort_by_distance(d.data(), ix.data(), n, plan.bits[l], hist.data(), s.d, s.idx);
        sink.done(i, l, s);
      }
    });
  }
}

// topk_run on record lists where they apply, else on per-length candidate lists.
template <class Sink>
void topk_run_any(const TopkScanArgs& args, int64_t Q, int64_t N, int64_t k, Sink& sink) {
  if (records_apply(*args.plan, N))
    topk_run<RecordLists>(args, Q, N, k, sink);
  else
    topk_run<CandidateLists>(args, Q, N, k, sink);
}

}  // namespace nhl
