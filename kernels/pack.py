"""Triton pack: (N, b) real/bool codes -> (N, ceil(b/64)) int64 words, bit j of word j//64 at j%64."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device

WORD = 64


@triton.jit
def _pack_kernel(codes_ptr, out_ptr, n, bits, words, BLOCK_N: tl.constexpr):
    # One program packs word `w` of BLOCK_N rows: a (BLOCK_N, 64) tile of codes -> BLOCK_N words.
    pid_n = tl.program_id(0)
    w = tl.program_id(1)
    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    j = w.to(tl.int64) * 64 + tl.arange(0, 64)
    mask = (rows[:, None] < n) & (j[None, :] < bits)
    vals = tl.load(codes_ptr + rows[:, None] * bits + j[None, :], mask=mask, other=0)
    on = (vals > 0).to(tl.int64)
    # 1 << 63 wraps to INT64_MIN, so the sum of distinct powers of two is exactly their bitwise OR
    # (no partial sum can overflow).
    weight = tl.full([64], 1, tl.int64) << tl.arange(0, 64).to(tl.int64)
    word = tl.sum(on * weight[None, :], axis=1)
    tl.store(out_ptr + rows * words + w, word, mask=rows < n)


@on_tensor_device
def pack_triton(codes: torch.Tensor) -> torch.Tensor:
    codes = codes.contiguous()
    if codes.dtype == torch.bool:
        codes = codes.view(torch.uint8)  # Triton loads bool pointers as i1; bytes compare the same
    n, bits = codes.shape
    words = (bits + WORD - 1) // WORD
    out = torch.empty((n, words), dtype=torch.int64, device=codes.device)
    if n == 0 or words == 0:
        return out
    block_n = 32
    _pack_kernel[(triton.cdiv(n, block_n), words)](codes, out, n, bits, words, BLOCK_N=block_n)
    return out
