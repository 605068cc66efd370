// tie_ap: tie-aware AP (L, Q) float64 from the (L, Q, B) histograms of distance_histogram, one
// closed form per row (kernels/tie_ap.h). O(L Q B) work: the histograms carry everything.
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include "checks.h"
#include "kernels/tie_ap.h"

namespace nhl {

at::Tensor tie_ap_cpu(const at::Tensor& tot_in, const at::Tensor& rel_in, std::optional<int64_t> topk) {
  check_histograms("tie_ap", tot_in, rel_in);
  TORCH_CHECK_VALUE(!topk || *topk >= 1, "tie_ap: topk=", topk.value_or(0), " must be >= 1");
  const at::Tensor tot = tot_in.contiguous(), rel = rel_in.contiguous();
  const int64_t rows = tot.size(0) * tot.size(1), bins = tot.size(2);
  at::Tensor out = at::empty({tot.size(0), tot.size(1)}, tot.options().dtype(at::kDouble));
  const int64_t* t = tot.data_ptr<int64_t>();
  const int64_t* r = rel.data_ptr<int64_t>();
  double* o = out.data_ptr<double>();
  const int64_t k = topk.value_or(0);
  at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) o[i] = tie_aware_ap_row(t + i * bins, r + i * bins, int(bins), k);
  });
  return out;
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("tie_ap", &tie_ap_cpu); }

}  // namespace nhl
