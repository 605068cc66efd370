// Float32 AVX-512 products of the NHL objective's small matrices (B <= a few hundred rows), where BLAS calls
// cost several times their arithmetic (per-call setup, packing, MKL's AVX2 path on AMD CPUs):
//   gram_avx512            C = X X^T, only the 4 x 4 tiles on and above the diagonal (half a GEMM's work)
//   gemm_nn_prefix_avx512  C_t = A[:, :kd_t] B[:kd_t, :] for increasing kd_t in one pass (the prefix Grams)
// Callers check gemm_avx512_supported() (runtime CPU detection: the build targets AVX2; the functions carry
// target attributes) and keep a BLAS path for other CPUs.
#pragma once
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NHL_HAVE_GEMM_AVX512 1

namespace nhl {

inline bool gemm_avx512_supported() { return __builtin_cpu_supports("avx512f"); }

namespace gemm_detail {

constexpr int64_t kTile = 4;

// the sum of v's lanes. GCC 12 warns -Wuninitialized inside its own header for _mm512_reduce_add_ps's
// 512 -> 256-bit extraction (its _mm256_undefined operand): silenced here only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }
#pragma GCC diagnostic pop
constexpr int64_t kChunk = 1024;  // floats per row per pass: 4 KB, B = 128 rows fill half of a 1 MB L2

// c[a * ldc + b] += <xi row a, xj row b> over [k0, k1), a, b < 4 (the tail masked). Sixteen named
// accumulators: GCC keeps an __m512 array on the stack, a store per multiply-add.
__attribute__((target("avx512f"))) inline void tile4x4(const float* xi, const float* xj, int64_t ldx, int64_t k0,
                                                       int64_t k1, float* c, int64_t ldc) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00,
         c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
  for (int64_t k = k0; k < k1; k += 16) {
    const __mmask16 m = k1 - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k1 - k)) - 1);
    const __m512 i0 = _mm512_maskz_loadu_ps(m, xi + k), i1 = _mm512_maskz_loadu_ps(m, xi + ldx + k),
                 i2 = _mm512_maskz_loadu_ps(m, xi + 2 * ldx + k), i3 = _mm512_maskz_loadu_ps(m, xi + 3 * ldx + k);
    __m512 j = _mm512_maskz_loadu_ps(m, xj + k);
    c00 = _mm512_fmadd_ps(i0, j, c00), c10 = _mm512_fmadd_ps(i1, j, c10), c20 = _mm512_fmadd_ps(i2, j, c20),
    c30 = _mm512_fmadd_ps(i3, j, c30);
    j = _mm512_maskz_loadu_ps(m, xj + ldx + k);
    c01 = _mm512_fmadd_ps(i0, j, c01), c11 = _mm512_fmadd_ps(i1, j, c11), c21 = _mm512_fmadd_ps(i2, j, c21),
    c31 = _mm512_fmadd_ps(i3, j, c31);
    j = _mm512_maskz_loadu_ps(m, xj + 2 * ldx + k);
    c02 = _mm512_fmadd_ps(i0, j, c02), c12 = _mm512_fmadd_ps(i1, j, c12), c22 = _mm512_fmadd_ps(i2, j, c22),
    c32 = _mm512_fmadd_ps(i3, j, c32);
    j = _mm512_maskz_loadu_ps(m, xj + 3 * ldx + k);
    c03 = _mm512_fmadd_ps(i0, j, c03), c13 = _mm512_fmadd_ps(i1, j, c13), c23 = _mm512_fmadd_ps(i2, j, c23),
    c33 = _mm512_fmadd_ps(i3, j, c33);
  }
  const __m512 acc[kTile][kTile] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23},
                                    {c30, c31, c32, c33}};
  for (int a = 0; a < kTile; ++a)
    for (int b = 0; b < kTile; ++b) c[a * ldc + b] += hsum(acc[a][b]);
}

// <a, b> over [k0, k1): the edge tiles when B is not a multiple of 4
__attribute__((target("avx512f"))) inline float dot(const float* a, const float* b, int64_t k0, int64_t k1) {
  __m512 acc = _mm512_setzero_ps();
  int64_t k = k0;
  for (; k + 16 <= k1; k += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc);
  if (k < k1) {
    const __mmask16 m = __mmask16((1u << (k1 - k)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + k), _mm512_maskz_loadu_ps(m, b + k), acc);
  }
  return hsum(acc);
}

}  // namespace gemm_detail

// c (B x B) = x x^T for x (B x n, row stride ldx). Each tile takes dot products along the rows (both operands
// are rows of x: no packing), 16 accumulators in registers; n is cut into chunks so that the rows' chunk stays
// in L2 while every tile reads it. Needs gemm_avx512_supported().
__attribute__((target("avx512f"))) inline void gram_avx512(const float* x, int64_t B, int64_t n, int64_t ldx,
                                                           float* c) {
  using namespace gemm_detail;
  for (int64_t i = 0; i < B * B; ++i) c[i] = 0.f;
  for (int64_t k0 = 0; k0 < n; k0 += kChunk) {
    const int64_t k1 = k0 + kChunk < n ? k0 + kChunk : n;
    for (int64_t i0 = 0; i0 < B; i0 += kTile) {
      for (int64_t j0 = i0; j0 < B; j0 += kTile) {
        if (i0 + kTile <= B && j0 + kTile <= B) {
          tile4x4(x + i0 * ldx, x + j0 * ldx, ldx, k0, k1, c + i0 * B + j0, B);
          continue;
        }
        for (int64_t i = i0; i < i0 + kTile && i < B; ++i)
          for (int64_t j = j0; j < j0 + kTile && j < B; ++j) c[i * B + j] += dot(x + i * ldx, x + j * ldx, k0, k1);
      }
    }
  }
  for (int64_t i = 1; i < B; ++i)
    for (int64_t j = 0; j < i; ++j) c[i * B + j] = c[j * B + i];
}

// gemm_nn_prefix_avx512: for each t < ncheck, c + t * c_stride (m x n, row stride ldc) = a[:, :kd[t]] b[:kd[t], :]
// (a: m x kd[ncheck-1], row stride lda; b: row stride ldb; kd increasing). The products of every prefix of the
// inner dimension in one pass: the accumulators are stored at each kd[t] and go on (the cascade's prefix
// Grams S_k = u[:, :b_k] u[:, :b_k]^T; a single product when ncheck = 1). Register tile: 4 rows x 64 columns,
// a broadcast of a and 4 loads of b per 16 multiply-adds. Needs gemm_avx512_supported().
namespace gemm_detail {

// rows [0, R) of the tile, columns [0, 64) masked by m0..m3
template <int R>
__attribute__((target("avx512f"))) inline void nn_tile(const float* a, int64_t lda, const float* b, int64_t ldb,
                                                       const int64_t* kd, int ncheck, float* c, int64_t ldc,
                                                       int64_t c_stride, const __mmask16 (&m)[4]) {
  __m512 acc[4][4];  // [row][vector]: constant indices after unrolling (R is a template parameter)
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  int64_t k = 0;
  for (int t = 0; t < ncheck; ++t) {
    for (; k < kd[t]; ++k) {
      const float* bk = b + k * ldb;
      const __m512 b0 = _mm512_maskz_loadu_ps(m[0], bk), b1 = _mm512_maskz_loadu_ps(m[1], bk + 16),
                   b2 = _mm512_maskz_loadu_ps(m[2], bk + 32), b3 = _mm512_maskz_loadu_ps(m[3], bk + 48);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m512 ar = _mm512_set1_ps(a[r * lda + k]);
        acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);
        acc[r][2] = _mm512_fmadd_ps(ar, b2, acc[r][2]);
        acc[r][3] = _mm512_fmadd_ps(ar, b3, acc[r][3]);
      }
    }
    float* ct = c + t * c_stride;
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(ct + r * ldc + 16 * v, m[v], acc[r][v]);
  }
}

}  // namespace gemm_detail

__attribute__((target("avx512f"))) inline void gemm_nn_prefix_avx512(const float* a, int64_t lda, const float* b,
                                                                     int64_t ldb, int64_t m, int64_t n,
                                                                     const int64_t* kd, int ncheck, float* c,
                                                                     int64_t ldc, int64_t c_stride) {
  using namespace gemm_detail;
  for (int64_t p0 = 0; p0 < n; p0 += 64) {
    __mmask16 mask[4];
    for (int v = 0; v < 4; ++v) {
      const int64_t left = n - p0 - 16 * v;
      mask[v] = left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
    }
    int64_t r0 = 0;
    for (; r0 + 4 <= m; r0 += 4)
      nn_tile<4>(a + r0 * lda, lda, b + p0, ldb, kd, ncheck, c + r0 * ldc + p0, ldc, c_stride, mask);
    for (; r0 < m; ++r0)
      nn_tile<1>(a + r0 * lda, lda, b + p0, ldb, kd, ncheck, c + r0 * ldc + p0, ldc, c_stride, mask);
  }
}

}  // namespace nhl

#endif
