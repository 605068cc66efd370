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
