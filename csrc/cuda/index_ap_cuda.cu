// index_ap on CUDA: one warp per query. Pass 1 builds the histograms (kernels/ap_warp.cuh) and
// turns them into counts below each bin; pass 2 walks the database in index order, 32 items at a
// time: __match_any_sync groups the lanes whose items share a distance bin, so an item's rank is
// the bin's running count + the equal-bin lanes before it (exactly the stable-sort order), and
// the group's first lane advances the bin counter. All lengths in the same two passes.
#include <cuda_runtime.h>

#include "kernels/ap_warp.cuh"

namespace nhl {

__global__ void index_ap_kernel(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n, int words,
                                const uint64_t* ql, const uint64_t* dl, int label_words, const int64_t* bits, int L,
                                int bins, uint64_t k, uint64_t* scratch, double* ap, int64_t* hits_out) {
  extern __shared__ uint64_t smem[];
  __shared__ SharedLengths tables;
  __shared__ int cut_all[4][kWarpMaxLengths];
  __shared__ double acc_all[4][kWarpMaxLengths];
  __shared__ unsigned long long hits_all[4][kWarpMaxLengths];
  const NestedLengths len = load_lengths(tables, bits, L);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t qi = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (qi >= nq) return;
  uint64_t* hist = scratch ? scratch + qi * bins : smem + int64_t(warp) * bins;
  int* cut = cut_all[warp];
  double* acc = acc_all[warp];
  unsigned long long* hits = hits_all[warp];

  warp_histogram(q, db, n, words, ql, dl, label_words, len, bins, qi, hist);
  for (int l = lane; l < L; l += 32) {
    const int end = l + 1 < L ? len.offset[l + 1] : bins;
    uint64_t rel_total = 0;
    cut[l] = histogram_to_base(hist + len.offset[l], end - len.offset[l], k, &rel_total);
    acc[l] = 0.0;
    hits[l] = 0;
  }
  __syncwarp();

  const int ls = label_words == 0 ? 1 : label_words;
  const uint64_t* qc = q + qi * words;
  const uint64_t* qlab = ql + qi * ls;
  const unsigned below_me = (1u << lane) - 1;
  int d[kWarpMaxLengths];
  for (int64_t i0 = 0; i0 < n; i0 += 32) {
    const int64_t i = i0 + lane;
    const bool valid = i < n;
    bool rel = false;
    if (valid) {
      nested_distances(qc, db + i * words, len, d);
      rel = relevant(qlab, dl + i * ls, label_words);
    }
    const unsigned rel_lanes = __ballot_sync(0xffffffffu, rel);
    for (int l = 0; l < L; ++l) {
      const bool counted = valid && d[l] <= cut[l];
      // lanes outside the top-k window get a key of their own so they never join a group
      const int key = counted ? len.offset[l] + d[l] : -1 - lane;
      const unsigned peers = __match_any_sync(0xffffffffu, key);
      uint64_t base = 0;
      if (counted) {
        base = hist[key];  // N_<d + items of this bin in earlier chunks | R_<d + ... << 32
        const uint64_t rank = (base & kTotalMask) + __popc(peers & below_me) + 1;
        if (rel && rank <= k) {
          const uint64_t rel_rank = (base >> 32) + __popc(peers & rel_lanes & below_me) + 1;
          atomicAdd(acc + l, double(rel_rank) / double(rank));
          atomicAdd(hits + l, 1ull);
        }
      }
      __syncwarp();
      if (counted && lane == __ffs(peers) - 1)
        hist[key] = base + __popc(peers) + (uint64_t(__popc(peers & rel_lanes)) << 32);
      __syncwarp();
    }
  }
  for (int l = lane; l < L; l += 32) {
    ap[int64_t(l) * nq + qi] = hits[l] ? acc[l] / double(hits[l]) : 0.0;
    hits_out[int64_t(l) * nq + qi] = int64_t(hits[l]);
  }
}

}  // namespace nhl

// warps <= 4 queries per block; scratch as in nhl_distance_histogram_cuda.
extern "C" cudaError_t nhl_index_ap_cuda(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n, int words,
                                         const uint64_t* ql, const uint64_t* dl, int label_words, const int64_t* bits,
                                         int L, int bins, int warps, uint64_t k, uint64_t* scratch, double* ap,
                                         int64_t* hits, cudaStream_t stream) {
  if (nq == 0) return cudaSuccess;
  if (warps < 1 || warps > 4) return cudaErrorInvalidValue;
  const size_t smem = scratch ? 0 : size_t(warps) * bins * sizeof(uint64_t);
  if (smem > 32 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(nhl::index_ap_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
  }
  const int64_t blocks = (nq + warps - 1) / warps;
  nhl::index_ap_kernel<<<dim3(unsigned(blocks)), dim3(32 * warps), smem, stream>>>(
      q, db, nq, n, words, ql, dl, label_words, bits, L, bins, k, scratch, ap, hits);
  return cudaGetLastError();
}
