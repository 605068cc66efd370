// extern "C" launchers of the torch-free CUDA kernels, one per csrc/cuda/<op>_cuda.cu: raw pointers
// and a cudaStream_t in, a cudaError_t out. Each .cu's own glue block (#ifndef NHL_KERNELS_ONLY)
// turns tensors into its launcher call; the host-thread simulator's drivers (tests/cuda_sim) call
// them directly. Packed codes are int64 words, LSB-first (bit j of a code is
// (word[j / 64] >> (j % 64)) & 1).
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace nhl {
// Element type of the projection operands (nested_projection, project_and_pack epilogues).
enum ProjectionDtype : int { kProjF32 = 0, kProjF64 = 1, kProjF16 = 2, kProjBF16 = 3 };
}  // namespace nhl

extern "C" {

// --- engine: pack, unpack, hamming, topk ---

// Element type of the codes given to nhl_pack_cuda.
enum NhlCodeType { NHL_CODES_BOOL = 0, NHL_CODES_F16 = 1, NHL_CODES_BF16 = 2, NHL_CODES_F32 = 3, NHL_CODES_F64 = 4 };

// codes (n, bits) row-major of `code_type` -> out (n, ceil(bits/64)); bit set where code > 0.
cudaError_t nhl_pack_cuda(const void* codes, int code_type, int64_t n, int64_t bits, int64_t* out,
                          cudaStream_t stream);

// packed (n, words) -> out (n, bits) float32 of +-1.
cudaError_t nhl_unpack_cuda(const int64_t* packed, int64_t n, int64_t words, int64_t bits, float* out,
                            cudaStream_t stream);

// out (nbits, nq, ndb) int32: distances over the first bits[l] bits, all lengths in one pass over
// the words. bits: host array, strictly increasing, in [1, 64 * words].
cudaError_t nhl_hamming_cuda(const int64_t* q, const int64_t* db, int64_t nq, int64_t ndb, int64_t words,
                             const int64_t* bits, int64_t nbits, int32_t* out, cudaStream_t stream);

// Device workspace (bytes) nhl_topk_cuda needs for these sizes (bounded: it batches queries).
size_t nhl_topk_cuda_workspace_bytes(int64_t nq, int64_t ndb, int64_t words, const int64_t* bits,
                                     int64_t nbits, int64_t k);

// dist (nbits, nq, k) int32, idx (nbits, nq, k) int64: the k smallest distances per query and
// length, ascending, ties by lower database index. Requires 1 <= k <= ndb <= INT32_MAX.
cudaError_t nhl_topk_cuda(const int64_t* q, const int64_t* db, int64_t nq, int64_t ndb, int64_t words,
                          const int64_t* bits, int64_t nbits, int64_t k, int32_t* dist, int64_t* idx,
                          void* workspace, size_t workspace_bytes, cudaStream_t stream);

// --- layer: the epilogues after the cuBLAS GEMM (nested_projection, project_and_pack); dtype: nhl::ProjectionDtype ---

// z (rows x cols, row-major) holds x W^T on entry; on exit z = x W^T + b and u = relax(z).
cudaError_t nhl_nested_projection_epilogue(void* z, void* u, const void* bias, int64_t rows, int64_t cols,
                                           int relax, int dtype, cudaStream_t stream);

// z (rows x cols) holds x W^T; out (rows x ceil(cols/64)) gets bit j of word j/64 set where z + b > 0.
cudaError_t nhl_sign_pack_epilogue(const void* z, const void* bias, int64_t rows, int64_t cols, uint64_t* out,
                                   int dtype, cudaStream_t stream);

// --- metrics: distance_histogram, index_ap ---
// One warp per query; bits is a DEVICE array of L strictly increasing lengths; bins = sum of
// (bits + 1); label_words 0 means class indices, else multi-hot words. scratch: nullptr keeps the
// histograms in shared memory (warps * bins * 8 bytes per block), else a (max_blocks * warps, bins)
// uint64 buffer in global memory, and at most max_blocks blocks run (their warps stride over the
// queries). warps is 1..4.

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

}  // extern "C"
