// Torch-free launchers of the metric kernels (distance_histogram_cuda.cu, index_ap_cuda.cu):
// one warp per query; bits is a DEVICE array of L strictly increasing lengths; bins = sum of
// (bits + 1); label_words 0 means class indices, else multi-hot words. scratch: nullptr keeps the
// histograms in shared memory (warps * bins * 8 bytes per block), else a (max_blocks * warps, bins)
// uint64 buffer in global memory, and at most max_blocks blocks run (their warps stride over the
// queries). warps is 1..4. Each returns the launch error, if any.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

extern "C" {
// tot / rel (L, nq, b1) int64, b1 = max(bits) + 1: items / relevant items at each distance.
cudaError_t nhl_distance_histogram_cuda(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n, int words,
                                        const uint64_t* ql, const uint64_t* dl, int label_words, const int64_t* bits,
                                        int L, int bins, int b1, int warps, int64_t max_blocks, uint64_t* scratch,
                                        int64_t* tot, int64_t* rel, cudaStream_t stream);
// ap (L, nq) float64 and hits (L, nq) int64 over the first k of the (distance, index) ranking.
cudaError_t nhl_index_ap_cuda(const uint64_t* q, const uint64_t* db, int64_t nq, int64_t n, int words,
                              const uint64_t* ql, const uint64_t* dl, int label_words, const int64_t* bits, int L,
                              int bins, int warps, int64_t max_blocks, uint64_t k, uint64_t* scratch, double* ap,
                              int64_t* hits, cudaStream_t stream);
}
