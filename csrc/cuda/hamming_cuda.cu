// hamming: (L, Q, N) int32 distances for every length, all from one pass over the words
// (cumulative popcount per word, masked popcount where a length ends; see lengths.cuh).
// A thread owns kRows consecutive database codes and QT queries of a tile: each database word is
// loaded once per word and reused QT times; query words are the same for the whole block
// (broadcast loads). The kernel is bound by writing the output (4 bytes per pair and length), so
// a thread stores its kRows distances of a (query, length) as one 16-byte store when the rows
// are 16-byte aligned (N % 4 == 0), coalesced along N: a quarter of the store instructions of one
// code per thread. The op's tensor glue is at the end.
#include <algorithm>

#include "cuda/lengths.cuh"
#include "cuda/launchers.h"

namespace {

using nhl::cuda::Lengths;
using nhl::cuda::u64;
constexpr int kThreads = 256;
constexpr int kQueryTile = 8;
constexpr int kRows = 4;  // database codes per thread: one int4 store per (query, length)
constexpr int64_t kMaxGridY = 65535;

template <int QT>
__global__ void hamming_kernel(const u64* __restrict__ q, const u64* __restrict__ db, int64_t nq, int64_t ndb,
                               int64_t words, Lengths len, int64_t first_length, bool vector_stores,
                               int32_t* __restrict__ out) {
  const int64_t n0 = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kRows;
  if (n0 >= ndb) return;  // no collectives below
  const int rows = ndb - n0 < kRows ? static_cast<int>(ndb - n0) : kRows;
  const int64_t tiles = (nq + QT - 1) / QT;
  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const int64_t q0 = tile * QT;
    const int nvalid = nq - q0 < QT ? static_cast<int>(nq - q0) : QT;
    int acc[QT][kRows];
#pragma unroll
    for (int i = 0; i < QT; ++i)
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[i][r] = 0;
    int lp = 0;
    for (int w = 0; w < len.words; ++w) {
      u64 y[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) y[r] = r < rows ? db[(n0 + r) * words + w] : 0ull;
      int le = lp;
      while (le < len.n && len.last_word[le] == w) ++le;
#pragma unroll
      for (int i = 0; i < QT; ++i) {
        if (i >= nvalid) break;
        const u64 x = q[(q0 + i) * words + w];
        for (int l = lp; l < le; ++l) {
          int d[kRows];
#pragma unroll
          for (int r = 0; r < kRows; ++r) d[r] = acc[i][r] + __popcll((x ^ y[r]) & len.mask[l]);
          int32_t* dst = out + ((first_length + l) * nq + q0 + i) * ndb + n0;
          if (vector_stores) {
            *reinterpret_cast<int4*>(dst) = make_int4(d[0], d[1], d[2], d[3]);
          } else {
#pragma unroll
            for (int r = 0; r < kRows; ++r)
              if (r < rows) dst[r] = d[r];
          }
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[i][r] += __popcll(x ^ y[r]);
      }
      lp = le;
    }
  }
}

}  // namespace

extern "C" cudaError_t nhl_hamming_cuda(const int64_t* q, const int64_t* db, int64_t nq, int64_t ndb, int64_t words,
                                        const int64_t* bits, int64_t nbits, int32_t* out, cudaStream_t stream) {
  if (nq <= 0 || ndb <= 0 || nbits <= 0) return cudaSuccess;
  if (bits[nbits - 1] > 64 * words) return cudaErrorInvalidValue;
  const int64_t per_block = int64_t(kThreads) * kRows;
  const int64_t blocks_x = (ndb + per_block - 1) / per_block;
  // every row of the output starts 16-byte aligned when N % 4 == 0 (and the buffer is)
  const bool vector_stores = ndb % kRows == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (blocks_x > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks_x),
                  static_cast<unsigned>(std::min<int64_t>((nq + kQueryTile - 1) / kQueryTile, kMaxGridY)));
  // Lengths beyond kMaxLengths (rare: at most 64 * words of them) run as further groups.
  for (int64_t first = 0; first < nbits; first += nhl::cuda::kMaxLengths) {
    const int count = static_cast<int>(std::min<int64_t>(nhl::cuda::kMaxLengths, nbits - first));
    const Lengths len = nhl::cuda::make_lengths(bits, first, count);
    hamming_kernel<kQueryTile><<<grid, kThreads, 0, stream>>>(reinterpret_cast<const u64*>(q),
                                                              reinterpret_cast<const u64*>(db), nq, ndb, words, len,
                                                              first, vector_stores, out);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

#ifndef NHL_KERNELS_ONLY
// ------------------------------------------------------------------ glue: hamming(Tensor q, Tensor db, int[] bits) -> Tensor
#include "cuda/glue.h"

namespace nhl {

at::Tensor hamming_cuda(const at::Tensor& q_in, const at::Tensor& db_in, at::IntArrayRef bits) {
  const auto guard = glue::on_gpu("hamming", {{"q", q_in}, {"db", db_in}});
  check_query_database("hamming", q_in, db_in, bits);
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous();
  const int64_t nbits = static_cast<int64_t>(bits.size());
  at::Tensor out = at::empty({nbits, q.size(0), db.size(0)}, q.options().dtype(at::kInt));
  glue::check_launch("hamming", nhl_hamming_cuda(q.data_ptr<int64_t>(), db.data_ptr<int64_t>(), q.size(0), db.size(0),
                                                 q.size(1), bits.data(), nbits, out.data_ptr<int32_t>(),
                                                 glue::current_stream()));
  return out;
}

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) { m.impl("hamming", &hamming_cuda); }

}  // namespace nhl
#endif  // NHL_KERNELS_ONLY
