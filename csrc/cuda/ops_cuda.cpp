// Thin glue from tensors to the torch-free CUDA launchers (csrc/cuda/nhl_cuda.h):
// checks, output allocation, the current stream, TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m).
// Each op family has its own delimited block (and its own TORCH_LIBRARY_IMPL); append new
// blocks at the end.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // = at::cuda::getCurrentCUDAStream, without the cuBLAS/cuSPARSE headers
#include <torch/all.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "cuda/nhl_cuda.h"

// ------------------------------------------------------------------ engine: pack, unpack, hamming, topk
namespace nhl {
namespace engine_cuda {

void check_cuda_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got a tensor on ", t.device(),
                    " (all inputs of a CUDA op must be on the same GPU)");
}

void check_packed(const at::Tensor& t, const char* op, const char* name) {
  check_cuda_tensor(t, op, name);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, op, ": ", name, " must be int64 packed codes, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D (N, W), got ", t.sizes());
}

void check_pair(const at::Tensor& q, const at::Tensor& db, const char* op) {
  check_packed(q, op, "q");
  check_packed(db, op, "db");
  TORCH_CHECK_VALUE(q.device() == db.device(), op, ": q and db must be on the same device, got ", q.device(),
                    " and ", db.device());
  TORCH_CHECK_VALUE(q.size(1) == db.size(1), op, ": q and db must have the same number of words, got ", q.sizes(),
                    " and ", db.sizes());
  TORCH_CHECK_VALUE(q.size(1) >= 1, op, ": packed codes need at least one word");
}

void check_bits(at::IntArrayRef bits, int64_t words, const char* op) {
  TORCH_CHECK_VALUE(!bits.empty(), op, ": bits must not be empty");
  for (size_t l = 0; l < bits.size(); ++l) {
    TORCH_CHECK_VALUE(bits[l] >= 1 && bits[l] <= 64 * words, op, ": bits=", bits, " must be in [1, ", 64 * words,
                      "] (64 x ", words, " words)");
    TORCH_CHECK_VALUE(l == 0 || bits[l] > bits[l - 1], op, ": bits=", bits, " must be strictly increasing");
  }
}

at::Tensor pack_cuda(const at::Tensor& codes_in) {
  check_cuda_tensor(codes_in, "pack", "codes");
  TORCH_CHECK_VALUE(codes_in.dim() == 2, "pack: codes must be 2-D (N, bits), got ", codes_in.sizes());
  int code_type;
  switch (codes_in.scalar_type()) {
    case at::kBool: code_type = NHL_CODES_BOOL; break;
    case at::kHalf: code_type = NHL_CODES_F16; break;
    case at::kBFloat16: code_type = NHL_CODES_BF16; break;
    case at::kFloat: code_type = NHL_CODES_F32; break;
    case at::kDouble: code_type = NHL_CODES_F64; break;
    default: TORCH_CHECK_TYPE(false, "pack: codes must be float16/bfloat16/float32/float64 or bool, got ",
                              codes_in.scalar_type());
  }
  const c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous();
  const int64_t n = codes.size(0), bits = codes.size(1);
  at::Tensor out = at::empty({n, (bits + 63) / 64}, codes.options().dtype(at::kLong));
  C10_CUDA_CHECK(nhl_pack_cuda(codes.data_ptr(), code_type, n, bits, out.data_ptr<int64_t>(),
                               c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor unpack_cuda(const at::Tensor& packed_in, int64_t bits) {
  check_packed(packed_in, "unpack", "packed");
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 64 * packed_in.size(1), "unpack: bits=", bits, " must be in [1, ",
                    64 * packed_in.size(1), "]");
  const c10::cuda::CUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor out = at::empty({packed.size(0), bits}, packed.options().dtype(at::kFloat));
  C10_CUDA_CHECK(nhl_unpack_cuda(packed.data_ptr<int64_t>(), packed.size(0), packed.size(1), bits,
                                 out.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor hamming_cuda(const at::Tensor& q_in, const at::Tensor& db_in, at::IntArrayRef bits) {
  check_pair(q_in, db_in, "hamming");
  check_bits(bits, q_in.size(1), "hamming");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous();
  const int64_t nbits = static_cast<int64_t>(bits.size());
  at::Tensor out = at::empty({nbits, q.size(0), db.size(0)}, q.options().dtype(at::kInt));
  C10_CUDA_CHECK(nhl_hamming_cuda(q.data_ptr<int64_t>(), db.data_ptr<int64_t>(), q.size(0), db.size(0), q.size(1),
                                  bits.data(), nbits, out.data_ptr<int32_t>(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> topk_cuda(const at::Tensor& q_in, const at::Tensor& db_in, int64_t k,
                                             at::IntArrayRef bits) {
  check_pair(q_in, db_in, "topk");
  check_bits(bits, q_in.size(1), "topk");
  const int64_t nq = q_in.size(0), ndb = db_in.size(0), words = q_in.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= ndb, "topk: k=", k, " must be in [1, N] with N=", ndb, " database codes");
  TORCH_CHECK_VALUE(ndb <= std::numeric_limits<int32_t>::max(), "topk: the CUDA kernel supports N <= 2^31 - 1 database codes, got ", ndb);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), db = db_in.contiguous();
  const int64_t nbits = static_cast<int64_t>(bits.size());
  at::Tensor dist = at::empty({nbits, nq, k}, q.options().dtype(at::kInt));
  at::Tensor idx = at::empty({nbits, nq, k}, q.options().dtype(at::kLong));
  if (nq == 0) return {dist, idx};
  const size_t ws_bytes = nhl_topk_cuda_workspace_bytes(nq, ndb, words, bits.data(), nbits, k);
  at::Tensor workspace = at::empty({static_cast<int64_t>(ws_bytes)}, q.options().dtype(at::kByte));
  C10_CUDA_CHECK(nhl_topk_cuda(q.data_ptr<int64_t>(), db.data_ptr<int64_t>(), nq, ndb, words, bits.data(), nbits, k,
                               dist.data_ptr<int32_t>(), idx.data_ptr<int64_t>(), workspace.data_ptr(), ws_bytes,
                               c10::cuda::getCurrentCUDAStream()));
  return {dist, idx};
}

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) {
  m.impl("pack", &pack_cuda);
  m.impl("unpack", &unpack_cuda);
  m.impl("hamming", &hamming_cuda);
  m.impl("topk", &topk_cuda);
}

}  // namespace engine_cuda
}  // namespace nhl
// ------------------------------------------------------------------ end engine

// --- layer: nested_projection, project_and_pack (cuBLAS GEMM via at::mm + one fused epilogue kernel) ---
#include "cuda/projection_launchers.h"
#include "kernels/relax.h"

namespace nhl {

void check_projection_args(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

namespace layer_cuda {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kProjF32;
    case at::kDouble: return kProjF64;
    case at::kHalf: return kProjF16;
    case at::kBFloat16: return kProjBF16;
    default: TORCH_CHECK(false, "nested hash layer ops: unsupported dtype ", t);
  }
  return -1;
}

void check_cuda(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  check_projection_args(op, x, weight, bias);
  TORCH_CHECK(x.is_cuda() && weight.device() == x.device() && bias.device() == x.device(), op,
              ": x, weight and bias must be on one CUDA device");
}

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> nested_projection_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                          const at::Tensor& bias, c10::string_view relax_name) {
  check_cuda("nested_projection", x, weight, bias);
  const int relax = parse_relax(relax_name.data(), relax_name.size());
  TORCH_CHECK(relax >= 0, "nested_projection: relax must be one of none, tanh, sign_ste, got ", std::string(relax_name));
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor z = at::mm(x, weight.t());  // cuBLAS; the epilogue adds the bias and relaxes in one pass
  at::Tensor u = at::empty_like(z);
  const at::Tensor b = bias.contiguous();
  check_launch("nested_projection",
               nhl_nested_projection_epilogue(z.data_ptr(), u.data_ptr(), b.data_ptr(), z.size(0), z.size(1), relax,
                                              dtype_code(x.scalar_type()), c10::cuda::getCurrentCUDAStream()));
  return {u, z};
}

at::Tensor project_and_pack_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  check_cuda("project_and_pack", x, weight, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0), bits = weight.size(0), words = (bits + 63) / 64;
  at::Tensor out = at::empty({n, words}, x.options().dtype(at::kLong));
  if (n == 0 || bits == 0) return out.zero_();
  // Rows stream through one GEMM buffer of about 64 MiB: the (N, bits) float codes never exist at once.
  const int64_t chunk = std::min<int64_t>(n, std::max<int64_t>(1024, (int64_t(64) << 20) / (bits * x.element_size())));
  at::Tensor buffer = at::empty({chunk, bits}, x.options());
  const at::Tensor wt = weight.t(), b = bias.contiguous();
  auto* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t rows = std::min(chunk, n - start);
    at::Tensor z = buffer.narrow(0, 0, rows);
    at::mm_out(z, x.narrow(0, start, rows), wt);
    check_launch("project_and_pack", nhl_sign_pack_epilogue(z.data_ptr(), b.data_ptr(), rows, bits,
                                                            dst + start * words, dtype_code(x.scalar_type()), stream));
  }
  return out;
}

}  // namespace layer_cuda

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) {
  m.impl("nested_projection", &layer_cuda::nested_projection_cuda);
  m.impl("project_and_pack", &layer_cuda::project_and_pack_cuda);
}

}  // namespace nhl
// --- end layer ---

// --- metrics: distance_histogram, index_ap (csrc/cuda/distance_histogram_cuda.cu, index_ap_cuda.cu) ---
#include "cpu/metrics_common.h"
#include "cuda/metric_launchers.h"

namespace nhl {
namespace metrics_cuda {

const uint64_t* words_of(const at::Tensor& t) { return reinterpret_cast<const uint64_t*>(t.data_ptr<int64_t>()); }

// Histograms of 4 queries per block in shared memory when they fit in 96 KiB and the device's
// per-block limit (one block per 4 queries), else global scratch rows for the warps of a bounded
// grid that strides over the queries: 8 blocks per SM, so the scratch is SMs x 32 rows whatever
// Q is (a row per query was 57 GB for a million queries at 1,024-4,096 bits).
struct MetricLaunch {
  int warps = 4;
  int64_t max_blocks = std::numeric_limits<int32_t>::max();
  at::Tensor scratch;  // undefined: shared memory
  uint64_t* scratch_ptr() const {
    return scratch.defined() ? reinterpret_cast<uint64_t*>(scratch.data_ptr<int64_t>()) : nullptr;
  }
};

MetricLaunch metric_launch(const at::Tensor& q, int bins) {
  MetricLaunch m;
  // the kernels' static shared memory (length tables, per-warp slots) is under 8 KiB; sm_86/89
  // cards allow only 99 KiB per block
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, q.device().index()));
  const int64_t shared_limit = std::min<int64_t>(96 * 1024, int64_t(optin) - 8 * 1024);
  if (int64_t(m.warps) * bins * 8 > shared_limit) {
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.device().index()));
    m.max_blocks = std::min<int64_t>(int64_t(sms) * 8, (q.size(0) + m.warps - 1) / m.warps);
    m.scratch = at::empty({m.max_blocks * m.warps, bins}, q.options());
  }
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
                                         int(b1), m.warps, m.max_blocks, m.scratch_ptr(), tot.data_ptr<int64_t>(),
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
                               t.label_words, bits_dev.data_ptr<int64_t>(), int(L), t.bins, m.warps, m.max_blocks,
                               uint64_t(topk.value_or(db.size(0))), m.scratch_ptr(), ap.data_ptr<double>(),
                               hits.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream()),
             "index_ap");
  return {ap, hits};
}

}  // namespace metrics_cuda

TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m) {
  m.impl("distance_histogram", &metrics_cuda::distance_histogram_cuda);
  m.impl("index_ap", &metrics_cuda::index_ap_cuda);
}

}  // namespace nhl
// --- end metrics ---
