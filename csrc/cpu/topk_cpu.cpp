// topk: the k nearest database codes of every query, for every length, in one pass.
// (L, Q, k) int32 distances and int64 indices; ascending distance, ties by lower index.
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/engine_checks.h"
#include "kernels/topk_scan.h"

namespace nhl {

// Candidate store per query block: RecordLists (one record per row that passes any length;
// topk_records.h) where it applies, else CandidateLists (one list per length).
template <class Lists>
static void topk_run(const at::Tensor& q, const at::Tensor& db, int64_t k, const LengthPlan& plan,
                     at::Tensor& out_d, at::Tensor& out_i) {
  const int64_t Q = q.size(0), N = db.size(0), W = q.size(1);
  const int L = plan.L;
  const TopkScanArgs args{reinterpret_cast<const uint64_t*>(q.data_ptr<int64_t>()),
                          reinterpret_cast<const uint64_t*>(db.data_ptr<int64_t>()), W, &plan};
  int32_t* od = out_d.data_ptr<int32_t>();
  int64_t* oi = out_i.data_ptr<int64_t>();

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
            lists.emit_sorted(list, od + (l * Q + i) * k, oi + (l * Q + i) * k);
          } else {
            const int64_t slot = (p * Q + i) * L + l;
            cand_n[slot] = lists.extract(list, cand_d.data() + slot * k, cand_i.data() + slot * k);
          }
        }
    }
  });
  if (parts > 1) {  // merge: parts in order keep the candidates in index order
    at::parallel_for(0, Q * L, 1, [&](int64_t begin, int64_t end) {
      std::vector<int32_t> d(parts * k);
      std::vector<int64_t> ix(parts * k), hist(plan.max_bits() + 2);
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
        sort_by_distance(d.data(), ix.data(), n, plan.bits[l], hist.data(), od + (l * Q + i) * k,
                         oi + (l * Q + i) * k);
      }
    });
  }
}

// Large outputs are fresh memory, written once in scattered order: with 4 KiB pages the first
// touches cost one fault each (15k for 60 MB, a sizable part of a multi-length call). Asking
// for transparent huge pages on the 2 MiB-aligned inside of the buffer cuts that ~500x; a
// no-op where THP is off or unsupported.
static void huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr()), end = p + t.nbytes();
  const uintptr_t a = (p + kHuge - 1) & ~(kHuge - 1), b = end & ~(kHuge - 1);
  if (b > a) madvise(reinterpret_cast<void*>(a), b - a, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

std::tuple<at::Tensor, at::Tensor> topk_cpu(const at::Tensor& q_in, const at::Tensor& db_in, int64_t k,
                                            at::IntArrayRef bits) {
  check_query_database(q_in, db_in, bits, "topk");
  TORCH_CHECK(k >= 1 && k <= db_in.size(0), "topk: k must be in [1, N]");
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous();
  const int64_t Q = q.size(0), N = db.size(0);
  const LengthPlan plan(bits.data(), static_cast<int>(bits.size()));
  const int L = plan.L;
  at::Tensor out_d = at::empty({L, Q, k}, q.options().dtype(at::kInt));
  at::Tensor out_i = at::empty({L, Q, k}, q.options().dtype(at::kLong));
  if (Q == 0) return {out_d, out_i};
  huge_pages(out_d);
  huge_pages(out_i);
  // Records hold uint8 distances and uint32 row offsets, and L-bit masks.
  if (L <= 64 && plan.max_bits() <= 255 && N <= int64_t(UINT32_MAX))
    topk_run<RecordLists>(q, db, k, plan, out_d, out_i);
  else
    topk_run<CandidateLists>(q, db, k, plan, out_d, out_i);
  return {out_d, out_i};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("topk", &topk_cpu); }

}  // namespace nhl
