// Torch-free checks of kernels/gemm_avx512.h against naive double loops: the Gram (edge tiles when B is not a
// multiple of 4, row lengths not a multiple of 16 and past one chunk, a row stride wider than the row) and the
// prefix products (column tails of the 64-wide tile, row tails, every checkpoint). Skips on CPUs without
// AVX-512F (the callers then take their BLAS path).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/gemm_avx512.h"

static int failures = 0;

static void check_close(double got, double want, double scale, const char* what, int64_t i, int64_t j) {
  if (std::fabs(got - want) > 1e-5 * scale + 1e-6) {
    ++failures;
    std::printf("FAIL %s [%ld, %ld]: got %g, want %g\n", what, long(i), long(j), got, want);
  }
}

#ifdef NHL_HAVE_GEMM_AVX512
static void check_gram(std::mt19937& g, int64_t B, int64_t n, int64_t ldx) {
  std::normal_distribution<float> normal;
  std::vector<float> x(B * ldx), c(B * B, -1.f);
  for (auto& v : x) v = normal(g);
  nhl::gram_avx512(x.data(), B, n, ldx, c.data());
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < B; ++j) {
      double want = 0, scale = 0;
      for (int64_t k = 0; k < n; ++k) {
        want += double(x[i * ldx + k]) * x[j * ldx + k];
        scale += std::fabs(double(x[i * ldx + k]) * x[j * ldx + k]);
      }
      check_close(c[i * B + j], want, scale, "gram", i, j);
      if (c[i * B + j] != c[j * B + i]) {
        ++failures;
        std::printf("FAIL gram not symmetric at [%ld, %ld]\n", long(i), long(j));
      }
    }
}

static void check_prefix(std::mt19937& g, int64_t m, int64_t n, std::vector<int64_t> kd, int64_t lda, int64_t ldb,
                         int64_t ldc) {
  std::normal_distribution<float> normal;
  const int64_t kmax = kd.back(), T = int64_t(kd.size()), stride = m * ldc;
  std::vector<float> a(m * lda), b(kmax * ldb), c(T * stride, -7.f);
  for (auto& v : a) v = normal(g);
  for (auto& v : b) v = normal(g);
  nhl::gemm_nn_prefix_avx512(a.data(), lda, b.data(), ldb, m, n, kd.data(), int(T), c.data(), ldc, stride);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double want = 0, scale = 0;
        for (int64_t k = 0; k < kd[t]; ++k) {
          want += double(a[i * lda + k]) * b[k * ldb + j];
          scale += std::fabs(double(a[i * lda + k]) * b[k * ldb + j]);
        }
        check_close(c[t * stride + i * ldc + j], want, scale, "prefix", i, j);
      }
      for (int64_t j = n; j < ldc; ++j)  // columns past n untouched
        if (c[t * stride + i * ldc + j] != -7.f) {
          ++failures;
          std::printf("FAIL prefix wrote column %ld >= n\n", long(j));
        }
    }
}
#endif

int main() {
#ifdef NHL_HAVE_GEMM_AVX512
  if (!nhl::gemm_avx512_supported()) {
    std::printf("no AVX-512F: skipped\n");
    return 0;
  }
  std::mt19937 g(7);
  for (int64_t B : {1, 3, 4, 9, 64, 70})
    for (int64_t n : {1, 15, 16, 40, 1100}) check_gram(g, B, n, n);
  check_gram(g, 13, 33, 50);
  check_prefix(g, 70, 70, {8, 16, 32, 64, 128}, 128, 70, 70);   // the cascade's prefix Grams, B = 70
  check_prefix(g, 6, 248, {128}, 128, 248, 248);                // (x x^T) Gz: one checkpoint, column tail 56
  check_prefix(g, 5, 8, {5}, 5, 16, 20);                        // a block of 8 columns into a wider output
  check_prefix(g, 1, 1, {1, 2, 3}, 3, 1, 1);
#else
  std::printf("not x86-64 GCC/Clang: skipped\n");
#endif
  if (failures) std::printf("%d failures\n", failures);
  return failures ? 1 : 0;
}
