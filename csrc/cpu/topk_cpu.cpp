// topk: the k nearest database codes of every query, for every length, in one pass.
// (L, Q, k) int32 distances and int64 indices; ascending distance, ties by lower index.
#include <torch/all.h>
#include <torch/library.h>

#include <cstdint>

#include "checks.h"
#include "cpu/output_cache.h"
#include "cpu/topk_run.h"
#include "kernels/stream_copy.h"

namespace nhl {

// The sorted top k of (query i, length l) goes into the (L, Q, k) outputs: written in place
// when they are small, else sorted in the thread's scratch and streamed out (an output larger
// than the caches would otherwise be read from memory line by line before being written:
// 1.4-1.6x the emit time at 5 lengths, k = 1000).
struct TopkOutput {
  static constexpr int64_t kStreamBytes = int64_t(8) << 20;
  int32_t* d;
  int64_t* idx;
  int64_t Q, k;
  bool stream;
  TopkOutput(int32_t* d_, int64_t* idx_, int64_t L, int64_t Q_, int64_t k_)
      : d(d_), idx(idx_), Q(Q_), k(k_), stream(L * Q * k * int64_t(sizeof(int32_t) + sizeof(int64_t)) >= kStreamBytes) {}
  TopkSlot slot(int64_t i, int l, TopkSlot scratch) const {
    return stream ? scratch : TopkSlot{d + (l * Q + i) * k, idx + (l * Q + i) * k};
  }
  void done(int64_t i, int l, TopkSlot s) const {
    if (!stream) return;
    stream_copy(d + (l * Q + i) * k, s.d, k * sizeof(int32_t));
    stream_copy(idx + (l * Q + i) * k, s.idx, k * sizeof(int64_t));
    stream_fence();  // before the thread's work ends: streaming stores are weakly ordered
  }
};

std::tuple<at::Tensor, at::Tensor> topk_cpu(const at::Tensor& q_in, const at::Tensor& db_in, int64_t k,
                                            at::IntArrayRef bits) {
  check_query_database("topk", q_in, db_in, bits);
  check_k("topk", "k", k, db_in.size(0));
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous();
  const int64_t Q = q.size(0), N = db.size(0);
  const LengthPlan plan(bits.data(), static_cast<int>(bits.size()));
  const int L = plan.L;
  at::Tensor out_d = cached_empty({L, Q, k}, at::kInt);
  at::Tensor out_i = cached_empty({L, Q, k}, at::kLong);
  if (Q == 0) return {out_d, out_i};
  const TopkScanArgs args{reinterpret_cast<const uint64_t*>(q.data_ptr<int64_t>()),
                          reinterpret_cast<const uint64_t*>(db.data_ptr<int64_t>()), q.size(1), &plan};
  TopkOutput out(out_d.data_ptr<int32_t>(), out_i.data_ptr<int64_t>(), L, Q, k);
  topk_run_any(args, Q, N, k, out);
  return {out_d, out_i};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("topk", &topk_cpu); }

}  // namespace nhl
