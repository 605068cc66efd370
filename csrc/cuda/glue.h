// Helpers of the CUDA glue: the block at the end of each csrc/cuda/<op>_cuda.cu, inside
// #ifndef NHL_KERNELS_ONLY, that turns tensors into its launcher call and registers the op
// (TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m)). Included only there: the kernels and launchers above it
// stay torch-free. Argument contracts are checks.h's, shared with the CPU ops; this adds the device
// (every input on one GPU, that GPU current), the current stream, the launch error check and the
// launch set-ups two ops share (projection epilogues, metric kernels).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // = at::cuda::getCurrentCUDAStream, without the cuBLAS/cuSPARSE headers
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>

#include "checks.h"
#include "cuda/launchers.h"

namespace nhl {
namespace glue {

struct Input {
  const char* name;
  const at::Tensor& tensor;
};

// Every input on a GPU, all on the first one's (ValueError); returns the guard that makes it current:
//   const auto guard = glue::on_gpu("topk", {{"q", q}, {"db", db}});
inline c10::cuda::CUDAGuard on_gpu(const char* op, std::initializer_list<Input> inputs) {
  const Input& first = *inputs.begin();
  for (const Input& in : inputs) {
    TORCH_CHECK_VALUE(in.tensor.is_cuda(), op, ": ", in.name, " must be a CUDA tensor, got a tensor on ",
                      in.tensor.device(), " (all inputs of a CUDA op must be on the same GPU)");
    TORCH_CHECK_VALUE(in.tensor.device() == first.tensor.device(), op, ": ", in.name, " must be on ", first.name,
                      "'s device ", first.tensor.device(), ", got ", in.tensor.device(),
                      " (all inputs of a CUDA op must be on the same GPU)");
  }
  return c10::cuda::CUDAGuard(first.tensor.device());
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(err));
}

// nested_projection, project_and_pack: the epilogues' element type (check_projection_args admitted x's).
inline int projection_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kProjF32;
    case at::kDouble: return kProjF64;
    case at::kHalf: return kProjF16;
    case at::kBFloat16: return kProjBF16;
    default: TORCH_INTERNAL_ASSERT(false, "projection_dtype: ", t, " passed check_projection_args");
  }
  return -1;
}

// distance_histogram, index_ap: histograms of 4 queries per block in shared memory when they fit
// in 96 KiB and the device's per-block limit (one block per 4 queries), else global scratch rows
// for the warps of a bounded grid that strides over the queries: 8 blocks per SM, so the scratch
// is SMs x 32 rows whatever Q is (a row per query was 57 GB for a million queries at 1,024-4,096 bits).
struct MetricLaunch {
  int bins = 0;         // sum of (bits + 1): one query's histograms
  int label_words = 0;  // 0: class indices, else multi-hot words
  int warps = 4;
  int64_t max_blocks = std::numeric_limits<int32_t>::max();
  at::Tensor bits;      // the lengths, on the GPU
  at::Tensor scratch;   // undefined: shared memory
  uint64_t* scratch_ptr() const {
    return scratch.defined() ? reinterpret_cast<uint64_t*>(scratch.data_ptr<int64_t>()) : nullptr;
  }
};

inline const uint64_t* words_of(const at::Tensor& t) {
  return reinterpret_cast<const uint64_t*>(t.data_ptr<int64_t>());
}

inline MetricLaunch metric_launch(const char* op, const at::Tensor& q, const at::Tensor& q_labels,
                                  at::IntArrayRef bits) {
  MetricLaunch m;
  for (int64_t b : bits) m.bins += int(b) + 1;
  m.label_words = q_labels.dim() == 1 ? 0 : int(q_labels.size(1));
  m.bits = at::tensor(bits, q.options().device(at::kCPU)).to(q.device());
  // the kernels' static shared memory (length tables, per-warp slots) is under 8 KiB; sm_86/89
  // cards allow only 99 KiB per block
  int optin = 0;
  check_launch(op, cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, q.device().index()));
  const int64_t shared_limit = std::min<int64_t>(96 * 1024, int64_t(optin) - 8 * 1024);
  if (int64_t(m.warps) * m.bins * 8 > shared_limit) {
    int sms = 0;
    check_launch(op, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.device().index()));
    m.max_blocks = std::min<int64_t>(int64_t(sms) * 8, (q.size(0) + m.warps - 1) / m.warps);
    m.scratch = at::empty({m.max_blocks * m.warps, m.bins}, q.options());
  }
  return m;
}

}  // namespace glue
}  // namespace nhl
