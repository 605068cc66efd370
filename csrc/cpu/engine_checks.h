// Argument checks shared by the CPU engine ops (hamming, topk). The public Python functions
// validate first with friendlier messages; these keep a direct torch.ops call from crashing.
#pragma once
#include <torch/all.h>

namespace nhl {

inline void check_query_database(const at::Tensor& q, const at::Tensor& db, at::IntArrayRef bits, const char* op) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kLong, op, ": q must be (Q, W) int64 packed codes");
  TORCH_CHECK(db.dim() == 2 && db.scalar_type() == at::kLong, op, ": db must be (N, W) int64 packed codes");
  TORCH_CHECK(q.size(1) == db.size(1) && q.size(1) >= 1, op, ": q and db must have the same number (>= 1) of words");
  TORCH_CHECK(q.device() == db.device(), op, ": q and db must be on the same device");
  TORCH_CHECK(!bits.empty(), op, ": bits must not be empty");
  for (size_t l = 0; l < bits.size(); ++l) {
    TORCH_CHECK(bits[l] >= 1 && bits[l] <= 64 * q.size(1), op, ": every bit length must be in [1, 64*W]");
    TORCH_CHECK(l == 0 || bits[l] > bits[l - 1], op, ": bits must be strictly increasing");
  }
}

}  // namespace nhl
