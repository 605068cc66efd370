// index_ap on CUDA: one warp per query. Pass 1 builds the histograms (kernels/ap_warp.cuh) and
// turns them into counts below each bin; pass 2 walks the database in index order, 32 items at a
// time: __match_any_sync groups the lanes whose items share a distance bin, so an item's rank is
// the bin's running count + the equal-bin lanes before it (exactly the stable-sort order), and
// the group's first lane advances the bin counter. All lengths in the same two passes.
// The op's tensor glue is at the end.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/launchers.h"
#include "kernels/ap_warp.cuh"

namespace nhl {

// One query's AP by one warp (hist: its bins words; cut/acc/hits: the warp's per-length slots).
__device__ void index_ap_query(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n, int words,
                               const uint64_t* ql, const uint64_t* dl, int label_words, const NestedLengths& len,
                               int bins, uint64_t k, int64_t qi, uint64_t* hist, int* cut, double* acc,
                               unsigned long long* hits, double* ap, int64_t* hits_out) {
  const int lane = threadIdx.x & 31;
  const int L = len.count;

  warp_histogram(q, db, n, words, ql, dl, label_words, len, bins, qi, hist);
  for (int l = lane; l < L; l += 32) {
    const int end = l + 1 < L ? len.offset[l + 1] : bins;
    uint64_t rel_total = 0;
    cut[l] = histogram_to_base(hist + len.offset[l], end - len.offset[l], k, &rel_total);
    acc[l] = 0.0;
    hits[l] = 0;
  }
  __syncwarp();

  const unsigned below_me = (1u << lane) - 1;
  for_each_warp_item(q, db, n, words, ql, dl, label_words, len, qi,
                     [&](int64_t, bool valid, const int* d, bool rel, unsigned rel_lanes) {
    for (int l = 0; l < L; ++l) {
      const bool counted = valid && d[l] <= cut[l];
      // with a top-k window most steps of a long code have no item inside it: nothing to rank
      if (__ballot_sync(0xffffffffu, counted) == 0u) continue;
      // lanes outside the top-k window get a key of their own so they never join a group
      const int key = counted ? len.offset[l] + d[l] : -1 - lane;
      const unsigned peers = __match_any_sync(0xffffffffu, key);
      uint64_t base = 0;
      double precision = 0.0;  // > 0 exactly for the hits
      if (counted) {
        base = hist[key];  // N_<d + items of this bin in earlier chunks | R_<d + ... << 32
        const uint64_t rank = (base & kTotalMask) + __popc(peers & below_me) + 1;
        if (rel && rank <= k) {
          const uint64_t rel_rank = (base >> 32) + __popc(peers & rel_lanes & below_me) + 1;
          precision = double(rel_rank) / double(rank);
        }
      }
      // warp sums, not shared-memory atomics (64-bit ones are compare-and-swap loops)
      const unsigned hit_lanes = __ballot_sync(0xffffffffu, precision > 0.0);
      if (hit_lanes) {
        for (int off = 16; off > 0; off >>= 1) precision += __shfl_xor_sync(0xffffffffu, precision, off);
        if (lane == 0) {
          acc[l] += precision;
          hits[l] += __popc(hit_lanes);
        }
      }
      __syncwarp();
      if (counted && lane == __ffs(peers) - 1)
        hist[key] = base + __popc(peers) + (uint64_t(__popc(peers & rel_lanes)) << 32);
      __syncwarp();
    }
  });
  for (int l = lane; l < L; l += 32) {
    ap[int64_t(l) * nq + qi] = hits[l] ? acc[l] / double(hits[l]) : 0.0;
    hits_out[int64_t(l) * nq + qi] = int64_t(hits[l]);
  }
  __syncwarp();  // the next query's zeroing waits for every lane's reads
}

__global__ void index_ap_kernel(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n, int words,
                                const uint64_t* ql, const uint64_t* dl, int label_words, const int64_t* bits, int L,
                                int bins, uint64_t k, uint64_t* scratch, double* ap, int64_t* hits_out) {
  extern __shared__ uint64_t smem[];
  __shared__ SharedLengths tables;
  __shared__ int cut_all[4][kWarpMaxLengths];
  __shared__ double acc_all[4][kWarpMaxLengths];
  __shared__ unsigned long long hits_all[4][kWarpMaxLengths];
  const NestedLengths len = load_lengths(tables, bits, L);
  const int warp = threadIdx.x / 32;
  const int64_t gwarp = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  uint64_t* hist = scratch ? scratch + gwarp * bins : smem + int64_t(warp) * bins;
  int* cut = cut_all[warp];
  double* acc = acc_all[warp];
  unsigned long long* hits = hits_all[warp];
  for (int64_t qi = gwarp; qi < nq; qi += int64_t(gridDim.x) * (blockDim.x / 32))
    index_ap_query(q, db, nq, n, words, ql, dl, label_words, len, bins, k, qi, hist, cut, acc, hits, ap, hits_out);
}

}  // namespace nhl

// Arguments: cuda/launchers.h.
extern "C" cudaError_t nhl_index_ap_cuda(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n, int words,
                                         const uint64_t* ql, const uint64_t* dl, int label_words, const int64_t* bits,
                                         int L, int bins, int warps, int64_t max_blocks, uint64_t k, uint64_t* scratch,
                                         double* ap, int64_t* hits, cudaStream_t stream) {
  if (nq == 0) return cudaSuccess;
  if (warps < 1 || warps > 4 || max_blocks < 1) return cudaErrorInvalidValue;
  const size_t smem = scratch ? 0 : size_t(warps) * bins * sizeof(uint64_t);
  if (smem > 32 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(nhl::index_ap_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
  }
  const int64_t blocks = std::min<int64_t>((nq + warps - 1) / warps, max_blocks);
  nhl::index_ap_kernel<<<dim3(unsigned(blocks)), dim3(32 * warps), smem, stream>>>(
      q, db, nq, n, words, ql, dl, label_words, bits, L, bins, k, scratch, ap, hits);
  return cudaGetLastError();
}

#ifndef NHL_KERNELS_ONLY
// ------------------------------------------------------------------ glue: index_ap(Tensor q, Tensor db, Tensor q_labels, Tensor db_labels, int[] bits, int? topk) -> (Tensor, Tensor)
#include <optional>
#include <tuple>

#include "cuda/glue.h"

namespace nhl {

static_assert(kWarpMaxLengths >= kMetricMaxLengths, "check_metric_inputs admits more lengths than the kernel holds");

std::tuple<at::Tensor, at::Tensor> index_ap_cuda(const at::Tensor& q_in, const at::Tensor& db_in, const at::Tensor& ql_in,
                                                 const at::Tensor& dl_in, at::IntArrayRef bits,
                                                 std::optional<int64_t> topk) {
  const char* op = "index_ap";
  const auto guard = glue::on_gpu(op, {{"q", q_in}, {"db", db_in}, {"q_labels", ql_in}, {"db_labels", dl_in}});
  check_metric_inputs(op, q_in, db_in, ql_in, dl_in, bits);
  if (topk) check_k(op, "topk", *topk, db_in.size(0));
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous(), ql = ql_in.contiguous(), dl = dl_in.contiguous();
  const int64_t nq = q.size(0), L = int64_t(bits.size());
  at::Tensor ap = at::empty({L, nq}, q.options().dtype(at::kDouble)), hits = at::empty({L, nq}, q.options());
  const glue::MetricLaunch m = glue::metric_launch(op, q, ql, bits);
  glue::check_launch(op, nhl_index_ap_cuda(glue::words_of(q), glue::words_of(db), nq, db.size(0), int(q.size(1)),
                                           glue::words_of(ql), glue::words_of(dl), m.label_words,
                                           m.bits.data_ptr<int64_t>(), int(L), m.bins, m.warps, m.max_blocks,
                                           uint64_t(topk.value_or(db.size(0))), m.scratch_ptr(), ap.data_ptr<double>(),
                                           hits.data_ptr<int64_t>(), glue::current_stream()));
  return {ap, hits};
}

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) { m.impl("index_ap", &index_ap_cuda); }

}  // namespace nhl
#endif  // NHL_KERNELS_ONLY
