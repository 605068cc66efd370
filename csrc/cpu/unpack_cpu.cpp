// unpack: (N, W) int64 words -> (N, bits) float32 of +-1 (bit set -> +1).
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include "checks.h"

namespace nhl {

at::Tensor unpack_cpu(const at::Tensor& packed_in, int64_t bits) {
  check_packed("unpack", "packed", packed_in);
  check_bits("unpack", bits, packed_in.size(1));
  const at::Tensor packed = packed_in.contiguous();
  const int64_t n = packed.size(0), words = packed.size(1);
  at::Tensor out = at::empty({n, bits}, packed.options().dtype(at::kFloat));
  const auto* src = reinterpret_cast<const uint64_t*>(packed.data_ptr<int64_t>());
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t j = 0; j < bits; ++j)
        dst[i * bits + j] = ((src[i * words + j / 64] >> (j % 64)) & 1) ? 1.0f : -1.0f;
  });
  return out;
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("unpack", &unpack_cpu); }

}  // namespace nhl
