// Multi-index hashing glue (kernels/mih.h): build the CSR tables, search with OpenMP over queries.
#include "cpu/mih_cpu.h"

#include <ATen/Parallel.h>

#include "checks.h"
#include "kernels/mih.h"

namespace nhl {
namespace {

constexpr int64_t kMaxWidth = 30;  // a directory of 2^30 + 1 offsets is 4 GiB: wider is a mistake

void check_layout(const at::Tensor& codes, const std::vector<int64_t>& starts, const std::vector<int64_t>& widths) {
  check_packed("mih", "codes", codes);
  TORCH_CHECK_VALUE(starts.size() == widths.size() && !starts.empty() && starts.size() <= 64,
                    "mih: starts and widths must have the same length, 1..64 substrings");
  TORCH_CHECK_VALUE(codes.size(0) < (int64_t(1) << 32) - 1, "mih: at most 2^32 - 2 codes");
  for (size_t j = 0; j < starts.size(); ++j) {
    TORCH_CHECK_VALUE(widths[j] >= 1 && widths[j] <= kMaxWidth, "mih: substring widths must be 1..", kMaxWidth,
                      ", got ", widths[j]);
    TORCH_CHECK_VALUE(starts[j] >= 0 && starts[j] + widths[j] <= 64 * codes.size(1),
                      "mih: substring ", j, " [", starts[j], ", ", starts[j] + widths[j], ") is outside the ",
                      64 * codes.size(1), "-bit codes");
  }
}

std::vector<int64_t> directory_starts(const std::vector<int64_t>& widths) {
  std::vector<int64_t> at(widths.size() + 1, 0);
  for (size_t j = 0; j < widths.size(); ++j) at[j + 1] = at[j] + (int64_t(1) << widths[j]) + 1;
  return at;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mih_build_cpu(const at::Tensor& codes_in, std::vector<int64_t> starts,
                                                 std::vector<int64_t> widths) {
  check_layout(codes_in, starts, widths);
  const at::Tensor codes = codes_in.contiguous();
  const int64_t n = codes.size(0), m = static_cast<int64_t>(starts.size());
  const int words = static_cast<int>(codes.size(1));
  const auto dir = directory_starts(widths);
  at::Tensor offsets = at::empty({dir[m]}, at::kInt), ids = at::empty({m * n}, at::kInt);
  const auto* cp = reinterpret_cast<const uint64_t*>(codes.data_ptr<int64_t>());
  auto* op = reinterpret_cast<uint32_t*>(offsets.data_ptr<int32_t>());
  auto* ip = reinterpret_cast<uint32_t*>(ids.data_ptr<int32_t>());
  at::parallel_for(0, m, 1, [&](int64_t b, int64_t e) {  // one table per thread: each is a serial counting sort
    for (int64_t j = b; j < e; ++j)
      mih::build_table(cp, n, words, static_cast<int>(starts[j]), static_cast<int>(widths[j]), op + dir[j],
                       ip + j * n);
  });
  return {offsets, ids};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mih_search_cpu(
    const at::Tensor& q_in, const at::Tensor& codes_in, const at::Tensor& offsets, const at::Tensor& ids,
    std::vector<int64_t> starts, std::vector<int64_t> widths, std::vector<int64_t> bits, std::vector<int64_t> subs,
    int64_t k, int64_t budget) {
  check_layout(codes_in, starts, widths);
  check_query_database("mih_search", q_in, codes_in, bits);
  const int64_t n = codes_in.size(0), Q = q_in.size(0), m = static_cast<int64_t>(starts.size());
  const int64_t L = static_cast<int64_t>(bits.size());
  check_k("mih_search", "k", k, n);
  const auto dir = directory_starts(widths);
  TORCH_CHECK_VALUE(offsets.scalar_type() == at::kInt && offsets.is_contiguous() && offsets.numel() == dir[m],
                    "mih_search: offsets must be the contiguous int32 directory of mih_build");
  TORCH_CHECK_VALUE(ids.scalar_type() == at::kInt && ids.is_contiguous() && ids.numel() == m * n,
                    "mih_search: ids must be the contiguous int32 ids of mih_build");
  TORCH_CHECK_VALUE(subs.size() == bits.size(), "mih_search: one substring count per length");
  for (size_t l = 0; l < subs.size(); ++l) {
    TORCH_CHECK_VALUE(subs[l] >= 1 && subs[l] <= m, "mih_search: substring counts must be 1..", m);
    for (int64_t j = 0; j < subs[l]; ++j)
      TORCH_CHECK_VALUE(starts[j] + widths[j] <= bits[l], "mih_search: substring ", j, " is not inside the first ",
                        bits[l], " bits");
  }
  const at::Tensor q = q_in.contiguous(), codes = codes_in.contiguous();
  const int words = static_cast<int>(codes.size(1));
  std::vector<mih::Table> tables(m);
  const auto* op = reinterpret_cast<const uint32_t*>(offsets.data_ptr<int32_t>());
  const auto* ip = reinterpret_cast<const uint32_t*>(ids.data_ptr<int32_t>());
  for (int64_t j = 0; j < m; ++j)
    tables[j] = {static_cast<int>(starts[j]), static_cast<int>(widths[j]), op + dir[j], ip + j * n};

  at::Tensor dist = at::zeros({L, Q, k}, at::kInt), idx = at::zeros({L, Q, k}, at::kLong);
  at::Tensor gave_up = at::zeros({L, Q}, at::kBool), work = at::zeros({L, Q}, at::kLong);
  const auto* qp = reinterpret_cast<const uint64_t*>(q.data_ptr<int64_t>());
  const auto* cp = reinterpret_cast<const uint64_t*>(codes.data_ptr<int64_t>());
  int32_t* dp = dist.data_ptr<int32_t>();
  int64_t* xp = idx.data_ptr<int64_t>();
  bool* gp = gave_up.data_ptr<bool>();
  int64_t* wp = work.data_ptr<int64_t>();
  at::parallel_for(0, Q, 1, [&](int64_t b, int64_t e) {
    mih::Scratch scratch(n);  // one seen-bitset per thread, reused over its queries
    for (int64_t i = b; i < e; ++i)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t at_lq = l * Q + i;
        const auto r = mih::search_one(qp + i * words, cp, n, words, tables.data(), static_cast<int>(subs[l]),
                                       static_cast<int>(bits[l]), k, budget, scratch, dp + at_lq * k,
                                       xp + at_lq * k);
        gp[at_lq] = r.gave_up;
        wp[at_lq] = r.work;
      }
  });
  return {dist, idx, gave_up, work};
}

}  // namespace nhl
