"""Triton hamming: (L, Q, N) int32 distances for every length in `bits`, one pass over the words.

Per word: x = q ^ db; each length whose last word is this one gets `acc + popcount(x & mask)`,
then `acc += popcount(x)` (cumulative per-word counts, never L passes). The per-word table of
lengths (which lengths end at word w, and their masks) is built on the host.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device

WORD = 64


@triton.jit
def popcount64(x):
    """Bit count of each 64-bit lane (SWAR; LLVM turns this idiom into a popc instruction)."""
    x = x.to(tl.uint64, bitcast=True)
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56).to(tl.int32)


@triton.jit
def hamming_tile_kernel(q_ptr, db_ptr, out_ptr, table_ptr, nq, ndb, words, words_used, plane,
                        key_n, key_base, KEYS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[l * plane + i * ndb + j] = distance(q[i], db[j]) over the first bits[l] bits, for a BLOCK_Q x BLOCK_N tile.

    table = [starts (words_used + 1) | masks (L)]: lengths starts[w]..starts[w+1]-1 end at word w.
    KEYS: write int64 keys dist * key_n + key_base + j (unique, ordered like (dist, index)) instead.
    """
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_q = tl.program_id(1).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_n = offs_n < ndb
    mask_q = offs_q < nq
    out_mask = mask_q[:, None] & mask_n[None, :]
    out_offs = offs_q[:, None] * ndb + offs_n[None, :]
    masks_ptr = table_ptr + words_used + 1
    plane64 = tl.full([], 0, tl.int64) + plane  # l * plane can pass 2^31 when plane arrives as int32
    acc = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.int32)
    for w in range(words_used):
        qw = tl.load(q_ptr + offs_q * words + w, mask=mask_q, other=0)
        dw = tl.load(db_ptr + offs_n * words + w, mask=mask_n, other=0)
        x = qw[:, None] ^ dw[None, :]
        first = tl.load(table_ptr + w)
        stop = tl.load(table_ptr + w + 1)
        for l in range(first, stop):
            plane_off = l * plane64
            d = acc + popcount64(x & tl.load(masks_ptr + l))
            if KEYS:
                key = d.to(tl.int64) * key_n + key_base + offs_n[None, :]
                tl.store(out_ptr + plane_off + out_offs, key, mask=out_mask)
            else:
                tl.store(out_ptr + plane_off + out_offs, d, mask=out_mask)
        acc += popcount64(x)


def length_table(bits: Sequence[int], device) -> tuple[torch.Tensor, int]:
    """([starts | masks] int64 on `device`, words_used): which lengths end at each word, their masks."""
    last = [(b - 1) // WORD for b in bits]
    words_used = last[-1] + 1
    starts = [sum(1 for lw in last if lw < w) for w in range(words_used + 1)]
    masks = []
    for b, lw in zip(bits, last):
        m = (1 << (b - lw * WORD)) - 1  # the bits of the last word inside the code, 1..64 of them
        masks.append(m - (1 << 64) if m >= 1 << 63 else m)  # as a signed int64 bit pattern
    return torch.tensor(starts + masks, dtype=torch.int64, device=device), words_used


def launch_tile(q, db, out, table, words_used, keys=False, key_n=1, key_base=0,
                block_q: int = 16, block_n: int = 64) -> None:
    """Fill out (L, Q, N') for q (Q, W) against db (N', W); both contiguous rows of int64 words."""
    nq, words = q.shape
    ndb = db.shape[0]
    assert out.stride(1) == ndb and out.stride(2) == 1
    grid = (triton.cdiv(ndb, block_n), triton.cdiv(nq, block_q))
    hamming_tile_kernel[grid](q, db, out, table, nq, ndb, words, words_used, out.stride(0), key_n, key_base,
                              KEYS=keys, BLOCK_Q=block_q, BLOCK_N=block_n)


MAX_QUERY_TILES = 65535  # the grid's second axis limit


@on_tensor_device
def hamming_triton(q: torch.Tensor, db: torch.Tensor, bits: Sequence[int]) -> torch.Tensor:
    q, db = q.contiguous(), db.contiguous()
    bits = list(bits)
    out = torch.empty((len(bits), q.shape[0], db.shape[0]), dtype=torch.int32, device=q.device)
    if out.numel() == 0:
        return out
    table, words_used = length_table(bits, q.device)
    step = 16 * MAX_QUERY_TILES
    for q0 in range(0, q.shape[0], step):
        launch_tile(q[q0:q0 + step], db, out[:, q0:q0 + step], table, words_used)
    return out
