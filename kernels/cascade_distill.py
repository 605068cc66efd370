"""Triton cascade_distill: the long-short cascade self-distillation of the NHL objective, its K-1 values and
closed-form packed gradient (spec: reference.cascade_distill) in three launches, whatever K:

  1. _prefix_gram_kernel: every prefix Gram S_k = u[:, :b_k] u[:, :b_k]^T, (K, B, B), cumulatively: a
     tile's accumulator runs over u's columns once and is stored at each b_k (S_k = S_{k-1} + U_seg U_seg^T).
  2. _distill_rows_kernel, over (row block, pair k) tiles: the row norms r_k, r_{k+1}, N_k = S_k / r_k,
     the pair's squared difference (partial D_k per row block), E = 2 (N_k - N_{k+1}) / B^2 and
     A = (E - N_k rowsum(E * N_k)) / r_k (E / r_k where r_k was clamped), (K-1, B, B).
  3. _distill_grad_kernel: dD_k/du[:, :b_k] = (A + A^T) u[:, :b_k] by tl.dot (A^T read in place, never
     materialised), stored straight into the packed (B, sum b_k) layout; the longest length's segment is
     written as zeros, and one program per pair sums the row-block partials into D_k.

The torch spec runs K Gram products, a stack, ~12 B x B elementwise ops, K-1 products and a cat (~29 ops);
at training batch sizes (B <= 512) every one of them is launch-bound.
"""
import functools
from typing import Sequence

import torch
import triton
import triton.language as tl

from nhl_fast._checks import relaxed_codes
from nhl_fast.kernels import on_tensor_device

from ._projection_common import acc_and_precision

EPS = tl.constexpr(1e-12)  # F.normalize's floor on the row norms


@functools.lru_cache(maxsize=None)
def packed_offsets(bits: tuple, device: torch.device) -> torch.Tensor:
    """(K + 1,) int32 on `device`: length k's packed columns are [offsets[k], offsets[k + 1]), b_k their count.
    Built (one host -> device copy) once per (bits, device)."""
    offsets = [0]
    for b in bits:
        offsets.append(offsets[-1] + b)
    return torch.tensor(offsets, dtype=torch.int32, device=device)


@triton.jit
def _prefix_gram_kernel(u_ptr, off_ptr, gram_ptr, B, stride_u, K, ACC: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """gram[k, i, j] = sum_{c < b_k} u[i, c] u[j, c] for one (BLOCK_M, BLOCK_N) tile, every k."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: k B^2 passes 2^31
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < B
    cmask = cols < B
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    plane = (tl.full([], 0, tl.int64) + B) * B  # B may arrive as int32 (or a constexpr 1)
    lo = tl.load(off_ptr)  # 0, as an int32 tensor: a loop-carried variable keeps its type
    for k in range(K):
        hi = tl.load(off_ptr + k + 1) - tl.load(off_ptr + k)  # b_k
        for c0 in range(lo, hi, BLOCK_K):
            cc = c0 + offs_k
            a = tl.load(u_ptr + rows[:, None] * stride_u + cc[None, :], mask=rmask[:, None] & (cc[None, :] < hi),
                        other=0.0).to(ACC)
            bt = tl.load(u_ptr + cols[None, :] * stride_u + cc[:, None], mask=cmask[None, :] & (cc[:, None] < hi),
                         other=0.0).to(ACC)
            acc = tl.dot(a, bt, acc, input_precision=PRECISION, out_dtype=ACC)
        tl.store(gram_ptr + k * plane + rows[:, None] * B + cols[None, :], acc, mask=rmask[:, None] & cmask[None, :])
        lo = hi


@triton.jit
def _distill_rows_kernel(gram_ptr, a_ptr, part_ptr, B, n_blocks, inv_bb: tl.float64, ACC: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """A[k, rows, :] for pair k (student k, teacher k + 1) and part[k, block] = sum over the block's rows of
    ||N_k row - N_{k+1} row||^2. Three passes over the rows: norms, then the row sums, then A."""
    blk = tl.program_id(0)
    k = tl.program_id(1).to(tl.int64)
    rows = blk.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < B
    plane = (tl.full([], 0, tl.int64) + B) * B  # B may arrive as int32 (or a constexpr 1)
    student = gram_ptr + k * plane + rows[:, None] * B
    teacher = student + plane
    offs_c = tl.arange(0, BLOCK_C)
    ss_s = tl.zeros((BLOCK_R,), dtype=ACC)
    ss_t = tl.zeros((BLOCK_R,), dtype=ACC)
    for c0 in range(0, B, BLOCK_C):
        cc = c0 + offs_c
        m = rmask[:, None] & (cc[None, :] < B)
        s = tl.load(student + cc[None, :], mask=m, other=0.0)
        t = tl.load(teacher + cc[None, :], mask=m, other=0.0)
        ss_s += tl.sum(s * s, axis=1)
        ss_t += tl.sum(t * t, axis=1)
    eps = tl.full([], EPS, ACC)  # as an ACC tensor: a bare constexpr operand can be rounded to float32
    r_s = tl.maximum(tl.sqrt(ss_s), eps)
    r_t = tl.maximum(tl.sqrt(ss_t), eps)
    scale = tl.full([], 2.0 * inv_bb, ACC)  # E = 2 (N_k - N_{k+1}) / B^2 (tl.full: exact for an fp64 argument)
    sq = tl.zeros((BLOCK_R,), dtype=ACC)
    dot = tl.zeros((BLOCK_R,), dtype=ACC)  # rowsum(E * N_k)
    for c0 in range(0, B, BLOCK_C):
        cc = c0 + offs_c
        m = rmask[:, None] & (cc[None, :] < B)
        n_s = tl.load(student + cc[None, :], mask=m, other=0.0) / r_s[:, None]
        n_t = tl.load(teacher + cc[None, :], mask=m, other=0.0) / r_t[:, None]
        d = n_s - n_t
        sq += tl.sum(d * d, axis=1)
        dot += tl.sum(scale * d * n_s, axis=1)
    clamped = r_s <= eps
    out = a_ptr + k * plane + rows[:, None] * B
    for c0 in range(0, B, BLOCK_C):
        cc = c0 + offs_c
        m = rmask[:, None] & (cc[None, :] < B)
        n_s = tl.load(student + cc[None, :], mask=m, other=0.0) / r_s[:, None]
        n_t = tl.load(teacher + cc[None, :], mask=m, other=0.0) / r_t[:, None]
        e = scale * (n_s - n_t)
        a = tl.where(clamped[:, None], e, e - n_s * dot[:, None]) / r_s[:, None]
        tl.store(out + cc[None, :], a, mask=m)
    tl.store(part_ptr + k * n_blocks + blk, tl.sum(sq, axis=0))


@triton.jit
def _distill_grad_kernel(a_ptr, u_ptr, off_ptr, part_ptr, grad_ptr, dist_ptr, B, stride_u, P, K, n_blocks,
                         inv_bb: tl.float64, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """grad[rows, off_k + cols] = ((A_k + A_k^T) u[:, :b_k])[rows, cols] for k < K - 1, 0 for k = K - 1;
    program (0, 0, k) also writes dist[k] = sum(part[k, :]) / B^2."""
    k = tl.program_id(2)
    lo = tl.load(off_ptr + k)
    b = tl.load(off_ptr + k + 1) - lo
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < B
    cmask = cols < b
    out = grad_ptr + rows[:, None] * P + lo + cols[None, :]
    omask = rmask[:, None] & cmask[None, :]
    if k == K - 1:  # the longest code has no teacher
        tl.store(out, tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC), mask=omask)
    elif tl.program_id(1).to(tl.int64) * BLOCK_N < b:
        plane = (tl.full([], 0, tl.int64) + B) * B  # B may arrive as int32 (or a constexpr 1)
        a_k = a_ptr + k.to(tl.int64) * plane
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for j0 in range(0, B, BLOCK_K):
            jj = j0 + offs_k
            jmask = jj < B
            am = rmask[:, None] & jmask[None, :]
            sym = (tl.load(a_k + rows[:, None] * B + jj[None, :], mask=am, other=0.0)
                   + tl.load(a_k + jj[None, :].to(tl.int64) * B + rows[:, None], mask=am, other=0.0))
            uk = tl.load(u_ptr + jj[:, None].to(tl.int64) * stride_u + cols[None, :],
                         mask=jmask[:, None] & cmask[None, :], other=0.0).to(ACC)
            acc = tl.dot(sym, uk, acc, input_precision=PRECISION, out_dtype=ACC)
        tl.store(out, acc, mask=omask)
        if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
            offs_p = tl.arange(0, BLOCK_P)
            total = tl.zeros((BLOCK_P,), dtype=ACC)
            for p0 in range(0, n_blocks, BLOCK_P):
                total += tl.load(part_ptr + k * n_blocks + p0 + offs_p, mask=p0 + offs_p < n_blocks, other=0.0)
            tl.store(dist_ptr + k, tl.sum(total, axis=0) * tl.full([], inv_bb, ACC))


def _block(n: int, lo: int = 16, hi: int = 64) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


@on_tensor_device
def cascade_distill_triton(u: torch.Tensor, bits: Sequence[int]):
    """((K-1,) D_k, (B, sum b_k) packed dD_k/du) of reference.cascade_distill, in u's dtype (float32/float64)."""
    bits = relaxed_codes(u, bits, "cascade_distill")
    u = u.contiguous()
    batch = u.shape[0]
    n_len = len(bits)
    total_cols = sum(bits)
    if batch == 0 or n_len == 1:  # nothing to launch: empty batch (D_k = 0, as the C++ op) or no pair
        return u.new_zeros(n_len - 1), u.new_zeros(batch, total_cols)
    acc, precision = acc_and_precision(u.dtype)
    offsets = packed_offsets(bits, u.device)
    inv_bb = 1.0 / (float(batch) * float(batch))

    grams = torch.empty((n_len, batch, batch), dtype=u.dtype, device=u.device)
    bm = _block(batch)
    _prefix_gram_kernel[(triton.cdiv(batch, bm), triton.cdiv(batch, bm))](
        u, offsets, grams, batch, u.stride(0), n_len, ACC=acc, PRECISION=precision, BLOCK_M=bm, BLOCK_N=bm,
        BLOCK_K=16)

    block_r = 16
    n_blocks = triton.cdiv(batch, block_r)
    a = torch.empty((n_len - 1, batch, batch), dtype=u.dtype, device=u.device)
    part = torch.empty((n_len - 1, n_blocks), dtype=u.dtype, device=u.device)
    _distill_rows_kernel[(n_blocks, n_len - 1)](grams, a, part, batch, n_blocks, inv_bb, ACC=acc, BLOCK_R=block_r,
                                                BLOCK_C=_block(batch, 16, 128))

    dist = torch.empty(n_len - 1, dtype=u.dtype, device=u.device)
    grad = torch.empty((batch, total_cols), dtype=u.dtype, device=u.device)
    bn = _block(bits[-1], 16, 64)
    grid = (triton.cdiv(batch, bm), triton.cdiv(bits[-1], bn), n_len)
    _distill_grad_kernel[grid](a, u, offsets, part, grad, dist, batch, u.stride(0), total_cols, n_len, n_blocks,
                               inv_bb, ACC=acc, PRECISION=precision, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=32,
                               BLOCK_P=_block(n_blocks, 16, 256))
    return dist, grad
