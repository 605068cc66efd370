"""The multi-length Hamming engine: pack, unpack, hamming, topk (public API).

Each function validates its inputs (nhl_fast._checks: clear errors naming the argument), and
runs the op's implementation that the op table (nhl_fast._dispatch) picks for the tensors' device.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from nhl_fast import _checks
from nhl_fast._dispatch import dispatch, extension


def pack(codes: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """(N, b) real or bool codes -> (N, ceil(b/64)) int64 words; bit j set where codes[:, j] > 0.

    LSB-first: ``pack(c).view(torch.uint8)`` is byte-for-byte faiss's binary code layout.
    sign(0) packs as 0 (only strictly positive values set a bit).
    """
    codes = _checks.real_codes(codes, "codes")
    return dispatch("pack", codes.device, backend)(codes.contiguous())


def unpack(packed: torch.Tensor, bits: int, *, backend: Optional[str] = None) -> torch.Tensor:
    """(N, W) int64 words -> (N, bits) float32 of +-1 (the first `bits` bits)."""
    packed = _checks.packed_codes(packed, "packed")
    (bits,) = _checks.bit_lengths(bits, packed.shape[1], "bits")
    return dispatch("unpack", packed.device, backend)(packed.contiguous(), bits)


def hamming(q: torch.Tensor, db: torch.Tensor, bits: Optional[Iterable[int]] = None, *,
            backend: Optional[str] = None) -> torch.Tensor:
    """(L, Q, N) int32 Hamming distances for every length in `bits`, in one pass over the words.

    bits: strictly increasing lengths <= 64*W (default: 8, 16, 32, ... up to 64*W).
    """
    q, db = _checks.query_and_database(q, db)
    bits = _checks.bit_lengths(bits, q.shape[1])
    return dispatch("hamming", q.device, backend)(q.contiguous(), db.contiguous(), list(bits))


def topk(q: torch.Tensor, db: torch.Tensor, k: int, bits: Optional[Iterable[int]] = None, *,
         backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, Q, k) int32 distances and int64 database indices of the k nearest codes per length.

    Ascending distance, ties broken by lower database index, identically on every backend.
    """
    q, db = _checks.query_and_database(q, db)
    bits = _checks.bit_lengths(bits, q.shape[1])
    k = _checks.positive_k(k, db.shape[0])
    return dispatch("topk", q.device, backend)(q.contiguous(), db.contiguous(), k, list(bits))


def empty_cache() -> int:
    """Free the memory nhl_fast keeps for reuse by large CPU outputs; returns the bytes freed.

    Large ``topk``/``hamming`` outputs (1 MiB and up) take their memory from blocks that earlier
    outputs freed, so that repeated calls do not pay the page faults of fresh memory. The cache
    holds at most ``NHL_OUTPUT_CACHE_MB`` MiB (default 512, read at the first large output; 0 turns
    it off).
    """
    ext, _ = extension()
    return int(ext.empty_output_cache()) if ext is not None else 0
