// topk: the k smallest Hamming distances per (length, query), ascending, ties by lower
// database index: exactly reference.topk, deterministic, for any 1 <= k <= N.
//
// Distances are small integers (0..b), so selection is counting, not sorting. Per batch of
// queries and for all lengths at once (each pass below is one pass over the words):
//   0. bound:     an upper bound on d* per (query, length): the k-th smallest distance among the
//                 first kSample codes (a histogram of that prefix). Only codes at or below it can
//                 be among the k nearest, so pass 1 counts only those: a compare and a ballot
//                 per code instead of a match and an atomic (random codes: ~0.3% of them at k=100).
//   1. hist:      per (query, length) histogram of the distances <= the bound over the database
//                 (shared-memory histogram per block, warp-aggregated atomics, then global).
//   2. threshold: d* = smallest d with #(dist <= d) >= k; need = k - #(dist < d*) items at d*.
//                 The histogram below d* becomes the exclusive prefix (start of each distance).
//   3. count:     per database chunk (one warp each), #(dist < d*) and #(dist == d*).
//   4. scan:      exclusive scan over chunks -> each chunk's write offsets, in index order.
//   5. write:     items at d* go straight to their final slot (k - need + rank) when rank < need
//                 (the lowest indices win); items below d* go, in index order, to a buffer.
//   6. sort:      stable counting sort of the buffer by distance into slots [0, k - need).
// Memory is O(batch x (bins + chunks + k)), never Q x N; the batch is sized to a budget.
// The op's tensor glue is at the end.
#include <algorithm>

#include "cuda/lengths.cuh"
#include "cuda/launchers.h"

namespace {

using nhl::cuda::Lengths;
using nhl::cuda::u64;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kQueryTile = 8;                 // queries per block (database words reused 8 times)
constexpr int kChunkSteps = 64;               // a chunk is 64 warp steps of 32 codes
constexpr int64_t kChunk = 32 * kChunkSteps;  // database codes per chunk (one warp)
constexpr int64_t kMaxBatch = 4096;           // queries per batch: grid.y <= 512
constexpr size_t kBudget = size_t(256) << 20; // workspace target (a batch of 1 query may exceed it)
constexpr size_t kSharedHistBytes = 48 * 1024;
constexpr int kHistBlocks = 2048;             // hist grid: enough blocks, few global flushes
constexpr unsigned kFull = 0xffffffffu;
constexpr int64_t kSample = 65536;            // database prefix that bounds d* (pass 0)

struct Batch {
  const u64* q;  // first query of the batch
  int64_t nq;    // queries in the batch
  const u64* db;
  int64_t ndb, words, chunks, k;
  unsigned* hist;  // [nq][len.bins]; below d*: exclusive prefix (cursors of the sort)
  int* thr;        // [rows] d*; row r = query * len.n + length (before pass 2: the bound on d*)
  unsigned* need;  // [rows] items kept at d*
  unsigned* less;  // [rows][chunks] counts, then offsets, of dist < d*
  unsigned* eq;    // [rows][chunks] counts, then offsets, of dist == d*
  int* tmp_dist;   // [rows][k] items below d*, in index order
  int* tmp_idx;
  int32_t* dist;  // outputs (L_total, nq_total, k)
  int64_t* idx;
  int64_t nq_total, q_first, first_length;

  __device__ int64_t out_row(int64_t qi, int l) const {
    return ((first_length + l) * nq_total + q_first + qi) * k;
  }
};

__device__ __forceinline__ int tile_size(int64_t nq, int64_t q0) {
  return nq - q0 < kQueryTile ? static_cast<int>(nq - q0) : kQueryTile;
}

// One warp's walk over database chunk c, 32 codes (one per lane) per step, in index order:
// fn(i, l, d, step) for every (query i of the tile, length l) and the lane's code (d is
// meaningless where !step.valid, past the database end). Shared by the histogram, count and
// write passes so all three see the codes in the same order.
struct ChunkStep {
  int64_t n;        // the lane's database row
  bool valid;       // n < ndb
  unsigned active;  // the warp's valid lanes
};
template <class Fn>
__device__ __forceinline__ void for_each_chunk_distance(const Batch& b, const Lengths& len, int64_t c, int64_t q0,
                                                        int nvalid, Fn fn) {
  const int lane = threadIdx.x & 31;
  for (int s = 0; s < kChunkSteps; ++s) {
    const int64_t n = c * kChunk + s * 32 + lane;
    const bool valid = n < b.ndb;
    const unsigned active = __ballot_sync(kFull, valid);
    if (active == 0) break;
    const ChunkStep step{n, valid, active};
    nhl::cuda::for_each_distance<kQueryTile>(b.q + q0 * b.words, nvalid, b.words, valid ? b.db + n * b.words : nullptr,
                                             len, [&](int i, int l, int d) { fn(i, l, d, step); });
  }
}

// 1. Histogram of distances per (query, length); grid (x: chunk groups, y: query tiles).
// bounded: count only distances <= b.thr[row] (pass 0's bound); else every code (pass 0 itself).
__global__ void hist_kernel(Batch b, Lengths len, bool shared_hist, bool bounded) {
  extern __shared__ unsigned smem[];
  __shared__ int bound[kQueryTile * nhl::cuda::kMaxLengths];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t q0 = int64_t(blockIdx.y) * kQueryTile;
  const int nvalid = tile_size(b.nq, q0);
  unsigned* ghist = b.hist + q0 * len.bins;
  const int size = nvalid * len.bins;
  for (int i = threadIdx.x; i < nvalid * len.n; i += blockDim.x) bound[i] = bounded ? b.thr[q0 * len.n + i] : 1 << 30;
  if (shared_hist)
    for (int i = threadIdx.x; i < size; i += blockDim.x) smem[i] = 0;
  __syncthreads();
  unsigned* h = shared_hist ? smem : ghist;
  for (int64_t c = int64_t(blockIdx.x) * kWarps + warp; c < b.chunks; c += int64_t(gridDim.x) * kWarps) {
    for_each_chunk_distance(b, len, c, q0, nvalid, [&](int i, int l, int d, const ChunkStep& step) {
      const bool keep = step.valid && d <= bound[i * len.n + l];
      const unsigned kept = __ballot_sync(kFull, keep);
      if (keep) {  // one atomic per distinct bin among the kept lanes (distances cluster)
        const int bin = i * len.bins + len.bin_offset[l] + d;
        const unsigned peers = __match_any_sync(kept, bin);
        if (lane == __ffs(peers) - 1) atomicAdd(h + bin, static_cast<unsigned>(__popc(peers)));
      }
    });
  }
  if (shared_hist) {
    __syncthreads();
    for (int i = threadIdx.x; i < size; i += blockDim.x) {
      const unsigned v = smem[i];
      if (v) atomicAdd(ghist + i, v);
    }
  }
}

// 0. The bound per row from the histogram of the sample (>= k codes): the smallest d whose
// cumulative count reaches k. The whole database has at least k codes at or below it.
__global__ void bound_kernel(Batch b, Lengths len) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= b.nq * len.n) return;
  const int64_t qi = r / len.n;
  const int l = static_cast<int>(r % len.n);
  const unsigned* h = b.hist + qi * len.bins + len.bin_offset[l];
  int64_t below = 0;
  int t = len.bits[l];
  for (int d = 0; d <= len.bits[l]; ++d) {
    below += h[d];
    if (below >= b.k) {
      t = d;
      break;
    }
  }
  b.thr[r] = t;
}

// 2. Threshold d* and need per row; turns the histogram below d* into start offsets.
__global__ void threshold_kernel(Batch b, Lengths len) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= b.nq * len.n) return;
  const int64_t qi = r / len.n;
  const int l = static_cast<int>(r % len.n);
  unsigned* h = b.hist + qi * len.bins + len.bin_offset[l];
  int64_t below = 0;
  int t = len.bits[l];
  int64_t need = 0;
  for (int d = 0; d <= len.bits[l]; ++d) {  // the bins sum to ndb >= k: always breaks
    const unsigned c = h[d];
    if (below + c >= b.k) {
      t = d;
      need = b.k - below;
      break;
    }
    h[d] = static_cast<unsigned>(below);
    below += c;
  }
  b.thr[r] = t;
  b.need[r] = static_cast<unsigned>(need);
}

// 3. Per chunk (one warp), how many codes fall below and at d*, per (query, length).
__global__ void count_kernel(Batch b, Lengths len) {
  extern __shared__ unsigned smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t q0 = int64_t(blockIdx.y) * kQueryTile;
  const int nvalid = tile_size(b.nq, q0);
  const int slots = nvalid * len.n;  // slot = i * len.n + l; row = q0 * len.n + slot
  unsigned* cnt = smem + warp * (kQueryTile * len.n * 2);
  for (int64_t c = int64_t(blockIdx.x) * kWarps + warp; c < b.chunks; c += int64_t(gridDim.x) * kWarps) {
    for (int i = lane; i < 2 * slots; i += 32) cnt[i] = 0;
    __syncwarp();
    for_each_chunk_distance(b, len, c, q0, nvalid, [&](int i, int l, int d, const ChunkStep& step) {
      const int t = b.thr[(q0 + i) * len.n + l];
      const unsigned below = __ballot_sync(kFull, step.valid && d < t);
      const unsigned at = __ballot_sync(kFull, step.valid && d == t);
      if (lane == 0 && (below | at)) {
        cnt[(i * len.n + l) * 2] += __popc(below);
        cnt[(i * len.n + l) * 2 + 1] += __popc(at);
      }
    });
    __syncwarp();
    for (int i = lane; i < slots; i += 32) {
      const int64_t r = q0 * len.n + i;
      b.less[r * b.chunks + c] = cnt[2 * i];
      b.eq[r * b.chunks + c] = cnt[2 * i + 1];
    }
    __syncwarp();
  }
}

// 4. Exclusive scan over the chunks of one row (block x), of `less` (y = 0) or `eq` (y = 1).
__global__ void scan_kernel(Batch b) {
  __shared__ unsigned part[kThreads];
  unsigned* row = (blockIdx.y ? b.eq : b.less) + int64_t(blockIdx.x) * b.chunks;
  const int t = threadIdx.x;
  const int64_t seg = (b.chunks + kThreads - 1) / kThreads;
  const int64_t lo = t * seg, hi = lo + seg < b.chunks ? lo + seg : b.chunks;
  unsigned sum = 0;
  for (int64_t i = lo; i < hi; ++i) sum += row[i];
  part[t] = sum;
  __syncthreads();
  for (int off = 1; off < kThreads; off <<= 1) {  // Hillis-Steele inclusive scan of the partials
    const unsigned v = t >= off ? part[t - off] : 0u;
    __syncthreads();
    part[t] += v;
    __syncthreads();
  }
  unsigned run = part[t] - sum;
  for (int64_t i = lo; i < hi; ++i) {
    const unsigned v = row[i];
    row[i] = run;
    run += v;
  }
}

// 5. Writes the kept codes: at d* to their final slots, below d* to the row's buffer, both
// in index order (chunk offset + rank within the warp step).
__global__ void write_kernel(Batch b, Lengths len) {
  extern __shared__ unsigned smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const unsigned lower_lanes = (1u << lane) - 1u;
  const int64_t q0 = int64_t(blockIdx.y) * kQueryTile;
  const int nvalid = tile_size(b.nq, q0);
  const int slots = nvalid * len.n;
  unsigned* cnt = smem + warp * (kQueryTile * len.n * 2);
  for (int64_t c = int64_t(blockIdx.x) * kWarps + warp; c < b.chunks; c += int64_t(gridDim.x) * kWarps) {
    for (int i = lane; i < slots; i += 32) {
      const int64_t r = q0 * len.n + i;
      cnt[2 * i] = b.less[r * b.chunks + c];
      cnt[2 * i + 1] = b.eq[r * b.chunks + c];
    }
    __syncwarp();
    for_each_chunk_distance(b, len, c, q0, nvalid, [&](int i, int l, int d, const ChunkStep& step) {
      const int64_t r = (q0 + i) * len.n + l;
      const int t = b.thr[r];
      const bool is_below = step.valid && d < t, is_at = step.valid && d == t;
      const unsigned below = __ballot_sync(kFull, is_below);
      const unsigned at = __ballot_sync(kFull, is_at);
      if ((below | at) == 0u) return;  // warp-uniform
      unsigned* slot = cnt + (i * len.n + l) * 2;
      const unsigned below_off = slot[0], at_off = slot[1];
      __syncwarp();
      if (lane == 0) {
        slot[0] = below_off + __popc(below);
        slot[1] = at_off + __popc(at);
      }
      __syncwarp();
      if (is_below) {
        const int64_t pos = r * b.k + below_off + __popc(below & lower_lanes);
        b.tmp_dist[pos] = d;
        b.tmp_idx[pos] = static_cast<int>(step.n);
      }
      if (is_at) {
        const unsigned need = b.need[r];
        const unsigned rank = at_off + __popc(at & lower_lanes);
        if (rank < need) {
          const int64_t o = b.out_row(q0 + i, l) + (b.k - need) + rank;
          b.dist[o] = d;
          b.idx[o] = step.n;
        }
      }
    });
    __syncwarp();
  }
}

// 6. One warp per row: stable counting sort of the buffered items (index order) by distance,
// using the prefix-summed histogram as per-distance cursors.
__global__ void sort_kernel(Batch b, Lengths len) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const unsigned lower_lanes = (1u << lane) - 1u;
  const int64_t r = int64_t(blockIdx.x) * kWarps + warp;
  if (r >= b.nq * len.n) return;  // whole warp
  const int64_t qi = r / len.n;
  const int l = static_cast<int>(r % len.n);
  const int64_t m = b.k - b.need[r];
  unsigned* cursor = b.hist + qi * len.bins + len.bin_offset[l];
  const int* td = b.tmp_dist + r * b.k;
  const int* ti = b.tmp_idx + r * b.k;
  const int64_t orow = b.out_row(qi, l);
  for (int64_t base = 0; base < m; base += 32) {
    const int64_t e = base + lane;
    const bool valid = e < m;
    const int d = valid ? td[e] : -1;
    const unsigned peers = __match_any_sync(kFull, d);
    const int rank = __popc(peers & lower_lanes);
    const unsigned start = valid ? cursor[d] : 0u;
    __syncwarp();
    if (valid && rank == 0) cursor[d] = start + __popc(peers);
    __syncwarp();
    if (valid) {
      b.dist[orow + start + rank] = d;
      b.idx[orow + start + rank] = ti[e];
    }
  }
}

// ------------------------------------------------------------------ host side

size_t align_up(size_t x) { return (x + 255) & ~size_t(255); }

struct Plan {
  int64_t batch = 0, chunks = 0;
  int max_len = 0, max_bins = 0;
  size_t bytes = 0;
};

size_t layout_bytes(int64_t batch, int max_len, int max_bins, int64_t chunks, int64_t k) {
  const size_t rows = size_t(batch) * max_len;
  return align_up(size_t(batch) * max_bins * 4) + 2 * align_up(rows * 4) + 2 * align_up(rows * chunks * 4) +
         2 * align_up(rows * k * 4);
}

Plan make_plan(int64_t nq, int64_t ndb, const int64_t* bits, int64_t nbits, int64_t k) {
  Plan p;
  p.chunks = (ndb + kChunk - 1) / kChunk;
  for (int64_t first = 0; first < nbits; first += nhl::cuda::kMaxLengths) {
    const int count = static_cast<int>(std::min<int64_t>(nhl::cuda::kMaxLengths, nbits - first));
    const Lengths len = nhl::cuda::make_lengths(bits, first, count);
    p.max_len = std::max(p.max_len, count);
    p.max_bins = std::max(p.max_bins, len.bins);
  }
  const size_t per_query = layout_bytes(1, p.max_len, p.max_bins, p.chunks, k);
  p.batch = std::max<int64_t>(1, std::min<int64_t>({nq, kMaxBatch, static_cast<int64_t>(kBudget / per_query)}));
  p.bytes = layout_bytes(p.batch, p.max_len, p.max_bins, p.chunks, k);
  return p;
}

bool valid_sizes(int64_t nq, int64_t ndb, int64_t words, const int64_t* bits, int64_t nbits, int64_t k) {
  if (nq < 0 || words < 1 || nbits < 1 || ndb < 1 || ndb > 0x7fffffff || k < 1 || k > ndb) return false;
  for (int64_t l = 0; l < nbits; ++l)
    if (bits[l] < 1 || bits[l] > 64 * words || (l > 0 && bits[l] <= bits[l - 1])) return false;
  return true;
}

}  // namespace

extern "C" size_t nhl_topk_cuda_workspace_bytes(int64_t nq, int64_t ndb, int64_t words, const int64_t* bits,
                                                int64_t nbits, int64_t k) {
  if (nq == 0 || !valid_sizes(nq, ndb, words, bits, nbits, k)) return 0;
  return make_plan(nq, ndb, bits, nbits, k).bytes;
}

extern "C" cudaError_t nhl_topk_cuda(const int64_t* q, const int64_t* db, int64_t nq, int64_t ndb, int64_t words,
                                     const int64_t* bits, int64_t nbits, int64_t k, int32_t* dist, int64_t* idx,
                                     void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (!valid_sizes(nq, ndb, words, bits, nbits, k)) return cudaErrorInvalidValue;
  if (nq == 0) return cudaSuccess;
  const Plan plan = make_plan(nq, ndb, bits, nbits, k);
  if (workspace == nullptr || workspace_bytes < plan.bytes) return cudaErrorInvalidValue;

  // Carve the workspace (same layout as layout_bytes).
  char* ws = static_cast<char*>(workspace);
  const size_t rows = size_t(plan.batch) * plan.max_len;
  auto take = [&](size_t bytes) { char* p = ws; ws += align_up(bytes); return p; };
  Batch b{};
  b.hist = reinterpret_cast<unsigned*>(take(size_t(plan.batch) * plan.max_bins * 4));
  b.thr = reinterpret_cast<int*>(take(rows * 4));
  b.need = reinterpret_cast<unsigned*>(take(rows * 4));
  b.less = reinterpret_cast<unsigned*>(take(rows * plan.chunks * 4));
  b.eq = reinterpret_cast<unsigned*>(take(rows * plan.chunks * 4));
  b.tmp_dist = reinterpret_cast<int*>(take(rows * k * 4));
  b.tmp_idx = reinterpret_cast<int*>(take(rows * k * 4));
  b.db = reinterpret_cast<const u64*>(db);
  b.ndb = ndb;
  b.words = words;
  b.chunks = plan.chunks;
  b.k = k;
  b.dist = dist;
  b.idx = idx;
  b.nq_total = nq;

  const int64_t chunk_blocks = (plan.chunks + kWarps - 1) / kWarps;
  for (int64_t first = 0; first < nbits; first += nhl::cuda::kMaxLengths) {
    const int count = static_cast<int>(std::min<int64_t>(nhl::cuda::kMaxLengths, nbits - first));
    const Lengths len = nhl::cuda::make_lengths(bits, first, count);
    const size_t hist_smem = size_t(kQueryTile) * len.bins * 4;
    const bool shared_hist = hist_smem <= kSharedHistBytes;
    const size_t cnt_smem = size_t(kWarps) * kQueryTile * len.n * 2 * 4;
    b.first_length = first;
    for (int64_t q_first = 0; q_first < nq; q_first += plan.batch) {
      b.q_first = q_first;
      b.q = reinterpret_cast<const u64*>(q) + q_first * words;
      b.nq = std::min(plan.batch, nq - q_first);
      const int64_t tiles = (b.nq + kQueryTile - 1) / kQueryTile;
      const int64_t nrows = b.nq * len.n;
      cudaError_t err = cudaMemsetAsync(b.hist, 0, size_t(b.nq) * len.bins * 4, stream);
      if (err != cudaSuccess) return err;
      const dim3 hist_grid(static_cast<unsigned>(std::min<int64_t>(chunk_blocks, std::max<int64_t>(1, kHistBlocks / tiles))),
                           static_cast<unsigned>(tiles));
      const size_t smem = shared_hist ? hist_smem : 0;
      // pass 0 on a prefix of >= k codes, when the database is much longer than it
      const int64_t sample = std::min(ndb, std::max<int64_t>(k, kSample));
      const bool bounded = sample < ndb / 2;
      if (bounded) {
        Batch prefix = b;
        prefix.ndb = sample;
        prefix.chunks = (sample + kChunk - 1) / kChunk;
        const int64_t prefix_blocks = (prefix.chunks + kWarps - 1) / kWarps;
        const dim3 prefix_grid(static_cast<unsigned>(std::min<int64_t>(prefix_blocks, std::max<int64_t>(1, kHistBlocks / tiles))),
                               static_cast<unsigned>(tiles));
        hist_kernel<<<prefix_grid, kThreads, smem, stream>>>(prefix, len, shared_hist, false);
        bound_kernel<<<static_cast<unsigned>((nrows + kThreads - 1) / kThreads), kThreads, 0, stream>>>(b, len);
        err = cudaMemsetAsync(b.hist, 0, size_t(b.nq) * len.bins * 4, stream);
        if (err != cudaSuccess) return err;
      }
      hist_kernel<<<hist_grid, kThreads, smem, stream>>>(b, len, shared_hist, bounded);
      threshold_kernel<<<static_cast<unsigned>((nrows + kThreads - 1) / kThreads), kThreads, 0, stream>>>(b, len);
      const dim3 chunk_grid(static_cast<unsigned>(chunk_blocks), static_cast<unsigned>(tiles));
      count_kernel<<<chunk_grid, kThreads, cnt_smem, stream>>>(b, len);
      scan_kernel<<<dim3(static_cast<unsigned>(nrows), 2), kThreads, 0, stream>>>(b);
      write_kernel<<<chunk_grid, kThreads, cnt_smem, stream>>>(b, len);
      sort_kernel<<<static_cast<unsigned>((nrows + kWarps - 1) / kWarps), kThreads, 0, stream>>>(b, len);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

#ifndef NHL_KERNELS_ONLY
// ------------------------------------------------------------------ glue: topk(Tensor q, Tensor db, int k, int[] bits) -> (Tensor, Tensor)
#include <tuple>

#include "cuda/glue.h"

namespace nhl {

std::tuple<at::Tensor, at::Tensor> topk_cuda(const at::Tensor& q_in, const at::Tensor& db_in, int64_t k,
                                             at::IntArrayRef bits) {
  const auto guard = glue::on_gpu("topk", {{"q", q_in}, {"db", db_in}});
  check_query_database("topk", q_in, db_in, bits);
  const int64_t nq = q_in.size(0), ndb = db_in.size(0), words = q_in.size(1);
  check_k("topk", "k", k, ndb);
  TORCH_CHECK_VALUE(ndb <= std::numeric_limits<int32_t>::max(),
                    "topk: the CUDA kernel supports N <= 2^31 - 1 database codes, got db of shape ", db_in.sizes());
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous();
  const int64_t nbits = static_cast<int64_t>(bits.size());
  at::Tensor dist = at::empty({nbits, nq, k}, q.options().dtype(at::kInt));
  at::Tensor idx = at::empty({nbits, nq, k}, q.options().dtype(at::kLong));
  if (nq == 0) return {dist, idx};
  const size_t ws_bytes = nhl_topk_cuda_workspace_bytes(nq, ndb, words, bits.data(), nbits, k);
  at::Tensor workspace = at::empty({static_cast<int64_t>(ws_bytes)}, q.options().dtype(at::kByte));
  glue::check_launch("topk", nhl_topk_cuda(q.data_ptr<int64_t>(), db.data_ptr<int64_t>(), nq, ndb, words, bits.data(),
                                           nbits, k, dist.data_ptr<int32_t>(), idx.data_ptr<int64_t>(),
                                           workspace.data_ptr(), ws_bytes, glue::current_stream()));
  return {dist, idx};
}

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) { m.impl("topk", &topk_cuda); }

}  // namespace nhl
#endif  // NHL_KERNELS_ONLY
