// Torch-free sign packing of one row: bit j of word j/64 at j%64 set where row[j] > 0.
#pragma once
#include <algorithm>
#include <cstdint>

namespace nhl {

template <typename T>
inline void pack_row(const T* row, int64_t bits, int64_t words, uint64_t* out) {
  for (int64_t w = 0; w < words; ++w) {
    const int64_t lo = w * 64, hi = std::min<int64_t>(bits, lo + 64);
    uint64_t word = 0;
    for (int64_t j = lo; j < hi; ++j) word |= uint64_t(row[j] > T(0)) << (j - lo);
    out[w] = word;
  }
}

}  // namespace nhl
