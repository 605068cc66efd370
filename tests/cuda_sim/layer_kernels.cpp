// Brute-force checks of the nested hash layer's CUDA epilogues (csrc/cuda/nested_projection_cuda.cu,
// project_and_pack_cuda.cu) run under the CPU simulator (see run.sh), in float and double. Half and
// bfloat16 instantiations compile against stub conversions (fake/cuda_fp16.h, cuda_bf16.h) and are
// not run.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "cuda/launchers.h"

template <typename T> constexpr int dtype_of();
template <> constexpr int dtype_of<float>() { return nhl::kProjF32; }
template <> constexpr int dtype_of<double>() { return nhl::kProjF64; }
template <typename T> const char* name_of() { return sizeof(T) == 4 ? "float" : "double"; }

// Same value: equal bits, or both NaN, or (ulps > 0) within ulps units in the last place.
template <typename T>
bool same(T got, T want, int ulps = 0) {
  if (std::isnan(got) || std::isnan(want)) return std::isnan(got) && std::isnan(want);
  if (std::memcmp(&got, &want, sizeof(T)) == 0) return true;
  return ulps > 0 && std::fabs(got - want) <= ulps * std::numeric_limits<T>::epsilon() * std::fabs(want);
}

// GEMM output z (rows x cols) and bias with the edge values planted: z + b exactly 0 (bit off,
// sign_ste -1), -0, +-inf, NaN, subnormals; the rest uniform in [-2, 2].
template <typename T>
void make_inputs(int64_t rows, int64_t cols, unsigned seed, std::vector<T>& z, std::vector<T>& bias) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-2, 2);
  bias.resize(cols);
  for (auto& b : bias) b = T(u(rng));
  if (cols > 3) { bias[1] = T(0); bias[2] = T(-0.0); bias[3] = std::numeric_limits<T>::denorm_min(); }
  z.resize(rows * cols);
  for (auto& x : z) x = T(u(rng));
  const T special[] = {T(0), T(-0.0), std::numeric_limits<T>::infinity(), -std::numeric_limits<T>::infinity(),
                       std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::denorm_min(),
                       -std::numeric_limits<T>::denorm_min()};
  for (int64_t i = 0; i < rows * cols; i += 7) {
    const int64_t c = i % cols;
    switch (rng() % 3) {
      case 0: z[i] = -bias[c]; break;  // z + b == 0 exactly
      case 1: z[i] = special[rng() % 7]; break;
      default: break;
    }
  }
}

// z += bias (rounded to T); u = relax(z): none = z, tanh, sign_ste = z > 0 ? 1 : -1.
template <typename T>
void check_projection(int64_t rows, int64_t cols, int relax, unsigned seed, const char* why) {
  std::vector<T> z, bias;
  make_inputs(rows, cols, seed, z, bias);
  std::vector<T> gz = z, gu(rows * cols + 1, T(-7));  // one extra u: written past the end?
  const cudaError_t rc = nhl_nested_projection_epilogue(gz.data(), gu.data(), bias.data(), rows, cols, relax,
                                                        dtype_of<T>(), nullptr);
  CHECK(rc == cudaSuccess, "nested_projection returned %d [%s]", rc, why);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      const T zt = z[i] + bias[c];
      const T ut = relax == 1 ? std::tanh(zt) : relax == 2 ? (zt > T(0) ? T(1) : T(-1)) : zt;
      CHECK(same(gz[i], zt), "nested_projection %s relax=%d z[%ld][%ld]: got %.9g want %.9g [%s]", name_of<T>(), relax,
            r, c, double(gz[i]), double(zt), why);
      CHECK(same(gu[i], ut, relax == 1 ? 2 : 0), "nested_projection %s relax=%d u[%ld][%ld]: got %.9g want %.9g [%s]",
            name_of<T>(), relax, r, c, double(gu[i]), double(ut), why);
    }
  CHECK(gu[rows * cols] == T(-7), "nested_projection wrote past u [%s]", why);
}

// out (rows x ceil(cols/64)) int64 words, bit j of word j/64 set where z + b (rounded to T) > 0.
template <typename T>
void check_sign_pack(int64_t rows, int64_t cols, unsigned seed, const char* why) {
  std::vector<T> z, bias;
  make_inputs(rows, cols, seed, z, bias);
  const int64_t words = (cols + 63) / 64;
  std::vector<uint64_t> out(rows * words + 1, 0xABABABABABABABABull);
  const cudaError_t rc = nhl_sign_pack_epilogue(z.data(), bias.data(), rows, cols, out.data(), dtype_of<T>(), nullptr);
  CHECK(rc == cudaSuccess, "sign_pack returned %d [%s]", rc, why);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t w = 0; w < words; ++w) {
      uint64_t want = 0;
      for (int64_t j = 64 * w; j < std::min(cols, 64 * w + 64); ++j)
        if (T(z[r * cols + j] + bias[j]) > T(0)) want |= uint64_t(1) << (j - 64 * w);
      CHECK(out[r * words + w] == want, "sign_pack %s row %ld word %ld: got %016lx want %016lx [%s]", name_of<T>(), r, w,
            out[r * words + w], want, why);
    }
  CHECK(out[rows * words] == 0xABABABABABABABABull, "sign_pack wrote past its output [%s]", why);
}

// Empty inputs launch nothing; unknown dtypes are refused.
void check_edges() {
  float z = 5, u = 5, b = 1;
  uint64_t out = 7;
  CHECK(nhl_nested_projection_epilogue(&z, &u, &b, 0, 1, 0, nhl::kProjF32, nullptr) == cudaSuccess && z == 5 && u == 5,
        "nested_projection with no rows");
  CHECK(nhl_sign_pack_epilogue(&z, &b, 0, 1, &out, nhl::kProjF32, nullptr) == cudaSuccess && out == 7,
        "sign_pack with no rows");
  CHECK(nhl_nested_projection_epilogue(&z, &u, &b, 1, 1, 0, 4, nullptr) == cudaErrorInvalidValue,
        "nested_projection accepts dtype 4");
  CHECK(nhl_sign_pack_epilogue(&z, &b, 1, 1, &out, -1, nullptr) == cudaErrorInvalidValue, "sign_pack accepts dtype -1");
}

template <typename T>
void check_type() {
  for (int relax = 0; relax < 3; ++relax) {
    check_projection<T>(9, 130, relax, 10 + relax, "9 x 130: 5 blocks, the last partial");
    check_projection<T>(1, 1, relax, 20 + relax, "one element");
  }
  check_projection<T>(300, 130, 1, 30, "300 x 130: 153 blocks");
  // One warp per (row, word): 130 columns = 2 full words and a word of 2 columns; 9 rows = 27
  // warps = 4 blocks of 8 warps (the last one partly idle).
  check_sign_pack<T>(9, 130, 40, "9 x 130");
  check_sign_pack<T>(20, 64, 41, "20 x 64: whole words");
  check_sign_pack<T>(3, 1, 42, "3 x 1: one column");
  check_sign_pack<T>(33, 200, 43, "33 x 200: 17 blocks, a 8-column last word");
  check_sign_pack<T>(5, 96, 44, "5 x 96: the high half-word ballot partly past the end");
}

int main(int argc, char** argv) {
  simcheck::parse_args(argc, argv);  // the full set is quick already
  check_edges();
  check_type<float>();
  check_type<double>();
  return simcheck::finish("layer");
}
