"""Triton project_and_pack: each program computes a (BLOCK_M, 64) tile of x W^T + b by
tl.dot and packs its signs straight into one int64 word per row; the float codes live
only in registers, never in memory."""
import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device

from ._projection_common import acc_and_precision, projection_tile


@triton.jit
def _project_and_pack_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, W, stride_xm, stride_xk, stride_wn, stride_wk,
                             ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_K: tl.constexpr):
    word = tl.program_id(1)
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: M * stride can pass 2^31
    lane = tl.arange(0, 64)
    offs_n = word.to(tl.int64) * 64 + lane
    z = projection_tile(x_ptr, w_ptr, b_ptr, offs_m, offs_n, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
                        ACC, PRECISION, BLOCK_M, 64, BLOCK_K)
    on = (z > 0) & (offs_n[None, :] < N)
    # Distinct powers of two: their (wrapping) sum is the bitwise OR, bit 63 included.
    bit = tl.full((64,), 1, tl.int64) << lane.to(tl.int64)
    packed = tl.sum(tl.where(on, bit[None, :], 0), axis=1)
    tl.store(out_ptr + offs_m * W + word, packed, mask=offs_m < M)


@on_tensor_device
def project_and_pack_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    m, k = x.shape
    n = weight.shape[0]
    words = (n + 63) // 64
    out = torch.empty((m, words), dtype=torch.int64, device=x.device)
    if m == 0 or n == 0:
        return out.zero_()
    acc, precision = acc_and_precision(x.dtype)
    block_m = 64 if m >= 64 else 16
    grid = (triton.cdiv(m, block_m), words)
    _project_and_pack_kernel[grid](x, weight, bias.contiguous(), out, m, n, k, words, x.stride(0), x.stride(1),
                                   weight.stride(0), weight.stride(1), ACC=acc, PRECISION=precision,
                                   BLOCK_M=block_m, BLOCK_K=32)
    return out
