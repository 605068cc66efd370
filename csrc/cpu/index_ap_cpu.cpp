// index_ap: per-query AP (L, Q) float64 and hits (L, Q) int64 with ties broken by database index
// (the classic per-query loop with a stable sort), without sorting: per block of queries, one pass
// builds the relevance histograms and logs the in-bin position of every relevant item, then the
// exact ranks follow from the cumulative counts (kernels/ap_block_cpu.h). All lengths at once.
// AP@k with k << N instead runs the exact top-k scan (cpu/topk_run.h): only each length's best k
// by (distance, index) matter, and a threshold-filtered pass finds them without touching a
// histogram per database item; AP@k then follows from those k items' labels.
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "checks.h"
#include "cpu/metrics_common.h"
#include "cpu/topk_run.h"

namespace nhl {

// Sink of topk_run: AP@k and the hits of (query i, length l) from its k items sorted by rank.
template <int LW>
struct ApAtK {
  const ApProblem& p;
  int64_t nq, k;
  double* ap;
  int64_t* hits;
  TopkSlot slot(int64_t, int, TopkSlot scratch) const { return scratch; }
  void done(int64_t i, int l, TopkSlot s) const {
    const int LS = label_stride(p);
    const uint64_t* ql = p.q_labels + i * LS;
    double acc = 0.0;
    int64_t found = 0;
    for (int64_t r = 0; r < k; ++r) {  // branch-free: relevance is data-dependent (adds +0.0 when not relevant)
      const int64_t rel = relevant_t<LW>(ql, p.db_labels + s.idx[r] * LS, p.label_words);
      found += rel;
      acc += double(found * rel) / double(r + 1);
    }
    ap[l * nq + i] = found > 0 ? acc / double(found) : 0.0;
    hits[l * nq + i] = found;
  }
};

// The top-k path pays per database item only the scan's filter, but per (query, length) about
// k accepted items and k sorted ones; the histogram path pays a histogram add per (item, length)
// whatever k. Measured on the bench_map data (5 lengths, 2 threads): equal at k = N / 54, the
// top-k path 1.2x faster at N / 128 and 2.4x slower at N / 32.
constexpr int64_t kTopkPathMaxFraction = 64;  // top-k path when k * this <= N

// NHL_INDEX_AP_PATH=topk|histogram forces a path (the tests run both on every shape).
static bool use_topk_path(std::optional<int64_t> topk, int64_t n) {
  const char* forced = std::getenv("NHL_INDEX_AP_PATH");
  if (forced && std::strcmp(forced, "topk") == 0) return true;
  if (forced && std::strcmp(forced, "histogram") == 0) return false;
  return topk.has_value() && *topk * kTopkPathMaxFraction <= n;
}

static void index_ap_topk(const at::Tensor& q, const at::Tensor& db, at::IntArrayRef bits, const ApProblem& p,
                          int64_t k, double* ap, int64_t* hits) {
  const int64_t nq = q.size(0), N = db.size(0);
  const LengthPlan plan(bits.data(), static_cast<int>(bits.size()));
  const TopkScanArgs args{p.q, p.db, q.size(1), &plan};
  dispatch_labels(p.label_words, [&](auto lw) {
    ApAtK<decltype(lw)::value> sink{p, nq, k, ap, hits};
    topk_run_any(args, nq, N, k, sink);
  });
}

std::tuple<at::Tensor, at::Tensor> index_ap_cpu(const at::Tensor& q_in, const at::Tensor& db_in, const at::Tensor& ql_in,
                                                const at::Tensor& dl_in, at::IntArrayRef bits,
                                                std::optional<int64_t> topk) {
  check_metric_inputs("index_ap", q_in, db_in, ql_in, dl_in, bits);
  if (topk) check_k("index_ap", "topk", *topk, db_in.size(0));
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
  if (nq == 0) return {ap, hits};
  if (use_topk_path(topk, p.n)) {
    index_ap_topk(q, db, bits, p, int64_t(k), ap_p, hits_p);
    return {ap, hits};
  }
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
