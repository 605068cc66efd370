"""Triton nested_projection: (u, z) with z = x W^T + b by tl.dot and the bias + relax
epilogue in the same kernel; every code length is a prefix of the one output."""
import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device

from ._projection_common import acc_and_precision, projection_tile, tanh

RELAX_CODES = {"none": 0, "tanh": 1, "sign_ste": 2}


@triton.jit
def _nested_projection_kernel(x_ptr, w_ptr, b_ptr, u_ptr, z_ptr, M, N, K, stride_xm, stride_xk, stride_wn,
                              stride_wk, RELAX: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: M * N can pass 2^31
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    z = projection_tile(x_ptr, w_ptr, b_ptr, offs_m, offs_n, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
                        ACC, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if RELAX == 1:
        u = tanh(z)
    elif RELAX == 2:
        u = tl.where(z > 0, 1.0, -1.0).to(ACC)  # 0 -> -1, the packed-bit rule
    else:
        u = z
    out = offs_m[:, None] * N + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(z_ptr + out, z.to(z_ptr.dtype.element_ty), mask=mask)
    tl.store(u_ptr + out, u.to(u_ptr.dtype.element_ty), mask=mask)


@on_tensor_device
def nested_projection_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relax: str):
    if relax not in RELAX_CODES:
        raise ValueError(f"relax must be one of {tuple(RELAX_CODES)}, got {relax!r}")
    m, k = x.shape
    n = weight.shape[0]
    u = torch.empty((m, n), dtype=x.dtype, device=x.device)
    z = torch.empty_like(u)
    if m == 0 or n == 0:
        return u, z
    acc, precision = acc_and_precision(x.dtype)
    block_m = 64 if m >= 64 else 16
    block_n = 64 if n >= 64 else 16
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _nested_projection_kernel[grid](x, weight, bias.contiguous(), u, z, m, n, k, x.stride(0), x.stride(1),
                                    weight.stride(0), weight.stride(1), RELAX=RELAX_CODES[relax], ACC=acc,
                                    PRECISION=precision, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=32)
    return u, z
