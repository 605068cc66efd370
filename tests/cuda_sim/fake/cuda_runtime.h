// Host-thread simulator of the CUDA subset used by csrc/cuda/*.cu (testing only).
#pragma once
#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
typedef int cudaError_t;
typedef void* cudaStream_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return cudaSuccess; }
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
extern thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace sim {
struct Coll { int gen = 0; unsigned arrived = 0; int readers = 0; uint64_t vals[32], res[32]; };
struct Warp { std::mutex m; std::condition_variable cv; std::map<unsigned, Coll> colls; };
extern thread_local Warp* warp;
extern thread_local std::barrier<>* block_barrier;
extern std::vector<unsigned char> dyn_smem;
inline void exchange(unsigned mask, uint64_t v, uint64_t* out) {
  const int lane = threadIdx.x & 31;
  if (!(mask >> lane & 1)) { std::fprintf(stderr, "lane %d not in mask %08x\n", lane, mask); std::abort(); }
  std::unique_lock<std::mutex> lk(warp->m);
  Coll& c = warp->colls[mask];
  auto wait = [&](auto pred) {
    if (!warp->cv.wait_for(lk, std::chrono::seconds(20), pred)) { std::fprintf(stderr, "DEADLOCK mask %08x lane %d\n", mask, lane); std::abort(); }
  };
  wait([&] { return c.readers == 0; });
  c.vals[lane] = v;
  c.arrived |= 1u << lane;
  const int gen = c.gen;
  if (c.arrived == mask) {
    std::memcpy(c.res, c.vals, sizeof c.vals);
    c.readers = __builtin_popcount(mask);
    c.arrived = 0;
    c.gen++;
    warp->cv.notify_all();
  } else {
    wait([&] { return c.gen != gen; });
  }
  std::memcpy(out, c.res, sizeof c.res);
  if (--c.readers == 0) warp->cv.notify_all();
}
template <typename K, typename... A>
void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, K kernel, A... args) {
  const unsigned nt = block.x;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        dyn_smem.assign(smem + 16, 0xAB);  // garbage: catch reads before writes
        std::barrier<> bar(nt);
        std::vector<std::unique_ptr<Warp>> warps;
        for (unsigned w = 0; w < (nt + 31) / 32; ++w) warps.emplace_back(new Warp);
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < nt; ++t)
          ts.emplace_back([&, t] {
            threadIdx = dim3(t); blockIdx = dim3(bx, by, bz); blockDim = block; gridDim = grid;
            warp = warps[t / 32].get(); block_barrier = &bar;
            kernel(args...);
            bar.arrive_and_drop();
          });
        for (auto& th : ts) th.join();
      }
}
}  // namespace sim

inline void __syncthreads() { sim::block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { uint64_t o[32]; sim::exchange(mask, 0, o); }
inline unsigned __ballot_sync(unsigned mask, bool p) {
  uint64_t o[32]; sim::exchange(mask, p, o);
  unsigned r = 0; for (int i = 0; i < 32; ++i) if ((mask >> i & 1) && o[i]) r |= 1u << i; return r;
}
inline unsigned __match_any_sync(unsigned mask, int v) {
  uint64_t o[32]; sim::exchange(mask, (uint64_t)(uint32_t)v, o);
  unsigned r = 0; for (int i = 0; i < 32; ++i) if ((mask >> i & 1) && o[i] == (uint64_t)(uint32_t)v) r |= 1u << i; return r;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(x); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
