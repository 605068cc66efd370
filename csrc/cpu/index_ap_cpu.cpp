// index_ap: per-query AP (L, Q) float64 and hits (L, Q) int64 with ties broken by database index
// (the classic per-query loop with a stable sort), without sorting: per block of queries, one pass
// builds the relevance histograms and logs the in-bin position of every relevant item, then the
// exact ranks follow from the cumulative counts (kernels/ap_block_cpu.h). All lengths at once.
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include "cpu/metrics_common.h"

namespace nhl {

std::tuple<at::Tensor, at::Tensor> index_ap_cpu(const at::Tensor& q_in, const at::Tensor& db_in, const at::Tensor& ql_in,
                                                const at::Tensor& dl_in, at::IntArrayRef bits,
                                                std::optional<int64_t> topk) {
  check_metric_inputs("index_ap", q_in, db_in, ql_in, dl_in, bits);
  TORCH_CHECK(!topk.has_value() || (*topk >= 1 && *topk <= db_in.size(0)), "index_ap: topk must be in [1, N]");
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous(), ql = ql_in.contiguous(), dl = dl_in.contiguous();
  const MetricTables tables = metric_tables(bits, ql);
  const ApProblem p = cpu_problem(q, db, ql, dl, tables);
  const int64_t nq = q.size(0);
  const int L = int(bits.size());
  const uint64_t k = uint64_t(topk.value_or(db.size(0)));
  at::Tensor ap = at::zeros({L, nq}, q.options().dtype(at::kDouble));
  at::Tensor hits = at::zeros({L, nq}, q.options());
  double* ap_p = ap.data_ptr<double>();
  int64_t* hits_p = hits.data_ptr<int64_t>();
  const int qb = queries_per_block(p.bins);
  const int64_t blocks = (nq + qb - 1) / qb;
  const int64_t cap = std::min<int64_t>(kApRecordCap, int64_t(qb) * L * p.n);  // never more than one per (query, length, item)
  struct Scratch {
    std::vector<uint64_t> hist, records;
    std::vector<int> cut;
    std::vector<double> acc;
    std::vector<int64_t> found;
  };
  parallel_blocks(
      blocks,
      [&] {
        return Scratch{std::vector<uint64_t>(size_t(qb) * p.bins), std::vector<uint64_t>(static_cast<size_t>(cap)),
                       std::vector<int>(size_t(qb) * L), std::vector<double>(size_t(qb) * L),
                       std::vector<int64_t>(size_t(qb) * L)};
      },
      [&](int64_t b, Scratch& s) {
        const int64_t q0 = b * qb;
        const int n_here = int(std::min<int64_t>(qb, nq - q0));
        dispatch_lengths_labels(bits, p.words, p.label_words, [&](auto plan, auto lw) {
          index_ap_block<typename decltype(plan)::type, decltype(lw)::value>(
              p, q0, n_here, k, s.hist.data(), s.records.data(), cap, s.cut.data(), s.acc.data(), s.found.data());
        });
        for (int qq = 0; qq < n_here; ++qq)
          for (int l = 0; l < L; ++l) {
            const int64_t h = s.found[qq * L + l];
            ap_p[l * nq + q0 + qq] = h > 0 ? s.acc[qq * L + l] / double(h) : 0.0;
            hits_p[l * nq + q0 + qq] = h;
          }
      });
  return {ap, hits};
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("index_ap", &index_ap_cpu); }

}  // namespace nhl
