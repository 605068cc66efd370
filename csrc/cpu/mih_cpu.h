// Multi-index hashing for nhl_fast.MultiIndexHammingIndex (csrc/kernels/mih.h): table build and search.
// Not torch ops: they serve one stateful Python class and are bound as functions of the nhl_fast._C module
// (csrc/nhl_ops.cpp), so they carry no schema, fake or op-table row.
#pragma once
#include <torch/extension.h>

#include <tuple>
#include <vector>

namespace nhl {

// (N, W) codes, substrings (starts[j], widths[j]) -> (offsets int32 (sum 2^w_j + 1), ids int32 (m * N)).
std::tuple<at::Tensor, at::Tensor> mih_build_cpu(const at::Tensor& codes, std::vector<int64_t> starts,
                                                 std::vector<int64_t> widths);

// (L, Q, k) int32 distances, int64 ids, (L, Q) bool gave_up, (L, Q) int64 work; length l uses the first
// subs[l] substrings. budget < 0: never give up.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mih_search_cpu(
    const at::Tensor& q, const at::Tensor& codes, const at::Tensor& offsets, const at::Tensor& ids,
    std::vector<int64_t> starts, std::vector<int64_t> widths, std::vector<int64_t> bits, std::vector<int64_t> subs,
    int64_t k, int64_t budget);

}  // namespace nhl
