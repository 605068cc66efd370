// tie_ap: tie-aware AP (L, Q) float64 from the (L, Q, B) histograms of distance_histogram, one
// closed form per row (kernels/tie_ap.h). O(L Q B) work: the histograms carry everything.
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include "kernels/tie_ap.h"

namespace nhl {

at::Tensor tie_ap_cpu(const at::Tensor& tot_in, const at::Tensor& rel_in, std::optional<int64_t> topk) {
  TORCH_CHECK(tot_in.dim() == 3 && tot_in.sizes() == rel_in.sizes(), "tie_ap: tot and rel must be (L, Q, B) of one shape");
  TORCH_CHECK(tot_in.scalar_type() == at::kLong && rel_in.scalar_type() == at::kLong, "tie_ap: tot and rel must be int64");
  TORCH_CHECK(!topk.has_value() || *topk >= 1, "tie_ap: topk must be >= 1");
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
