"""Triton building blocks shared by the metric kernels (distance_histogram, index_ap): one program
per query streams the database in blocks; the distances of every length come from the same
loaded words (per-(length, word) masks), so L lengths cost one pass."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from nhl_fast.kernels.hamming import popcount64


@triton.jit
def length_masks(bits_ptr, L, LP: tl.constexpr, WP: tl.constexpr):
    """(LP, WP) int64: the bits of length l that fall in word w (0 for padded lengths)."""
    lens = tl.arange(0, LP)
    bits = tl.load(bits_ptr + lens, mask=lens < L, other=0)
    inside = bits[:, None] - (tl.arange(0, WP) * 64)[None, :]
    inside = tl.minimum(tl.maximum(inside, 0), 64)
    partial = (tl.full(inside.shape, 1, tl.int64) << tl.minimum(inside, 63)) - 1
    return tl.where(inside >= 64, tl.full(inside.shape, -1, tl.int64), partial)


@triton.jit
def block_distances(db_ptr, offs, valid, qw, masks, W, WP: tl.constexpr):
    """(BLOCK, LP) int32 distances of database items `offs` to the query words qw (WP,)."""
    words = tl.arange(0, WP)
    x = tl.load(db_ptr + offs.to(tl.int64)[:, None] * W + words[None, :], mask=valid[:, None] & (words < W)[None, :], other=0)
    x = x ^ qw[None, :]
    return tl.sum(popcount64(x[:, None, :] & masks[None, :, :]), axis=2)


@triton.jit
def block_relevance(dl_ptr, offs, valid, ql_ptr, pid, LW: tl.constexpr, LWP: tl.constexpr):
    """(BLOCK,) bool: class equality (LW == 0) or shared bits of LW-word label masks."""
    offs = offs.to(tl.int64)  # N * LW can pass 2^31
    if LW == 0:
        dl = tl.load(dl_ptr + offs, mask=valid, other=0)
        return (dl == tl.load(ql_ptr + pid)) & valid
    else:
        lw = tl.arange(0, LWP)
        qlab = tl.load(ql_ptr + pid.to(tl.int64) * LW + lw, mask=lw < LW, other=0)
        dl = tl.load(dl_ptr + offs[:, None] * LW + lw[None, :], mask=valid[:, None] & (lw < LW)[None, :], other=0)
        return (tl.sum(((dl & qlab[None, :]) != 0).to(tl.int32), axis=1) > 0) & valid


@triton.jit
def query_histograms(q_ptr, bits_ptr, db_ptr, dl_ptr, ql_ptr, pid, L, N, W, WP: tl.constexpr, LW: tl.constexpr,
                     LWP: tl.constexpr, LP: tl.constexpr, NB: tl.constexpr, BLOCK: tl.constexpr):
    """Query `pid`'s words and length masks, and its (LP, NB) int32 counts of all / relevant
    database items at each distance: one streamed pass."""
    words = tl.arange(0, WP)
    qw = tl.load(q_ptr + pid.to(tl.int64) * W + words, mask=words < W, other=0)
    masks = length_masks(bits_ptr, L, LP, WP)
    bins = tl.arange(0, NB)
    tot = tl.zeros((LP, NB), dtype=tl.int32)
    rel = tl.zeros((LP, NB), dtype=tl.int32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        valid = offs < N
        d = block_distances(db_ptr, offs, valid, qw, masks, W, WP)
        r = block_relevance(dl_ptr, offs, valid, ql_ptr, pid, LW, LWP)
        hot = ((d[:, :, None] == bins[None, None, :]) & valid[:, None, None]).to(tl.int32)
        tot += tl.sum(hot, axis=0)
        rel += tl.sum(hot * r.to(tl.int32)[:, None, None], axis=0)
    return qw, masks, tot, rel


def launch_params(q: torch.Tensor, q_labels: torch.Tensor, bits: list[int]) -> dict:
    """Compile-time sizes: padded words, label words, lengths, bins, and a block that keeps the
    (BLOCK, LP, NB) one-hot tile at 2^15 elements."""
    W = q.shape[1]
    LW = 0 if q_labels.dim() == 1 else q_labels.shape[1]
    LP, NB = triton.next_power_of_2(len(bits)), triton.next_power_of_2(max(bits) + 1)
    block = max(1, min(128, (1 << 15) // (LP * NB)))  # powers of two all
    return dict(W=W, WP=triton.next_power_of_2(W), LW=LW, LWP=triton.next_power_of_2(max(LW, 1)), LP=LP, NB=NB,
                BLOCK=block)
