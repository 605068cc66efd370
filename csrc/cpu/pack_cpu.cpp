// pack: (N, b) real/bool codes -> (N, ceil(b/64)) int64 words, bit set where code > 0.
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/pack_rows.h"
#include "kernels/bits.h"

namespace nhl {

at::Tensor pack_cpu(const at::Tensor& codes_in) {
  check_pack_codes("pack", codes_in);
  const at::Tensor codes = codes_in.contiguous();
  const int64_t n = codes.size(0), bits = codes.size(1), words = words_for_bits(bits);
  at::Tensor out = at::empty({n, words}, codes.options().dtype(at::kLong));
  auto* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  if (codes.scalar_type() == at::kBool) {
    pack_rows(codes.data_ptr<bool>(), n, bits, words, dst);
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "pack_cpu", [&] {
      pack_rows(codes.data_ptr<scalar_t>(), n, bits, words, dst);
    });
  }
  return out;
}

TORCH_LIBRARY_IMPL(nhl_fast, CPU, m) { m.impl("pack", &pack_cpu); }

}  // namespace nhl
