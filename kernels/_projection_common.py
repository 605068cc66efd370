"""Helpers shared by the Triton projection kernels (nested_projection, project_and_pack)."""
import torch
import triton
import triton.language as tl


@triton.jit
def tanh(z):
    """tanh without overflow; a Taylor branch near 0 keeps the relative error small there."""
    a = tl.abs(z)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    z2 = z * z
    small = z * (1.0 - z2 * (1.0 / 3.0 - z2 * (2.0 / 15.0 - z2 * (17.0 / 315.0))))
    return tl.where(a < 0.05, small, tl.where(z < 0, -t, t))


@triton.jit
def projection_tile(x_ptr, w_ptr, b_ptr, offs_m, offs_n, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
                    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """The (BLOCK_M, BLOCK_N) tile of z = x W^T + b, accumulated in ACC. offs_m / offs_n are int64:
    row * stride passes 2^31 on large inputs."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=(offs_m[:, None] < M) & (kk[None, :] < K), other=0.0)
        wt = tl.load(w_ptr + offs_n[None, :] * stride_wn + kk[:, None] * stride_wk,
                     mask=(offs_n[None, :] < N) & (kk[:, None] < K), other=0.0)
        acc = tl.dot(a, wt, acc, input_precision=PRECISION, out_dtype=ACC)
    bias = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(ACC)
    return acc + bias[None, :]


def acc_and_precision(dtype: torch.dtype):
    """Accumulator type and tl.dot input precision matching torch's matmul settings for `dtype`."""
    if dtype == torch.float64:
        return tl.float64, "ieee"
    if dtype == torch.float32:
        return tl.float32, "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return tl.float32, "ieee"  # fp16/bf16 inputs accumulate in fp32
