// Run-time choice of the AVX-512 code paths (the build itself targets AVX2): functions marked
// NHL_TARGET_AVX512 are compiled for AVX-512 and only called where records_avx512() holds.
#pragma once
#include <cstdlib>

namespace nhl {

#if defined(__AVX2__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NHL_RECORDS_AVX512 1
#define NHL_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vbmi2,bmi2")))
#endif

// Whether the top-k scan filters 64 codes per zmm step and RecordLists appends with AVX-512
// compress stores (BW + VBMI2, detected at run time). NHL_TOPK_NO_AVX512=1 forces the AVX2
// paths, so tests cover both on one machine.
inline bool records_avx512() {
#ifdef NHL_RECORDS_AVX512
  static const bool cpu = [] {
    __builtin_cpu_init();  // in a shared library the detection may not have run yet
    return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi2");
  }();
  const char* off = std::getenv("NHL_TOPK_NO_AVX512");
  return cpu && !(off && *off && *off != '0');
#else
  return false;
#endif
}

}  // namespace nhl
