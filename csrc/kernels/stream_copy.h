// Torch-free copy with streaming (non-temporal) stores, for large outputs written once: a normal
// store first reads its cache line from memory (read for ownership), so writing an output that
// is far larger than the caches moves every byte twice; whole-line streaming stores skip the
// read and keep the output from evicting the caller's working set. The caller issues
// stream_fence() before another thread may read what it wrote.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace nhl {

inline void stream_copy(void* dst_v, const void* src_v, size_t bytes) {
  auto* dst = static_cast<char*>(dst_v);
  const auto* src = static_cast<const char*>(src_v);
#if defined(__AVX2__)
  const size_t head = std::min<size_t>(bytes, (32 - (reinterpret_cast<uintptr_t>(dst) & 31)) & 31);
  std::memcpy(dst, src, head);  // up to 32-byte alignment with normal stores
  dst += head, src += head, bytes -= head;
  for (; bytes >= 32; bytes -= 32, dst += 32, src += 32)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
#endif
  std::memcpy(dst, src, bytes);
}

inline void stream_fence() {
#if defined(__AVX2__)
  _mm_sfence();
#endif
}

}  // namespace nhl
