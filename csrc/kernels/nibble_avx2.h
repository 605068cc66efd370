// AVX2 multi-length Hamming filter on a nibble-transposed database tile (codes of <= 128 bits).
//
// Why: with several lengths, per-pair scalar code pays one compare + branch per length. Here 32
// database codes are handled at once, one byte lane each. The tile stores, for every 4-bit unit
// u of the code (bits 4u..4u+3), that nibble of 32 codes in one 32-byte vector. The popcount of
// (query ^ code) over a unit is then ONE shuffle: a 16-entry table indexed by the code's nibble,
// chosen by the query's nibble (table[qn][v] = popcount(v ^ qn)); no xor, no shift. A running
// byte sum over units yields every prefix length as it passes; a partial last unit (length not
// a multiple of 4) reads a masked table. Each length then costs a saturating subtract against
// its threshold and an OR: L lengths add L cheap vector ops per 32 codes to a fixed 2*bytes
// shuffles + adds. Distances <= 128 fit the uint8 lanes.
#pragma once
#if defined(__AVX2__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace nhl {
namespace avx2 {

constexpr int kLanes = 32;

// full[qn][v] = popcount(v ^ qn); part[r][qn][v] = popcount((v ^ qn) & (2^r - 1)), r = 1..3.
// Both 128-bit halves hold the same 16 entries (vpshufb looks up within each half).
struct NibbleTables {
  alignas(32) uint8_t full[16][32];
  alignas(32) uint8_t part[4][16][32];
  NibbleTables() {
    for (int qn = 0; qn < 16; ++qn)
      for (int v = 0; v < 32; ++v) {
        const unsigned x = static_cast<unsigned>((v & 15) ^ qn);
        full[qn][v] = static_cast<uint8_t>(__builtin_popcount(x));
        for (int r = 0; r < 4; ++r) part[r][qn][v] = static_cast<uint8_t>(__builtin_popcount(x & ((1u << r) - 1)));
      }
  }
};

inline const NibbleTables& nibble_tables() {
  static const NibbleTables tables;
  return tables;
}

// 16x16 byte transpose: four rounds of "unpack vector i with vector i + 8" rotate the 8-bit
// (row, column) address by 4, i.e. swap row and column.
inline void transpose16x16(__m128i* a) {
  __m128i b[16];
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 8; ++i) {
      b[2 * i] = _mm_unpacklo_epi8(a[i], a[i + 8]);
      b[2 * i + 1] = _mm_unpackhi_epi8(a[i], a[i + 8]);
    }
    for (int i = 0; i < 16; ++i) a[i] = b[i];
  }
}

// Write the nibble-transposed form of `count` (<= 32) codes (rows of `W` words, reading the
// first WU) to out[u * stride + lane], u < 16 * WU. Missing lanes are zero.
template <int WU>
inline void transpose_group(const uint64_t* rows, int64_t W, int count, uint8_t* out, int64_t stride = kLanes) {
  static_assert(WU == 1 || WU == 2, "nibble path handles 64- and 128-bit codes");
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m128i a[16], b[16];
  auto word = [&](int r, int w) -> int64_t {
    return r < count ? static_cast<int64_t>(rows[r * W + w]) : 0;
  };
  if (WU == 2) {  // row = 16 bytes of one code; block a: codes 0..15, block b: codes 16..31
    for (int r = 0; r < 16; ++r) {
      a[r] = _mm_set_epi64x(word(r, 1), word(r, 0));
      b[r] = _mm_set_epi64x(word(r + 16, 1), word(r + 16, 0));
    }
    transpose16x16(a);
    transpose16x16(b);
  } else {  // row r = [code r | code r + 16]: column j < 8 is byte j of codes 0..15, j >= 8 of 16..31
    for (int r = 0; r < 16; ++r) a[r] = _mm_set_epi64x(word(r + 16, 0), word(r, 0));
    transpose16x16(a);
    for (int j = 0; j < 8; ++j) b[j] = a[j + 8];
  }
  for (int j = 0; j < 8 * WU; ++j) {
    const __m256i y = _mm256_set_m128i(b[j], a[j]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + (2 * j) * stride), _mm256_and_si256(y, low4));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + (2 * j + 1) * stride),
                       _mm256_and_si256(_mm256_srli_epi16(y, 4), low4));
  }
}

// Per length: the unit where its value is read and the leftover bits (0: the length ends on a
// unit boundary, the value is the running sum after unit `unit`; r > 0: running sum before
// `unit` plus the masked table of its first r bits). full_at / part_at: bit u set when some
// length ends after / inside unit u, so the unrolled loop tests one register bit per unit.
struct UnitPlan {
  int L = 0;
  int unit[64];
  int rest[64];
  uint32_t full_at = 0, part_at = 0;
  bool init(const int* bits, int n) {
    if (n > 64 || n < 1 || bits[n - 1] > 128) return false;
    L = n;
    full_at = part_at = 0;
    for (int l = 0; l < n; ++l) {
      rest[l] = bits[l] % 4;
      unit[l] = rest[l] ? bits[l] / 4 : bits[l] / 4 - 1;
      (rest[l] ? part_at : full_at) |= 1u << unit[l];
    }
    return true;
  }
};

// One query's tables: a copy of the nibble table of each unit (one aligned load each in the hot
// loop) and pointers to the masked tables of partial lengths.
template <int WU>
struct QueryTables {
  alignas(32) uint8_t unit_lut[16 * WU][kLanes];
  const uint8_t* part_lut[64];
  void init(const uint64_t* q, const UnitPlan& plan) {
    const NibbleTables& t = nibble_tables();
    for (int u = 0; u < 16 * WU; ++u) std::memcpy(unit_lut[u], t.full[(q[u / 16] >> (4 * (u % 16))) & 15], kLanes);
    for (int l = 0; l < plan.L; ++l) {
      const int u = plan.unit[l];
      part_lut[l] = plan.rest[l] ? t.part[plan.rest[l]][(q[u / 16] >> (4 * (u % 16))) & 15] : t.full[0];
    }
  }
};

inline uint32_t hit_lanes(__m256i hit) {
  return ~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(hit, _mm256_setzero_si256())));
}

// Lanes of two consecutive 32-code groups, stored as a pair (unit u of the first group at
// pair[u * 64], of the second at pair[u * 64 + 32]: one 64-byte row per unit), where SOME length's
// distance is below that length's threshold (thresh[l] = 32 copies of the uint8 threshold).
// Returns the 64-lane mask, the first group in the low half. Every length's distances are left in
// dist[l * 64 + lane] (same lane order): the caller keeps the hits' distances without
// recomputing them (two stores per length, next to 2 * 16 * WU shuffles and adds).
template <int WU>
inline uint64_t filter_two_groups(const uint8_t* pair, const QueryTables<WU>& qt,
                                  const UnitPlan& plan, const uint8_t* thresh, uint8_t* dist) {
  constexpr int U = 16 * WU;
  // Each group's running sum in two chains (even / odd units), joined where a length ends:
  // half the serial add latency per step.
  const __m256i zero = _mm256_setzero_si256();
  __m256i run0[2] = {zero, zero}, run1[2] = {zero, zero}, hit0 = zero, hit1 = zero;
  int l = 0;
  const int L = plan.L;
  const uint32_t full_at = plan.full_at, part_at = plan.part_at;
  auto vec = [](const uint8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); };
  auto store = [](uint8_t* p, __m256i d0, __m256i d1) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(p), d0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(p + kLanes), d1);
  };
#pragma GCC unroll 32
  for (int u = 0; u < U; ++u) {
    const __m256i nib0 = vec(pair + u * 2 * kLanes), nib1 = vec(pair + u * 2 * kLanes + kLanes);
    if (__builtin_expect((part_at >> u) & 1, 0)) {  // lengths ending inside this unit (rare)
      for (; l < L && plan.unit[l] == u && plan.rest[l]; ++l) {
        const __m256i lut = vec(qt.part_lut[l]), t = vec(thresh + l * kLanes);
        const __m256i d0 = _mm256_add_epi8(_mm256_add_epi8(run0[0], run0[1]), _mm256_shuffle_epi8(lut, nib0));
        const __m256i d1 = _mm256_add_epi8(_mm256_add_epi8(run1[0], run1[1]), _mm256_shuffle_epi8(lut, nib1));
        store(dist + l * 2 * kLanes, d0, d1);
        hit0 = _mm256_or_si256(hit0, _mm256_subs_epu8(t, d0));
        hit1 = _mm256_or_si256(hit1, _mm256_subs_epu8(t, d1));
      }
      if (l == L) break;
    }
    const __m256i lut = vec(qt.unit_lut[u]);
    run0[u & 1] = _mm256_add_epi8(run0[u & 1], _mm256_shuffle_epi8(lut, nib0));
    run1[u & 1] = _mm256_add_epi8(run1[u & 1], _mm256_shuffle_epi8(lut, nib1));
    if ((full_at >> u) & 1) {  // the length ending exactly here: subs(t, d) > 0 where d < t
      const __m256i t = vec(thresh + l * kLanes);
      const __m256i d0 = _mm256_add_epi8(run0[0], run0[1]), d1 = _mm256_add_epi8(run1[0], run1[1]);
      store(dist + l * 2 * kLanes, d0, d1);
      hit0 = _mm256_or_si256(hit0, _mm256_subs_epu8(t, d0));
      hit1 = _mm256_or_si256(hit1, _mm256_subs_epu8(t, d1));
      if (++l == L) break;
    }
  }
  return uint64_t(hit_lanes(hit0)) | (uint64_t(hit_lanes(hit1)) << 32);
}

// Write the distances of 32 codes (one group) for every length: out[l][0..count) as int32.
template <int WU>
inline void group_distances(const uint8_t* group, const QueryTables<WU>& qt, const UnitPlan& plan, int32_t* const* out,
                            int count) {
  constexpr int U = 16 * WU;
  __m256i run = _mm256_setzero_si256();
  int l = 0;
  const int L = plan.L;
  auto vec = [](const uint8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); };
  auto emit = [&](__m256i d, int32_t* dst) {  // 32 uint8 -> 32 int32
    alignas(32) int32_t tmp[kLanes];
    int32_t* to = count == kLanes ? dst : tmp;
    const __m128i lo = _mm256_castsi256_si128(d), hi = _mm256_extracti128_si256(d, 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(to), _mm256_cvtepu8_epi32(lo));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(to + 8), _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(to + 16), _mm256_cvtepu8_epi32(hi));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(to + 24), _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    if (to == tmp) std::memcpy(dst, tmp, sizeof(int32_t) * count);
  };
  const uint32_t full_at = plan.full_at, part_at = plan.part_at;
#pragma GCC unroll 32
  for (int u = 0; u < U; ++u) {
    const __m256i nib = vec(group + u * kLanes);
    if (__builtin_expect((part_at >> u) & 1, 0)) {
      for (; l < L && plan.unit[l] == u && plan.rest[l]; ++l)
        emit(_mm256_add_epi8(run, _mm256_shuffle_epi8(vec(qt.part_lut[l]), nib)), out[l]);
      if (l == L) break;
    }
    run = _mm256_add_epi8(run, _mm256_shuffle_epi8(vec(qt.unit_lut[u]), nib));
    if ((full_at >> u) & 1) {
      emit(run, out[l]);
      if (++l == L) break;
    }
  }
}

}  // namespace avx2
}  // namespace nhl
#endif  // __AVX2__
