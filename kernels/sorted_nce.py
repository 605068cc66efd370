"""Triton sorted_nce: SortedNCE of every code length through a fused SoftSort (spec: reference.sorted_nce).

The same decomposition as the C++ kernel (csrc/kernels/sorted_nce.h): the d-wide work is three B x B Grams
(D_k from the prefix code Grams, gz = z z^T, mt = a z^T, torch GEMMs), and one program per (length, anchor)
walks the anchor's ranks in tiles of BLOCK_R against its whole candidate row (BLOCK_B >= B):
  - the stable rank of every candidate (B x B comparisons in tiles: no sort), the sorted distance q_r of each
    rank and the hard pick j*(r) (the first candidate with distance q_r) by masked reductions;
  - the SoftSort tile Pt = softmax_j(-|q_r - D_j| / tau_s) (largest logit exactly 0: no running max needed);
  - per rank only <e_r, a_i> and |e_r|^2: hard from the Grams (mt[i, j*], gz[j*, j*]), soft as Pt mt[i, :] and
    <Pt gz, Pt> (gz streamed in BLOCK_J-row chunks through tl.dot).
Nothing (B, B, B) or (B, B, d) is formed. The loss over ranks (a logsumexp per anchor) is a few elementwise torch
ops on the (K, B, B) rank logits. The backward (kernels/sorted_nce_backward.py) recomputes all of this.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device

from ._projection_common import acc_and_precision

EPS = 1e-8       # the norm floor of the reference's cosine
MAX_BATCH = 2048  # one program holds a BLOCK_R x BLOCK_B tile of its anchor's candidate row
BLOCK_R = 16
BLOCK_J = 16


@triton.jit
def _candidate_ranks(d_ptr, row, B, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr):
    """(offs, mask, distances, stable rank) of the anchor's candidates: rank_j = #{l: D_l < D_j or (D_l = D_j
    and l < j)}, the position of j in the stable ascending sort."""
    offs_j = tl.arange(0, BLOCK_B)
    mj = offs_j < B
    d_j = tl.load(d_ptr + row * B + offs_j, mask=mj, other=float("inf"))
    rank = tl.zeros([BLOCK_B], dtype=tl.int32)
    for l0 in range(0, B, BLOCK_R):
        offs_l = l0 + tl.arange(0, BLOCK_R)
        d_l = tl.load(d_ptr + row * B + offs_l, mask=offs_l < B, other=float("inf"))
        before = (d_l[:, None] < d_j[None, :]) | ((d_l[:, None] == d_j[None, :]) & (offs_l[:, None] < offs_j[None, :]))
        rank += tl.sum((before & (offs_l[:, None] < B)).to(tl.int32), axis=0)
    return offs_j, mj, d_j, rank


@triton.jit
def _anchor_setup(d_ptr, its_ptr, mt_ptr, B, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr):
    """This program's (length k, anchor i): its distance row's index, 1/tau_s, candidate ranks and mt[i, :]."""
    k = tl.program_id(0)
    i = tl.program_id(1)
    row = k.to(tl.int64) * B + i
    inv_ts = tl.load(its_ptr + k)
    offs_j, mj, d_j, rank = _candidate_ranks(d_ptr, row, B, BLOCK_B, BLOCK_R)
    mrow = tl.load(mt_ptr + i.to(tl.int64) * B + offs_j, mask=mj, other=0.0)
    return i, row, inv_ts, offs_j, mj, d_j, rank, mrow


@triton.jit
def _rank_tile(d_j, offs_j, mj, rank, r0, B, inv_ts, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr):
    """Ranks r0..r0+BLOCK_R: (offs, mask, one-hot rank->candidate, q_r, j*(r), SoftSort rows Pt, their sums)."""
    offs_r = r0 + tl.arange(0, BLOCK_R)
    mr = offs_r < B
    hit = (rank[None, :] == offs_r[:, None]) & mj[None, :]
    q = tl.sum(tl.where(hit, d_j[None, :], 0.0), axis=1)
    same = (d_j[None, :] == q[:, None]) & mj[None, :]
    jstar = tl.min(tl.where(same, offs_j[None, :], BLOCK_B), axis=1)
    jstar = tl.where(mr & (jstar < B), jstar, 0)
    w = tl.where(mj[None, :], tl.exp(-tl.abs(q[:, None] - d_j[None, :]) * inv_ts), 0.0)
    total = tl.sum(w, axis=1)
    return offs_r, mr, hit, q, jstar, w / total[:, None], total


@triton.jit
def _soft_gram_rows(d_ptr, gz_ptr, row, q, total, inv_ts, offs_j, mj, B, ACC: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    """Y = Pt gz (BLOCK_R x BLOCK_B): Y_rl = <e_r, z_l>, gz streamed in BLOCK_J-row chunks, Pt's chunk recomputed."""
    y = tl.zeros([BLOCK_R, BLOCK_B], dtype=ACC)
    for j0 in range(0, B, BLOCK_J):
        offs_c = j0 + tl.arange(0, BLOCK_J)
        mc = offs_c < B
        d_c = tl.load(d_ptr + row * B + offs_c, mask=mc, other=0.0)
        p_c = tl.where(mc[None, :], tl.exp(-tl.abs(q[:, None] - d_c[None, :]) * inv_ts), 0.0) / total[:, None]
        g_c = tl.load(gz_ptr + offs_c[:, None].to(tl.int64) * B + offs_j[None, :], mask=mc[:, None] & mj[None, :],
                      other=0.0)
        y = tl.dot(p_c.to(ACC), g_c.to(ACC), y, input_precision=PRECISION, out_dtype=ACC)
    return y


@triton.jit
def _sorted_nce_rows_kernel(d_ptr, its_ptr, mt_ptr, gz_ptr, dot_ptr, n2_ptr, js_ptr, B, HARD: tl.constexpr,
                            ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr,
                            BLOCK_J: tl.constexpr):
    """Per (length k, anchor i), every rank r: <e_r, a_i>, |e_r|^2 and j*(r), into (K, B, B) buffers."""
    i, row, inv_ts, offs_j, mj, d_j, rank, mrow = _anchor_setup(d_ptr, its_ptr, mt_ptr, B, BLOCK_B, BLOCK_R)
    for r0 in range(0, B, BLOCK_R):
        offs_r, mr, hit, q, jstar, pt, total = _rank_tile(d_j, offs_j, mj, rank, r0, B, inv_ts, BLOCK_B, BLOCK_R)
        if HARD:
            dot = tl.load(mt_ptr + i.to(tl.int64) * B + jstar, mask=mr, other=0.0)
            n2 = tl.load(gz_ptr + jstar.to(tl.int64) * B + jstar, mask=mr, other=0.0)
        else:
            dot = tl.sum(pt * mrow[None, :], axis=1)
            y = _soft_gram_rows(d_ptr, gz_ptr, row, q, total, inv_ts, offs_j, mj, B, ACC, PRECISION, BLOCK_B,
                                BLOCK_R, BLOCK_J)
            n2 = tl.sum(y * pt, axis=1)
        out = row * B + offs_r
        tl.store(dot_ptr + out, dot, mask=mr)
        tl.store(n2_ptr + out, n2, mask=mr)
        tl.store(js_ptr + out, jstar, mask=mr)


def check_args(op: str, u, v, z, z_anchor, bits, m, tau, sort_tau) -> tuple:
    """The op's argument checks (nhl_fast._checks.sorted_nce_args, as csrc/checks.h check_sorted_nce), plus the
    Triton path's batch limit."""
    from nhl_fast import _checks

    bits = _checks.sorted_nce_args(u, v, z, z_anchor, bits, m, tau, sort_tau, op)
    if u.shape[0] > MAX_BATCH:
        raise ValueError(f"{op}: the Triton kernel takes batches of B <= {MAX_BATCH} (one candidate row per program), "
                         f"got B = {u.shape[0]}; use backend='cpp' on CPU tensors")
    return bits


def prepare(op: str, u, v, z, z_anchor, bits: Sequence[int], sort_tau: Sequence[float]):
    """(D (K, B, B), gz, mt, |a|, 1/tau_s (K,)): D_k from one running prefix Gram, the B x B latent Grams."""
    batch = u.shape[0]
    dist = torch.empty((len(bits), batch, batch), dtype=u.dtype, device=u.device)
    gram = torch.zeros((batch, batch), dtype=u.dtype, device=u.device)
    lo = 0
    for k, b in enumerate(bits):
        gram = torch.addmm(gram, u[:, lo:b], v[:, lo:b].T)
        torch.mul(gram, -0.5 / b, out=dist[k]).add_(0.5)
        lo = b
    if not bool(torch.isfinite(dist).all()):
        raise ValueError(f"{op}: u and v must be finite")
    z, z_anchor = z.contiguous(), z_anchor.contiguous()
    inv_ts = torch.tensor([1.0 / t for t in sort_tau], dtype=u.dtype, device=u.device)
    return dist, z @ z.T, z_anchor @ z.T, torch.linalg.vector_norm(z_anchor, dim=1), inv_ts


def rank_terms(dist, gz, mt, inv_ts, hard: bool):
    """(<e_r, a_i>, |e_r|^2, j*(r)), each (K, B, B), from one launch over (length, anchor)."""
    n_len, batch = dist.shape[0], dist.shape[1]
    dot, n2 = torch.empty_like(dist), torch.empty_like(dist)
    jstar = torch.empty(dist.shape, dtype=torch.int32, device=dist.device)
    acc, precision = acc_and_precision(dist.dtype)
    precision = "ieee"  # |e_r|^2 feeds a cosine: no TF32
    _sorted_nce_rows_kernel[(n_len, batch)](dist, inv_ts, mt, gz, dot, n2, jstar, batch, HARD=hard, ACC=acc,
                                            PRECISION=precision, BLOCK_B=max(16, triton.next_power_of_2(batch)),
                                            BLOCK_R=BLOCK_R, BLOCK_J=BLOCK_J)
    return dot, n2, jstar


def rank_logits(dot, n2, anorm, tau: float):
    """x = c / tau with c_r = <e_r, a_i> / (max(|e_r|, eps) max(|a_i|, eps)), and |e_r|."""
    norm = n2.clamp_min(0).sqrt()
    c = dot / (norm.clamp_min(EPS) * anorm.clamp_min(EPS)[None, :, None])
    return c / tau, norm


def losses(x, m: int):
    """(K,) mean over anchors of (1/m) sum_{r<m} [logaddexp(x_r, logsumexp_{r>=m} x) - x_r]."""
    neg = torch.logsumexp(x[..., m:], dim=-1, keepdim=True)
    pos = x[..., :m]
    return (torch.logaddexp(pos, neg) - pos).mean(dim=(1, 2))


@on_tensor_device
def sorted_nce_triton(u: torch.Tensor, v: torch.Tensor, z: torch.Tensor, z_anchor: torch.Tensor, bits: Sequence[int],
                      m: int, tau: float, sort_tau: Sequence[float], hard: bool) -> torch.Tensor:
    """(K,) losses of reference.sorted_nce."""
    bits = check_args("sorted_nce", u, v, z, z_anchor, bits, m, tau, sort_tau)
    dist, gz, mt, anorm, inv_ts = prepare("sorted_nce", u, v, z, z_anchor, bits, sort_tau)
    dot, n2, _ = rank_terms(dist, gz, mt, inv_ts, hard)
    x, _ = rank_logits(dot, n2, anorm, tau)
    return losses(x, m)
