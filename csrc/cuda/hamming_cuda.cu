// hamming: (L, Q, N) int32 distances for every length, all from one pass over the words
// (cumulative popcount per word, masked popcount where a length ends; see lengths.cuh).
// A thread owns one database code and QT queries of a tile: the database word is loaded once
// per word and reused QT times; query words are the same for the whole block (broadcast loads);
// writes are coalesced along N.
#include <algorithm>

#include "cuda/lengths.cuh"
#include "cuda/nhl_cuda.h"

namespace {

using nhl::cuda::Lengths;
using nhl::cuda::u64;
constexpr int kThreads = 256;
constexpr int kQueryTile = 8;
constexpr int64_t kMaxGridY = 65535;

template <int QT>
__global__ void hamming_kernel(const u64* __restrict__ q, const u64* __restrict__ db, int64_t nq, int64_t ndb,
                               int64_t words, Lengths len, int64_t first_length, int32_t* __restrict__ out) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= ndb) return;  // no collectives below
  const u64* db_row = db + n * words;
  const int64_t tiles = (nq + QT - 1) / QT;
  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const int64_t q0 = tile * QT;
    const int nvalid = nq - q0 < QT ? static_cast<int>(nq - q0) : QT;
    nhl::cuda::for_each_distance<QT>(q + q0 * words, nvalid, words, db_row, len, [&](int i, int l, int d) {
      out[((first_length + l) * nq + q0 + i) * ndb + n] = d;
    });
  }
}

}  // namespace

extern "C" cudaError_t nhl_hamming_cuda(const int64_t* q, const int64_t* db, int64_t nq, int64_t ndb, int64_t words,
                                        const int64_t* bits, int64_t nbits, int32_t* out, cudaStream_t stream) {
  if (nq <= 0 || ndb <= 0 || nbits <= 0) return cudaSuccess;
  if (bits[nbits - 1] > 64 * words) return cudaErrorInvalidValue;
  const int64_t blocks_x = (ndb + kThreads - 1) / kThreads;
  if (blocks_x > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks_x),
                  static_cast<unsigned>(std::min<int64_t>((nq + kQueryTile - 1) / kQueryTile, kMaxGridY)));
  // Lengths beyond kMaxLengths (rare: at most 64 * words of them) run as further groups.
  for (int64_t first = 0; first < nbits; first += nhl::cuda::kMaxLengths) {
    const int count = static_cast<int>(std::min<int64_t>(nhl::cuda::kMaxLengths, nbits - first));
    const Lengths len = nhl::cuda::make_lengths(bits, first, count);
    hamming_kernel<kQueryTile><<<grid, kThreads, 0, stream>>>(reinterpret_cast<const u64*>(q),
                                                              reinterpret_cast<const u64*>(db), nq, ndb, words, len,
                                                              first, out);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}
