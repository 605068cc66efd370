// topk: the k nearest database codes of every query, for every length, in one pass.
// (L, Q, k) int32 distances and int64 indices; ascending distance, ties by lower index.
#include <torch/all.h>
#include <torch/library.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/engine_checks.h"
#include "cpu/topk_run.h"

namespace nhl {

// The sorted top k of (query i, length l) goes straight into the (L, Q, k) outputs.
struct TopkOutput {
  int32_t* d;
  int64_t* idx;
  int64_t Q, k;
  TopkSlot slot(int64_t i, int l, TopkSlot) const { return {d + (l * Q + i) * k, idx + (l * Q + i) * k}; }
  void done(int64_t, int, TopkSlot) const {}
};

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
  const TopkScanArgs args{reinterpret_cast<const uint64_t*>(q.data_ptr<int64_t>()),
                          reinterpret_cast<const uint64_t*>(db.data_ptr<int64_t>()), q.size(1), &plan};
  TopkOutput out{out_d.data_ptr<int32_t>(), out_i.data_ptr<int64_t>(), Q, k};
  topk_run_any(args, Q, N, k, out);
  return {out_d, out_i};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("topk", &topk_cpu); }

}  // namespace nhl
