// extern "C" launchers of the torch-free CUDA kernels (csrc/cuda/*.cu): raw pointers and a
// cudaStream_t in, a cudaError_t out. csrc/cuda/ops_cuda.cpp turns tensors into these calls.
// Packed codes are int64 words, LSB-first (bit j of a code is (word[j / 64] >> (j % 64)) & 1).
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

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

}  // extern "C"
