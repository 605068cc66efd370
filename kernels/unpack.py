"""Triton unpack: (N, W) int64 words -> (N, bits) float32 of +-1 (+1 where the bit is set)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device


@triton.jit
def _unpack_kernel(packed_ptr, out_ptr, n, words, bits, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    j = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask = (rows[:, None] < n) & (j[None, :] < bits)
    word = tl.load(packed_ptr + rows[:, None] * words + (j // 64)[None, :], mask=mask, other=0)
    # Arithmetic shift then & 1 is exact for every shift in [0, 63], bit 63 included.
    on = (word >> (j % 64)[None, :]) & 1
    tl.store(out_ptr + rows[:, None] * bits + j[None, :], on.to(tl.float32) * 2.0 - 1.0, mask=mask)


@on_tensor_device
def unpack_triton(packed: torch.Tensor, bits: int) -> torch.Tensor:
    packed = packed.contiguous()
    n, words = packed.shape
    out = torch.empty((n, bits), dtype=torch.float32, device=packed.device)
    if n == 0 or bits == 0:
        return out
    block_n, block_b = 16, 128
    grid = (triton.cdiv(n, block_n), triton.cdiv(bits, block_b))
    _unpack_kernel[grid](packed, out, n, words, bits, BLOCK_N=block_n, BLOCK_B=block_b)
    return out
