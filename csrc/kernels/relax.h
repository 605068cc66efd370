// Torch-free relaxations of the nested hash layer's pre-activation z = x W^T + b,
// shared by the CPU and CUDA epilogues. The codes of every length are prefixes of
// one output row, so one elementwise pass serves all lengths.
#pragma once
#include <cmath>
#include <cstring>

#if defined(__CUDACC__)
#define NHL_RELAX_HD __host__ __device__ __forceinline__
#else
#define NHL_RELAX_HD inline
#endif

namespace nhl {

enum class Relax : int { None = 0, Tanh = 1, SignSte = 2 };

// -1 for an unknown name (the caller raises a clear error naming `relax`).
inline int parse_relax(const char* name, size_t len) {
  auto is = [&](const char* s) { return std::strlen(s) == len && std::strncmp(name, s, len) == 0; };
  if (is("none")) return static_cast<int>(Relax::None);
  if (is("tanh")) return static_cast<int>(Relax::Tanh);
  if (is("sign_ste")) return static_cast<int>(Relax::SignSte);
  return -1;
}

// sign_ste maps z > 0 to +1 and everything else (0 included) to -1: the same rule as
// the packed bits (a bit is set only where z > 0), so unpack(encode(x)) == sign_ste(x).
template <typename T>
NHL_RELAX_HD T apply_relax(T z, Relax r) {
  using std::tanh;
  if (r == Relax::Tanh) return tanh(z);
  if (r == Relax::SignSte) return z > T(0) ? T(1) : T(-1);
  return z;
}

}  // namespace nhl
