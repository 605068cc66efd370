// hamming: (Q, W) x (N, W) packed codes -> (L, Q, N) int32 distances, all lengths in one pass.
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/output_cache.h"
#include "kernels/hamming.h"

namespace nhl {

at::Tensor hamming_cpu(const at::Tensor& q_in, const at::Tensor& db_in, at::IntArrayRef bits) {
  check_query_database("hamming", q_in, db_in, bits);
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous();
  const int64_t Q = q.size(0), N = db.size(0), W = q.size(1);
  const LengthPlan plan(bits.data(), static_cast<int>(bits.size()));
  at::Tensor out = cached_empty({plan.L, Q, N}, at::kInt);
  if (Q == 0 || N == 0) return out;
  const auto* qp = reinterpret_cast<const uint64_t*>(q.data_ptr<int64_t>());
  const auto* dbp = reinterpret_cast<const uint64_t*>(db.data_ptr<int64_t>());
  int32_t* o = out.data_ptr<int32_t>();
  // Parallel over (query, database chunk) tiles so one query or one huge database both split.
  constexpr int64_t kChunk = 8192;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  at::parallel_for(0, Q * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end;) {
      // a run of consecutive queries sharing one database chunk
      const int64_t c = t / Q, i0 = t % Q, i1 = std::min(Q, i0 + (end - t));
      const int64_t n0 = c * kChunk, n1 = std::min(N, n0 + kChunk);
      hamming_block_any(qp, dbp, W, Q, N, plan, i0, i1, n0, n1, o);
      t += i1 - i0;
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("hamming", &hamming_cpu); }

}  // namespace nhl
