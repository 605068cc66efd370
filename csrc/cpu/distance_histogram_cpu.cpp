// distance_histogram: (L, Q, max(bits)+1) int64 counts of all / relevant database items at each
// Hamming distance, every length in one streamed pass over the database (kernels/ap_block_cpu.h).
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/metrics_common.h"

namespace nhl {

std::tuple<at::Tensor, at::Tensor> distance_histogram_cpu(const at::Tensor& q_in, const at::Tensor& db_in,
                                                          const at::Tensor& ql_in, const at::Tensor& dl_in,
                                                          at::IntArrayRef bits) {
  check_metric_inputs("distance_histogram", q_in, db_in, ql_in, dl_in, bits);
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous(), ql = ql_in.contiguous(), dl = dl_in.contiguous();
  const MetricTables tables = metric_tables(bits, ql);
  const ApProblem p = cpu_problem(q, db, ql, dl, tables);
  const int64_t nq = q.size(0), L = int64_t(bits.size()), nb = bits.back() + 1;
  at::Tensor tot = at::zeros({L, nq, nb}, q.options());
  at::Tensor rel = at::zeros({L, nq, nb}, q.options());
  int64_t* tot_p = tot.data_ptr<int64_t>();
  int64_t* rel_p = rel.data_ptr<int64_t>();
  const int qb = queries_per_block(p.bins);
  const int64_t blocks = (nq + qb - 1) / qb;
  parallel_blocks(
      blocks, [&] { return std::vector<uint64_t>(size_t(qb) * p.bins); },
      [&](int64_t b, std::vector<uint64_t>& hist) {
        const int64_t q0 = b * qb;
        const int n_here = int(std::min<int64_t>(qb, nq - q0));
        dispatch_lengths_labels(bits, p.words, p.label_words, [&](auto plan, auto lw) {
          histogram_block<typename decltype(plan)::type, decltype(lw)::value>(p, q0, n_here, hist.data());
        });
        for (int qq = 0; qq < n_here; ++qq)
          for (int64_t l = 0; l < L; ++l) {
            const uint64_t* h = hist.data() + int64_t(qq) * p.bins + tables.offset[l];
            const int64_t row = (l * nq + q0 + qq) * nb;
            for (int64_t d = 0; d <= bits[l]; ++d) {
              tot_p[row + d] = int64_t(h[d] & kTotalMask);
              rel_p[row + d] = int64_t(h[d] >> 32);
            }
          }
      });
  return {tot, rel};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("distance_histogram", &distance_histogram_cpu); }

}  // namespace nhl
