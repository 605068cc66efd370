// Host simulator of the CUDA subset used by csrc/cuda/*.cu (testing only; force-included, see run.sh).
//
// A launch runs its blocks on a few worker threads, one block at a time per worker. Within a block
// every CUDA thread is a fiber (ucontext) of the worker; warp collectives (__ballot_sync,
// __match_any_sync, __shfl*_sync, __syncwarp) are exchanges between the lanes in the mask and
// __syncthreads is a barrier: a fiber that arrives waits (yields to the block's scheduler) until
// its peers have arrived. After every wait the scheduler resumes the block's fibers in a fresh
// pseudo-random order (seeded by SIM_SEED, launch and block), so a lane that reads another lane's
// write without a sync sees varying orders. A collective or barrier that some thread never reaches
// (a real GPU would hang) aborts with a DEADLOCK message naming the waiting threads.
// __shared__ variables are per-worker statics (static thread_local); the dynamic shared buffer
// (extern __shared__, rewritten by transform.py) is refilled with garbage (0xAB) for every block.
#pragma once
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) alignas(n)
#define __shared__ static thread_local  // a worker runs one block at a time

typedef int cudaError_t;
typedef void* cudaStream_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
// Vector types (CUDA's alignment: 8 bytes for the 2 x 4-byte ones, 16 for the rest) and make_*.
#define SIM_VEC2(T, N, A) struct alignas(A) N { T x, y; }; inline N make_##N(T x, T y) { return N{x, y}; }
#define SIM_VEC4(T, N, A) struct alignas(A) N { T x, y, z, w; }; inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
SIM_VEC2(int, int2, 8) SIM_VEC2(unsigned, uint2, 8) SIM_VEC2(float, float2, 8)
SIM_VEC2(long long, longlong2, 16) SIM_VEC2(unsigned long long, ulonglong2, 16) SIM_VEC2(double, double2, 16)
SIM_VEC4(int, int4, 16) SIM_VEC4(unsigned, uint4, 16) SIM_VEC4(float, float4, 16)
#undef SIM_VEC2
#undef SIM_VEC4

namespace sim {
inline cudaError_t last_error = cudaSuccess;            // held until cudaGetLastError reads it
inline std::map<const void*, size_t> max_dynamic_smem;  // kernel -> opted-in dynamic shared bytes
constexpr size_t kDefaultDynamicSmem = 48 * 1024;       // without the opt-in
constexpr size_t kMaxDynamicSmem = 227 * 1024;          // opt-in ceiling (sm_90)
inline thread_local std::vector<unsigned char> dyn_smem;
}  // namespace sim

inline cudaError_t cudaGetLastError() { const cudaError_t e = sim::last_error; sim::last_error = cudaSuccess; return e; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "simulated CUDA error"; }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return cudaSuccess; }
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || size_t(value) > sim::kMaxDynamicSmem)
    return cudaErrorInvalidValue;
  sim::max_dynamic_smem[reinterpret_cast<const void*>(kernel)] = size_t(value);
  return cudaSuccess;
}

namespace sim {

[[noreturn]] inline void fatal(const char* what) { std::fprintf(stderr, "SIM: %s\n", what); std::fflush(stderr); std::abort(); }

struct Coll { unsigned arrived = 0, gen = 0; uint64_t vals[32], res[32]; };  // one (warp, mask) collective
struct Fiber {
  ucontext_t ctx;
  dim3 tid;
  bool done = false;
  const char* waiting = nullptr;  // what it waits for (deadlock report)
  unsigned wait_mask = 0;
};
constexpr size_t kStackBytes = 256 * 1024;

// One worker thread: runs a block's fibers; keeps its stacks for the next blocks.
struct Worker {
  ucontext_t sched;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;  // kStackBytes each, above a guard page
  std::vector<std::map<unsigned, Coll>> warps;
  Fiber* cur = nullptr;
  uint64_t progress = 0;  // bumped by every arrival, completed wait and exit
  unsigned bar_arrived = 0, bar_expected = 0, bar_gen = 0;
  const std::function<void()>* body = nullptr;
  ~Worker() { for (char* s : stacks) munmap(s - 4096, kStackBytes + 4096); }
};
inline thread_local Worker* worker = nullptr;

inline void yield() { swapcontext(&worker->cur->ctx, &worker->sched); }
template <typename Done>
void wait_until(const char* what, unsigned mask, Done done) {
  Fiber* f = worker->cur;
  while (!done()) {
    f->waiting = what;
    f->wait_mask = mask;
    yield();
  }
  f->waiting = nullptr;
  worker->progress++;
}

inline void barrier_release_if_complete(Worker& w) {
  if (w.bar_arrived > 0 && w.bar_arrived == w.bar_expected) { w.bar_arrived = 0; w.bar_gen++; }
}

inline void fiber_main() {
  Worker* w = worker;
  (*w->body)();
  w->cur->done = true;
  w->progress++;
  w->bar_expected--;  // an exited thread no longer holds back __syncthreads
  barrier_release_if_complete(*w);
}  // returns to uc_link = the scheduler

inline uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

inline void deadlock(Worker& w) {
  std::fprintf(stderr, "SIM: DEADLOCK in block (%u,%u,%u); waiting threads:", blockIdx.x, blockIdx.y, blockIdx.z);
  int shown = 0;
  for (auto& f : w.fibers)
    if (!f.done && shown++ < 16) std::fprintf(stderr, " t%u:%s(%08x)", f.tid.x, f.waiting ? f.waiting : "?", f.wait_mask);
  fatal("a collective or barrier is never reached by some thread");
}

inline void run_block(Worker& w, unsigned nt, uint64_t seed) {
  while (w.stacks.size() < nt) {
    void* p = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fatal("mmap of a fiber stack failed");
    mprotect(p, 4096, PROT_NONE);  // stack overflow faults instead of corrupting
    w.stacks.push_back(static_cast<char*>(p) + 4096);
  }
  w.fibers.assign(nt, Fiber{});
  w.warps.assign((nt + 31) / 32, {});
  w.bar_arrived = 0;
  w.bar_expected = nt;
  for (unsigned t = 0; t < nt; ++t) {
    Fiber& f = w.fibers[t];
    f.tid = dim3(t);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = w.stacks[t];
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &w.sched;
    makecontext(&f.ctx, fiber_main, 0);
  }
  std::vector<unsigned> order(nt);
  std::iota(order.begin(), order.end(), 0u);
  unsigned live = nt;
  while (live) {
    for (unsigned i = nt; i > 1; --i) std::swap(order[i - 1], order[(seed = mix(seed)) % i]);
    const uint64_t before = w.progress;
    for (unsigned t : order) {
      Fiber& f = w.fibers[t];
      if (f.done) continue;
      w.cur = &f;
      threadIdx = f.tid;
      swapcontext(&w.sched, &f.ctx);
      if (f.done) --live;
    }
    if (live && w.progress == before) deadlock(w);
  }
}

// The launch limits a real launch enforces (an error for cudaGetLastError, no run): 1..1024
// threads, grid y/z <= 65535, dynamic shared memory over 48 KiB only after cudaFuncSetAttribute.
template <typename K>
bool launch_ok(dim3 grid, dim3 block, size_t smem, K kernel) {
  if (block.x < 1 || block.x > 1024 || block.y != 1 || block.z != 1) return false;  // 1-D blocks only
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) return false;
  if (smem > kDefaultDynamicSmem) {
    const auto it = max_dynamic_smem.find(reinterpret_cast<const void*>(kernel));
    if (it == max_dynamic_smem.end() || smem > it->second) return false;
  }
  return true;
}

inline unsigned workers_wanted() {
  const char* e = std::getenv("SIM_WORKERS");
  const unsigned n = e ? unsigned(std::atoi(e)) : std::thread::hardware_concurrency();
  return std::clamp(n, 1u, 16u);
}
inline uint64_t launches = 0;
inline std::vector<std::unique_ptr<Worker>> pool;  // keeps the fiber stacks between launches

// kernel<<<grid, block, smem, stream>>>(args...): synchronous, blocks spread over the workers.
template <typename K, typename... A>
void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, K kernel, A... args) {
  if (!launch_ok(grid, block, smem, kernel)) { last_error = cudaErrorInvalidConfiguration; return; }
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  const unsigned nw = unsigned(std::min<uint64_t>(workers_wanted(), nblocks));
  while (pool.size() < nw) pool.emplace_back(new Worker);
  const char* s = std::getenv("SIM_SEED");
  const uint64_t launch_seed = mix((s ? std::strtoull(s, nullptr, 10) : 0) * 1000003 + launches++);
  const std::function<void()> body = [&] { kernel(args...); };
  std::atomic<uint64_t> next{0};
  auto work = [&](Worker* w) {
    worker = w;
    w->body = &body;
    for (uint64_t b; (b = next++) < nblocks;) {
      blockIdx = dim3(unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / grid.x / grid.y));
      blockDim = block;
      gridDim = grid;
      dyn_smem.assign(smem + 16, 0xAB);  // garbage: catch reads before writes
      run_block(*w, block.x, mix(launch_seed ^ b));
    }
  };
  std::vector<std::thread> ts;
  for (unsigned i = 1; i < nw; ++i) ts.emplace_back(work, pool[i].get());
  work(pool[0].get());
  for (auto& t : ts) t.join();
}

// One warp collective: every lane in `mask` contributes v; out[i] = lane i's value (lanes in mask).
inline void exchange(unsigned mask, uint64_t v, uint64_t* out) {
  const unsigned lane = threadIdx.x & 31;
  if (!(mask >> lane & 1)) { std::fprintf(stderr, "SIM: lane %u calls a collective with mask %08x\n", lane, mask); fatal("lane not in mask"); }
  Coll& c = worker->warps[threadIdx.x / 32][mask];
  c.vals[lane] = v;
  c.arrived |= 1u << lane;
  worker->progress++;
  const unsigned gen = c.gen;
  if (c.arrived == mask) {  // the last to arrive publishes; the others read before they can arrive again
    std::memcpy(c.res, c.vals, sizeof c.vals);
    c.arrived = 0;
    c.gen++;
  } else {
    wait_until("warp collective", mask, [&] { return c.gen != gen; });
  }
  std::memcpy(out, c.res, sizeof c.res);
}

}  // namespace sim

inline void __syncthreads() {
  sim::Worker& w = *sim::worker;
  const unsigned gen = w.bar_gen;
  w.bar_arrived++;
  w.progress++;
  sim::barrier_release_if_complete(w);
  sim::wait_until("__syncthreads", 0, [&] { return w.bar_gen != gen; });
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { uint64_t o[32]; sim::exchange(mask, 0, o); }
inline unsigned __ballot_sync(unsigned mask, bool p) {
  uint64_t o[32]; sim::exchange(mask, p, o);
  unsigned r = 0; for (int i = 0; i < 32; ++i) if ((mask >> i & 1) && o[i]) r |= 1u << i; return r;
}
inline bool __any_sync(unsigned mask, bool p) { return __ballot_sync(mask, p) != 0; }
inline bool __all_sync(unsigned mask, bool p) { return __ballot_sync(mask, p) == mask; }
template <typename T>  // int, unsigned, long long, unsigned long long (and long) keys
unsigned __match_any_sync(unsigned mask, T v) {
  static_assert(std::is_integral_v<T> && sizeof(T) <= 8, "__match_any_sync takes a 32- or 64-bit integer");
  const uint64_t key = uint64_t(v);
  uint64_t o[32]; sim::exchange(mask, key, o);
  unsigned r = 0; for (int i = 0; i < 32; ++i) if ((mask >> i & 1) && o[i] == key) r |= 1u << i; return r;
}
// Shuffles of any type up to 8 bytes; a source lane outside the mask or the segment reads the
// caller's own value.
template <typename T>
T sim_shfl_from(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8, "simulated shuffles move at most 8 bytes");
  uint64_t bits = 0, o[32];
  std::memcpy(&bits, &v, sizeof(T));
  sim::exchange(mask, bits, o);
  if (src >= 0 && src < 32 && (mask >> src & 1)) std::memcpy(&v, &o[src], sizeof(T));
  return v;
}
template <typename T> T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return sim_shfl_from(mask, v, int(threadIdx.x & 31 & ~unsigned(width - 1)) + (src & (width - 1)));
}
template <typename T> T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
  const int lane = threadIdx.x & 31;
  return sim_shfl_from(mask, v, (lane & (width - 1)) + int(d) < width ? lane + int(d) : lane);
}
template <typename T> T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
  const int lane = threadIdx.x & 31;
  return sim_shfl_from(mask, v, (lane & (width - 1)) >= int(d) ? lane - int(d) : lane);
}
template <typename T> T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) {
  const int lane = threadIdx.x & 31, src = lane ^ m;
  return sim_shfl_from(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(x); }
inline int __ffsll(unsigned long long x) { return __builtin_ffsll(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
// Blocks run on several workers at once: global-memory atomics are real atomics.
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
