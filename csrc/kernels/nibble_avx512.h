// AVX-512 form of avx2::filter_two_groups (nibble_avx2.h): the step's two 32-code groups are one
// 64-byte row per unit in the tile, so each unit costs one zmm shuffle + add instead of two ymm
// ones (the 32-byte tables are broadcast to both halves on load). Same results lane for lane,
// and the same dist layout (dist[l * 64 + lane]), written by one 64-byte store per length.
#pragma once
#include "kernels/avx512_dispatch.h"
#include "kernels/nibble_avx2.h"

#ifdef NHL_RECORDS_AVX512
namespace nhl {
namespace avx512 {

// A 32-byte table (or threshold row) in both halves of a zmm (a lambda would lose the target).
// The zero-masked form: GCC 12 warns (falsely) about the plain broadcast's undefined source
// wherever it is inlined; an all-ones mask compiles to the same vbroadcasti64x4.
NHL_TARGET_AVX512 inline __m512i table(const uint8_t* p) {
  return _mm512_maskz_broadcast_i64x4(__mmask8(0xFF), _mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
}

template <int WU>
NHL_TARGET_AVX512 inline uint64_t filter_pair(const uint8_t* pair, const avx2::QueryTables<WU>& qt,
                                              const avx2::UnitPlan& plan, const uint8_t* thresh, uint8_t* dist) {
  constexpr int U = 16 * WU;
  constexpr int kRow = 2 * avx2::kLanes;
  // The running sum in two chains (even / odd units), joined where a length ends: half the
  // serial add latency per step.
  __m512i run[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}, hit = run[0];
  int l = 0;
  const int L = plan.L;
  const uint32_t full_at = plan.full_at, part_at = plan.part_at;
#pragma GCC unroll 32
  for (int u = 0; u < U; ++u) {
    const __m512i nib = _mm512_load_si512(pair + u * kRow);
    if (__builtin_expect((part_at >> u) & 1, 0)) {  // lengths ending inside this unit (rare)
      for (; l < L && plan.unit[l] == u && plan.rest[l]; ++l) {
        const __m512i d = _mm512_add_epi8(_mm512_add_epi8(run[0], run[1]), _mm512_shuffle_epi8(table(qt.part_lut[l]), nib));
        _mm512_store_si512(dist + l * kRow, d);
        hit = _mm512_or_si512(hit, _mm512_subs_epu8(table(thresh + l * avx2::kLanes), d));
      }
      if (l == L) break;
    }
    run[u & 1] = _mm512_add_epi8(run[u & 1], _mm512_shuffle_epi8(table(qt.unit_lut[u]), nib));
    if ((full_at >> u) & 1) {  // the length ending exactly here: subs(t, d) > 0 where d < t
      const __m512i d = _mm512_add_epi8(run[0], run[1]);
      _mm512_store_si512(dist + l * kRow, d);
      hit = _mm512_or_si512(hit, _mm512_subs_epu8(table(thresh + l * avx2::kLanes), d));
      if (++l == L) break;
    }
  }
  return _mm512_test_epi8_mask(hit, hit);
}

}  // namespace avx512
}  // namespace nhl
#endif
