// project_and_pack: sign(x W^T + b) packed straight into int64 words (bit j of word
// j/64 at j%64 set where the projection is > 0). Rows are streamed in chunks through
// one small float buffer, so the (N, b) float codes never exist for large N.
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/pack_rows.h"
#include "kernels/bits.h"

namespace nhl {

// Rows per GEMM chunk: a buffer of about 4 MiB, and never fewer than 256 rows.
static int64_t chunk_rows(int64_t bits, int64_t elem_size) {
  return std::max<int64_t>(256, (int64_t(4) << 20) / std::max<int64_t>(1, bits * elem_size));
}

at::Tensor project_and_pack_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  check_projection_args("project_and_pack", x, weight, bias);
  const int64_t n = x.size(0), bits = weight.size(0), words = words_for_bits(bits);
  at::Tensor out = at::empty({n, words}, x.options().dtype(at::kLong));
  if (n == 0 || bits == 0) return out.zero_();
  const int64_t chunk = std::min(n, chunk_rows(bits, x.element_size()));
  at::Tensor buffer = at::empty({chunk, bits}, x.options());
  const at::Tensor wt = weight.t();
  auto* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t rows = std::min(chunk, n - start);
    at::Tensor z = buffer.narrow(0, 0, rows);
    at::addmm_out(z, bias, x.narrow(0, start, rows), wt);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "project_and_pack_cpu", [&] {
      pack_rows(z.data_ptr<scalar_t>(), rows, bits, words, dst + start * words);
    });
  }
  return out;
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("project_and_pack", &project_and_pack_cpu); }

}  // namespace nhl
