// The output cache (output_cache.h): a c10::Allocator whose freed blocks wait, up to a byte
// budget, for the next output of a close size.
#include "cpu/output_cache.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <cstdlib>
#include <map>
#include <mutex>

namespace nhl {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;  // smaller outputs: torch's allocator is cheap enough
constexpr size_t kAlign = 4096;

struct Block {
  void* ptr;
  size_t bytes;
};

class OutputCache final : public c10::Allocator {
 public:
  OutputCache() {
    const char* env = std::getenv("NHL_OUTPUT_CACHE_MB");
    budget_ = (env ? size_t(std::strtoull(env, nullptr, 10)) : size_t(512)) << 20;
  }

  c10::DataPtr allocate(size_t n) override {
    Block* b = take(n);  // the Block travels with its memory: the DataPtr's context, then the cache's entry
    if (!b) {
      void* p = nullptr;
      if (posix_memalign(&p, kAlign, n ? n : 1) != 0) TORCH_CHECK(false, "nhl_fast: out of memory allocating ", n, " bytes");
      b = new Block{p, n};
    }
    return {b->ptr, b, &OutputCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  int64_t empty() {
    std::multimap<size_t, Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      held_ = 0;
    }
    int64_t bytes = 0;
    for (auto& [size, b] : drop) bytes += static_cast<int64_t>(size), destroy(b);
    return bytes;
  }

  int64_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(held_);
  }

  static OutputCache& get() {
    static OutputCache* cache = new OutputCache();  // never destroyed: tensors may die after exit handlers
    return *cache;
  }

 private:
  // The smallest cached block that holds n bytes and wastes at most an eighth of it.
  Block* take(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.lower_bound(n);
    if (it == free_.end() || it->first > n + n / 8) return nullptr;
    Block* b = it->second;
    held_ -= b->bytes;
    free_.erase(it);
    return b;
  }

  static void destroy(Block* b) {
    std::free(b->ptr);
    delete b;
  }

  static void release(void* ctx) {
    Block* b = static_cast<Block*>(ctx);
    OutputCache& c = get();
    if (b->bytes >= kMinBytes && b->bytes <= c.budget_) {  // a resized output may have become small
      std::lock_guard<std::mutex> lock(c.mu_);
      // Oldest-first would need a second index; dropping the largest block keeps the budget.
      while (c.held_ + b->bytes > c.budget_) {
        auto last = std::prev(c.free_.end());
        c.held_ -= last->first;
        destroy(last->second);
        c.free_.erase(last);
      }
      c.free_.emplace(b->bytes, b);
      c.held_ += b->bytes;
      return;
    }
    destroy(b);
  }

  std::mutex mu_;
  std::multimap<size_t, Block*> free_;  // bytes -> block
  size_t held_ = 0, budget_ = 0;
};

}  // namespace

at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  if (static_cast<size_t>(numel) * c10::elementSize(dtype) < kMinBytes) return at::empty(sizes, at::TensorOptions().dtype(dtype));
  return at::detail::empty_generic(sizes, &OutputCache::get(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype, std::nullopt);
}

int64_t empty_output_cache() { return OutputCache::get().empty(); }

int64_t output_cache_bytes() { return OutputCache::get().held(); }

}  // namespace nhl
