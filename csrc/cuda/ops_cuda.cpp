// Thin CUDA glue: tensors -> raw pointers for the torch-free launchers of csrc/cuda/*_cuda.cu,
// registered as the CUDA kernels of the ops declared in csrc/nhl_ops.cpp.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/all.h>
#include <torch/library.h>

// --- metrics: distance_histogram, index_ap (csrc/cuda/distance_histogram_cuda.cu, index_ap_cuda.cu) ---
#include "cpu/metrics_common.h"

extern "C" cudaError_t nhl_distance_histogram_cuda(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n,
                                                   int words, const uint64_t* ql, const uint64_t* dl, int label_words,
                                                   const int64_t* bits, int L, int bins, int b1, int warps,
                                                   uint64_t* scratch, int64_t* tot, int64_t* rel, cudaStream_t stream);
extern "C" cudaError_t nhl_index_ap_cuda(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n, int words,
                                         const uint64_t* ql, const uint64_t* dl, int label_words, const int64_t* bits,
                                         int L, int bins, int warps, uint64_t k, uint64_t* scratch, double* ap,
                                         int64_t* hits, cudaStream_t stream);

namespace nhl {
namespace {

const uint64_t* words_of(const at::Tensor& t) { return reinterpret_cast<const uint64_t*>(t.data_ptr<int64_t>()); }

// Histograms of 4 queries per block in shared memory when they fit in 96 KiB, else one (Q, bins)
// scratch row per query in global memory.
struct MetricLaunch {
  int warps = 4;
  at::Tensor scratch;  // undefined: shared memory
  uint64_t* scratch_ptr() const {
    return scratch.defined() ? reinterpret_cast<uint64_t*>(scratch.data_ptr<int64_t>()) : nullptr;
  }
};

MetricLaunch metric_launch(const at::Tensor& q, int bins) {
  MetricLaunch m;
  if (int64_t(m.warps) * bins * 8 > 96 * 1024) m.scratch = at::empty({q.size(0), bins}, q.options());
  return m;
}

void check_cuda(cudaError_t e, const char* op) { TORCH_CHECK(e == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(e)); }

std::tuple<at::Tensor, at::Tensor> distance_histogram_cuda(const at::Tensor& q_in, const at::Tensor& db_in,
                                                           const at::Tensor& ql_in, const at::Tensor& dl_in,
                                                           at::IntArrayRef bits) {
  check_metric_inputs("distance_histogram", q_in, db_in, ql_in, dl_in, bits);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous(), ql = ql_in.contiguous(), dl = dl_in.contiguous();
  const MetricTables t = metric_tables(bits, ql);
  const int64_t nq = q.size(0), L = int64_t(bits.size()), b1 = bits.back() + 1;
  at::Tensor tot = at::empty({L, nq, b1}, q.options()), rel = at::empty({L, nq, b1}, q.options());
  const at::Tensor bits_dev = at::tensor(bits.vec(), q.options().device(at::kCPU)).to(q.device());
  const MetricLaunch m = metric_launch(q, t.bins);
  check_cuda(nhl_distance_histogram_cuda(words_of(q), words_of(db), nq, db.size(0), int(q.size(1)), words_of(ql),
                                         words_of(dl), t.label_words, bits_dev.data_ptr<int64_t>(), int(L), t.bins,
                                         int(b1), m.warps, m.scratch_ptr(), tot.data_ptr<int64_t>(),
                                         rel.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream()),
             "distance_histogram");
  return {tot, rel};
}

std::tuple<at::Tensor, at::Tensor> index_ap_cuda(const at::Tensor& q_in, const at::Tensor& db_in, const at::Tensor& ql_in,
                                                 const at::Tensor& dl_in, at::IntArrayRef bits,
                                                 std::optional<int64_t> topk) {
  check_metric_inputs("index_ap", q_in, db_in, ql_in, dl_in, bits);
  TORCH_CHECK(!topk.has_value() || (*topk >= 1 && *topk <= db_in.size(0)), "index_ap: topk must be in [1, N]");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous(), ql = ql_in.contiguous(), dl = dl_in.contiguous();
  const MetricTables t = metric_tables(bits, ql);
  const int64_t nq = q.size(0), L = int64_t(bits.size());
  at::Tensor ap = at::empty({L, nq}, q.options().dtype(at::kDouble)), hits = at::empty({L, nq}, q.options());
  const at::Tensor bits_dev = at::tensor(bits.vec(), q.options().device(at::kCPU)).to(q.device());
  const MetricLaunch m = metric_launch(q, t.bins);
  check_cuda(nhl_index_ap_cuda(words_of(q), words_of(db), nq, db.size(0), int(q.size(1)), words_of(ql), words_of(dl),
                               t.label_words, bits_dev.data_ptr<int64_t>(), int(L), t.bins, m.warps,
                               uint64_t(topk.value_or(db.size(0))), m.scratch_ptr(), ap.data_ptr<double>(),
                               hits.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream()),
             "index_ap");
  return {ap, hits};
}

}  // namespace

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) {
  m.impl("distance_histogram", &distance_histogram_cuda);
  m.impl("index_ap", &index_ap_cuda);
}

}  // namespace nhl
// --- end metrics ---
