"""The spec: pure-PyTorch reference implementations of every nhl_fast op.

Short and obviously correct rather than fast; every kernel (C++, CUDA, Triton) is
tested against these functions. Inputs are assumed validated (see nhl_fast._checks).
"""
from __future__ import annotations

from typing import Sequence

import torch

WORD = 64


def pack(codes: torch.Tensor) -> torch.Tensor:
    """(N, b) real or bool -> (N, ceil(b/64)) int64; bit j of word j//64 at j%64 set where code > 0."""
    n, b = codes.shape
    words = (b + WORD - 1) // WORD
    on = (codes > 0) if codes.dtype != torch.bool else codes
    on = torch.nn.functional.pad(on.to(torch.int64), (0, words * WORD - b)).view(n, words, WORD)
    # 1 << 63 wraps to INT64_MIN, so the sum of distinct powers of two is exactly the bitwise OR.
    weights = torch.ones(WORD, dtype=torch.int64, device=codes.device) << torch.arange(WORD, device=codes.device)
    return (on * weights).sum(-1)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, W) int64 -> (N, bits) float32 of +-1 (+1 where the bit is set)."""
    j = torch.arange(bits, device=packed.device)
    on = (packed[:, j // WORD] >> (j % WORD)) & 1
    return on.to(torch.float32) * 2 - 1


def hamming(q: torch.Tensor, db: torch.Tensor, bits: Sequence[int]) -> torch.Tensor:
    """(L, Q, N) int32 Hamming distances between the first bits[l] bits of q and db."""
    b_max = max(bits)
    sq, sdb = unpack(q, b_max).double(), unpack(db, b_max).double()
    # For +-1 vectors of length b: d = (b - <x, y>) / 2.
    out = [((b - sq[:, :b] @ sdb[:, :b].T) / 2).round().to(torch.int32) for b in bits]
    return torch.stack(out)


def topk(q: torch.Tensor, db: torch.Tensor, k: int, bits: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, Q, k) smallest distances and their database indices; ties by lower index."""
    dist = hamming(q, db, bits)
    # A stable sort keeps equal distances in database order: the tie rule of every backend.
    sorted_dist, idx = torch.sort(dist, dim=-1, stable=True)
    return sorted_dist[..., :k].contiguous(), idx[..., :k].contiguous()
