// Torch-free launchers of the nested hash layer's CUDA epilogues (nested_projection_cuda.cu,
// project_and_pack_cuda.cu). The GEMM itself is cuBLAS, called by the torch glue in ops_cuda.cpp.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace nhl {
// Element type of the projection operands, as passed across the extern "C" boundary.
enum ProjectionDtype : int { kProjF32 = 0, kProjF64 = 1, kProjF16 = 2, kProjBF16 = 3 };
}  // namespace nhl

extern "C" {
// z (rows x cols, row-major) holds x W^T on entry; on exit z = x W^T + b and u = relax(z).
cudaError_t nhl_nested_projection_epilogue(void* z, void* u, const void* bias, int64_t rows, int64_t cols,
                                           int relax, int dtype, cudaStream_t stream);
// z (rows x cols) holds x W^T; out (rows x ceil(cols/64)) gets bit j of word j/64 set where z + b > 0.
cudaError_t nhl_sign_pack_epilogue(const void* z, const void* bias, int64_t rows, int64_t cols, uint64_t* out,
                                   int dtype, cudaStream_t stream);
}
