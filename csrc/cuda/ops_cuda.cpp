// Thin CUDA glue: tensors -> raw pointers + the current stream, and the CUDA kernel registrations
// (TORCH_LIBRARY_IMPL(nhl_fast, CUDA, m)). Each op family adds its own delimited block below.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/all.h>
#include <torch/library.h>

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
