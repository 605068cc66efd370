"""Triton csq_grads: CSQ's K per-length losses and their closed-form gradients, packed (B, sum b_k)
(spec: reference.csq_grads), in three launches whatever K:

  1. scores = labels @ centers (one torch GEMM: the label-summed centres, (B, C_cols));
  2. _csq_grads_kernel over (row block, length k) tiles: per element the target t = sign(score) (the tie sign
     where the score is 0), e = BCE-with-logits(2x, (t+1)/2) + lambda (|tanh x| - 1)^2 and
     de/dx = 2 (sigmoid(2x) - (t+1)/2) + 2 lambda (|tanh x| - 1) sign(x) (1 - tanh^2 x), from one exp
     (E = exp(-2|x|) gives sigmoid(2x), |tanh x| and the softplus); the gradient, scaled by 1 / (B b_k), is
     stored in length k's packed segment and the tile's sum of e / (B b_k) in a (row blocks, K) buffer;
  3. losses = that buffer summed over the row blocks.

Both centre layouts: (C, sum b_k) (length k reads its own segment of the scores) or (C, b_max) nested
(length k reads the prefix). The torch spec runs ~24 elementwise ops per length plus a stack and a cat
(~120 ops at K = 5), each launch-bound at training batch sizes.
"""
from typing import Sequence

import torch
import triton
import triton.language as tl

from nhl_fast._checks import csq_grads_args
from nhl_fast.kernels import on_tensor_device

from .cascade_distill import packed_offsets


@triton.jit
def _log1p_small(e):
    """log(1 + e) for e in [0, 1], accurate where 1 + e rounds (Kahan: log(w) e / (w - 1), w = 1 + e)."""
    w = 1.0 + e
    exact = w == 1.0
    return tl.where(exact, e, tl.log(w) * (e / tl.where(exact, 1.0, w - 1.0)))


@triton.jit
def _csq_grads_kernel(u_ptr, s_ptr, tie_ptr, off_ptr, grad_ptr, part_ptr, B, stride_u, stride_s, P, K,
                      lam: tl.float64, SHARED: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    blk = tl.program_id(0)
    k = tl.program_id(1)
    lo = tl.load(off_ptr + k)
    b = tl.load(off_ptr + k + 1) - lo
    tbase = lo  # length k's first centre column: its own segment, or the shared prefix
    if SHARED:
        tbase = 0
    rows = blk.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # int64: rows * P passes 2^31 on large batches
    rmask = rows < B
    offs_c = tl.arange(0, BLOCK_C)
    one = tl.full([], 1.0, ACC)
    lam_ = tl.full([], lam, ACC)  # tl.full: exact for the fp64 argument
    # dL_k/de = 1 / (B b_k), in ACC (B b_k can pass 2^31)
    scale = one / ((tl.full([], 0.0, ACC) + B) * b)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    for c0 in range(0, b, BLOCK_C):
        cc = c0 + offs_c
        m = rmask[:, None] & (cc[None, :] < b)
        x = tl.load(u_ptr + rows[:, None] * stride_u + cc[None, :], mask=m, other=0.0).to(ACC)
        score = tl.load(s_ptr + rows[:, None] * stride_s + tbase + cc[None, :], mask=m, other=0.0)
        tie = tl.load(tie_ptr + tbase + cc, mask=cc < b, other=1.0)
        target = tl.where(score == 0, tie[None, :], tl.where(score > 0, 1.0, -1.0)).to(ACC)
        t01 = (target + 1.0) * 0.5
        E = tl.exp(-2.0 * tl.abs(x))  # exp(-2|x|) in (0, 1]
        inv = one / (one + E)
        sig = tl.where(x >= 0, inv, E * inv)  # sigmoid(2x)
        th_abs = (one - E) * inv  # |tanh x|
        dev = th_abs - one
        z = 2.0 * x
        # BCE-with-logits as torch evaluates it: (1 - t) z - min(z, 0) + log1p(exp(-|z|))
        e = (one - t01) * z - tl.minimum(z, 0.0) + _log1p_small(E) + lam_ * dev * dev
        sign = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0)).to(ACC)
        dx = 2.0 * (sig - t01) + 2.0 * lam_ * dev * sign * (one - th_abs * th_abs)
        tl.store(grad_ptr + rows[:, None] * P + lo + cc[None, :], dx * scale, mask=m)
        acc += tl.where(m, e, 0.0)
    tl.store(part_ptr + blk.to(tl.int64) * K + k, tl.sum(tl.sum(acc, axis=1), axis=0) * scale)


@on_tensor_device
def csq_grads_triton(u: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, tie: torch.Tensor,
                     bits: Sequence[int], lambda_: float):
    """((K,) L_k, (B, sum b_k) packed dL_k/du[:, :b_k]) of reference.csq_grads, in u's dtype."""
    bits = csq_grads_args(u, labels, centers, tie, bits)
    n_len, total_cols, batch = len(bits), sum(bits), u.shape[0]
    if batch == 0:  # a mean over nothing: nan, as the spec
        return torch.full((n_len,), float("nan"), dtype=u.dtype, device=u.device), u.new_empty(0, total_cols)
    shared = centers.shape[1] != total_cols
    u = u.contiguous()
    scores = (labels @ centers).contiguous()
    acc = tl.float64 if u.dtype == torch.float64 else tl.float32
    block_r = 32
    n_blocks = triton.cdiv(batch, block_r)
    grad = torch.empty((batch, total_cols), dtype=u.dtype, device=u.device)
    part = torch.empty((n_blocks, n_len), dtype=u.dtype, device=u.device)
    block_c = max(16, min(64, triton.next_power_of_2(bits[-1])))
    _csq_grads_kernel[(n_blocks, n_len)](u, scores, tie.contiguous(), packed_offsets(bits, u.device), grad, part, batch,
                                         u.stride(0), scores.stride(0), total_cols, n_len, float(lambda_),
                                         SHARED=shared, ACC=acc, BLOCK_R=block_r, BLOCK_C=block_c)
    return part.sum(0), grad
