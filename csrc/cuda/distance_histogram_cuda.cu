// distance_histogram on CUDA: one warp per query counts every database item into shared-memory
// histograms of all lengths (one pass), then writes (L, Q, max(bits)+1) int64 tot / rel. Warps
// stride over the queries, so a global scratch (histograms too large for shared memory) needs
// one row per launched warp, not per query. The op's tensor glue is at the end.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/launchers.h"
#include "kernels/ap_warp.cuh"

namespace nhl {

__global__ void distance_histogram_kernel(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n, int words,
                                          const uint64_t* ql, const uint64_t* dl, int label_words, const int64_t* bits,
                                          int L, int bins, int b1, uint64_t* scratch, int64_t* tot, int64_t* rel) {
  extern __shared__ uint64_t smem[];
  __shared__ SharedLengths tables;
  const NestedLengths len = load_lengths(tables, bits, L);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t gwarp = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  uint64_t* hist = scratch ? scratch + gwarp * bins : smem + int64_t(warp) * bins;
  for (int64_t qi = gwarp; qi < nq; qi += int64_t(gridDim.x) * (blockDim.x / 32)) {
    warp_histogram(q, db, n, words, ql, dl, label_words, len, bins, qi, hist);
    for (int l = 0; l < L; ++l) {
      const int nb = int(bits[l]) + 1;
      for (int dd = lane; dd < b1; dd += 32) {
        const uint64_t v = dd < nb ? hist[len.offset[l] + dd] : 0;
        tot[(int64_t(l) * nq + qi) * b1 + dd] = int64_t(v & kTotalMask);
        rel[(int64_t(l) * nq + qi) * b1 + dd] = int64_t(v >> 32);
      }
    }
    __syncwarp();  // the next query's zeroing waits for every lane's reads
  }
}

}  // namespace nhl

// Arguments: cuda/launchers.h.
extern "C" cudaError_t nhl_distance_histogram_cuda(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n,
                                                   int words, const uint64_t* ql, const uint64_t* dl, int label_words,
                                                   const int64_t* bits, int L, int bins, int b1, int warps,
                                                   int64_t max_blocks, uint64_t* scratch, int64_t* tot, int64_t* rel,
                                                   cudaStream_t stream) {
  if (nq == 0) return cudaSuccess;
  if (warps < 1 || warps > 4 || max_blocks < 1) return cudaErrorInvalidValue;
  const size_t smem = scratch ? 0 : size_t(warps) * bins * sizeof(uint64_t);
  if (smem > 32 * 1024) {  // beyond the default 48 KiB (with the static tables): opt in
    const cudaError_t e = cudaFuncSetAttribute(nhl::distance_histogram_kernel,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
  }
  const int64_t blocks = std::min<int64_t>((nq + warps - 1) / warps, max_blocks);
  nhl::distance_histogram_kernel<<<dim3(unsigned(blocks)), dim3(32 * warps), smem, stream>>>(
      q, db, nq, n, words, ql, dl, label_words, bits, L, bins, b1, scratch, tot, rel);
  return cudaGetLastError();
}

#ifndef NHL_KERNELS_ONLY
// ------------------------------------------------------------------ glue: distance_histogram(Tensor q, Tensor db, Tensor q_labels, Tensor db_labels, int[] bits) -> (Tensor, Tensor)
#include <tuple>

#include "cuda/glue.h"

namespace nhl {

static_assert(kWarpMaxLengths >= kMetricMaxLengths, "check_metric_inputs admits more lengths than the kernel holds");

std::tuple<at::Tensor, at::Tensor> distance_histogram_cuda(const at::Tensor& q_in, const at::Tensor& db_in,
                                                           const at::Tensor& ql_in, const at::Tensor& dl_in,
                                                           at::IntArrayRef bits) {
  const char* op = "distance_histogram";
  const auto guard = glue::on_gpu(op, {{"q", q_in}, {"db", db_in}, {"q_labels", ql_in}, {"db_labels", dl_in}});
  check_metric_inputs(op, q_in, db_in, ql_in, dl_in, bits);
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous(), ql = ql_in.contiguous(), dl = dl_in.contiguous();
  const int64_t nq = q.size(0), L = int64_t(bits.size()), b1 = bits.back() + 1;
  at::Tensor tot = at::empty({L, nq, b1}, q.options()), rel = at::empty({L, nq, b1}, q.options());
  const glue::MetricLaunch m = glue::metric_launch(op, q, ql, bits);
  glue::check_launch(op, nhl_distance_histogram_cuda(
                             glue::words_of(q), glue::words_of(db), nq, db.size(0), int(q.size(1)), glue::words_of(ql),
                             glue::words_of(dl), m.label_words, m.bits.data_ptr<int64_t>(), int(L), m.bins, int(b1),
                             m.warps, m.max_blocks, m.scratch_ptr(), tot.data_ptr<int64_t>(), rel.data_ptr<int64_t>(),
                             glue::current_stream()));
  return {tot, rel};
}

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) { m.impl("distance_histogram", &distance_histogram_cuda); }

}  // namespace nhl
#endif  // NHL_KERNELS_ONLY
