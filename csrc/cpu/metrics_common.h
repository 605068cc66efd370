// Shared torch-side setup of the CPU metric ops (distance_histogram, index_ap): the nested-length
// tables of kernels/ap.h, dispatch on the label layout, parallel blocks. Their argument checks are
// checks.h's check_metric_inputs.
#pragma once
#include <torch/all.h>

#include <ATen/Parallel.h>

#include <atomic>
#include <vector>

#include "checks.h"
#include "kernels/ap_block_cpu.h"

namespace nhl {

static_assert(kApMaxLengths >= kMetricMaxLengths, "check_metric_inputs admits more lengths than the kernels hold");

struct MetricTables {
  std::vector<int> full, offset;
  std::vector<uint64_t> partial;
  int bins = 0;
  int label_words = 0;
};

inline MetricTables metric_tables(at::IntArrayRef bits, const at::Tensor& q_labels) {
  MetricTables t;
  for (int64_t b : bits) {
    t.full.push_back(int(b / 64));
    t.partial.push_back(b % 64 ? (uint64_t(1) << (b % 64)) - 1 : 0);
    t.offset.push_back(t.bins);
    t.bins += int(b) + 1;
  }
  t.label_words = q_labels.dim() == 1 ? 0 : int(q_labels.size(1));
  return t;
}

inline ApProblem cpu_problem(const at::Tensor& q, const at::Tensor& db, const at::Tensor& q_labels,
                             const at::Tensor& db_labels, const MetricTables& t) {
  ApProblem p;
  p.q = reinterpret_cast<const uint64_t*>(q.data_ptr<int64_t>());
  p.db = reinterpret_cast<const uint64_t*>(db.data_ptr<int64_t>());
  p.n = db.size(0);
  p.words = int(q.size(1));
  p.q_labels = reinterpret_cast<const uint64_t*>(q_labels.data_ptr<int64_t>());
  p.db_labels = reinterpret_cast<const uint64_t*>(db_labels.data_ptr<int64_t>());
  p.label_words = t.label_words;
  p.len = NestedLengths{int(t.full.size()), t.full.data(), t.partial.data(), t.offset.data()};
  p.bins = t.bins;
  return p;
}

template <class T>
struct TypeTag {
  using type = T;
};

// f(std::integral_constant<int, LW>): the label layout of relevant_t as a compile-time constant
// (0: class indices, 1 or 2 words of multi-hot bits, -1: any other word count).
template <class F>
void dispatch_labels(int label_words, F&& f) {
  switch (label_words) {
    case 0: f(std::integral_constant<int, 0>()); break;
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    default: f(std::integral_constant<int, -1>()); break;
  }
}

// f(TypeTag<D>, std::integral_constant<int, LW>): the distance policy of kernels/ap_block_cpu.h
// (a compile-time specialisation for the common length sets, else by word count) and the label
// layout of relevant_t, so the hot loops of the common shapes are fully unrolled.
template <class F>
void dispatch_lengths_labels(at::IntArrayRef bits, int words, int label_words, F&& f) {
  auto labels = [&](auto plan) { dispatch_labels(label_words, [&](auto lw) { f(plan, lw); }); };
  const int64_t* b = bits.data();
  const int L = int(bits.size());
  if (FixedLengths<8, 16, 32, 64, 128>::matches(b, L, words)) return labels(TypeTag<FixedLengths<8, 16, 32, 64, 128>>());
  if (FixedLengths<8, 16, 32, 64>::matches(b, L, words)) return labels(TypeTag<FixedLengths<8, 16, 32, 64>>());
  if (FixedLengths<16, 32, 64, 128>::matches(b, L, words)) return labels(TypeTag<FixedLengths<16, 32, 64, 128>>());
  if (FixedLengths<16, 32, 48, 64>::matches(b, L, words)) return labels(TypeTag<FixedLengths<16, 32, 48, 64>>());
  if (FixedLengths<12, 24, 32, 48>::matches(b, L, words)) return labels(TypeTag<FixedLengths<12, 24, 32, 48>>());
  switch (words) {
    case 1: return labels(TypeTag<AnyLengths<1>>());
    case 2: return labels(TypeTag<AnyLengths<2>>());
    case 4: return labels(TypeTag<AnyLengths<4>>());
    default: return labels(TypeTag<AnyLengths<0>>());
  }
}

// Runs task(block, thread_state) for blocks 0..blocks-1 on torch's intra-op threads, handing out
// blocks one at a time from an atomic counter: when another process takes a core, the other
// threads pick up its share instead of waiting for a static half (make_state: per-thread scratch).
template <class MakeState, class Task>
void parallel_blocks(int64_t blocks, MakeState&& make_state, Task&& task) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      auto state = make_state();
      for (int64_t b = next.fetch_add(1); b < blocks; b = next.fetch_add(1)) task(b, state);
    }
  });
}

// Queries per block: histograms of a block stay within ~16 KiB (L1), at most 8 queries.
inline int queries_per_block(int bins) {
  static_assert(8 <= kApMaxBlock, "a record holds the query of a block in 4 bits");
  return std::max(1, std::min(8, (16 << 10) / (bins * 8)));
}

}  // namespace nhl
