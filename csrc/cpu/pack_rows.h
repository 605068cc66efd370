// Parallel sign packing of n contiguous rows (shared by pack_cpu and project_and_pack_cpu).
#pragma once
#include <ATen/Parallel.h>

#include "kernels/pack.h"

namespace nhl {

template <typename scalar_t>
inline void pack_rows(const scalar_t* rows, int64_t n, int64_t bits, int64_t words, uint64_t* out) {
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) pack_row(rows + i * bits, bits, words, out + i * words);
  });
}

}  // namespace nhl
