"""Triton sorted_nce_backward: (du, dv, dz, dz_anchor) of sorted_nce (spec: reference.sorted_nce_backward).

Recomputes the forward's rank terms (kernels/sorted_nce.py), then, with G_r = dL/dc_r from the closed form of
the loss over ranks (torch, elementwise on (K, B, B)):
  alpha_r = G_r / (|e_r| |a_i|), beta_r = -G_r c_r / |e_r|^2, delta_i = -sum_r G_r c_r / |a_i|^2
  dL/dPt_rj = alpha_r mt[i, j] + beta_r <e_r, z_j>     (straight-through in the hard variant)
One program per (length, anchor) recomputes its SoftSort tiles and writes dL/dD_i. (the softmax backward, and
the |q_r - D_j| terms, q_r's routed to the candidate holding rank r); the soft variant also writes its row of
C = sum_r alpha_r Pt_r and adds sum_r beta_r Pt_r^T Pt_r to H (atomics). The hard variant's C and H are
scatter-adds of alpha, beta at j*(r) (torch). Then dz = C^T a + H z, da = C z + delta a, and du, dv from dD
through the prefix Grams' blocks (torch GEMMs).
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device

from ._projection_common import acc_and_precision
from .sorted_nce import (BLOCK_J, BLOCK_R, EPS, _anchor_setup, _rank_tile, _soft_gram_rows, check_args, prepare,
                         rank_logits, rank_terms)


@triton.jit
def _sorted_nce_back_kernel(d_ptr, its_ptr, mt_ptr, gz_ptr, al_ptr, be_ptr, dd_ptr, c_ptr, h_ptr, B,
                            HARD: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    i, row, inv_ts, offs_j, mj, d_j, rank, mrow = _anchor_setup(d_ptr, its_ptr, mt_ptr, B, BLOCK_B, BLOCK_R)
    dd = tl.zeros([BLOCK_B], dtype=ACC)
    crow = tl.zeros([BLOCK_B], dtype=ACC)
    for r0 in range(0, B, BLOCK_R):
        offs_r, mr, hit, q, jstar, pt, total = _rank_tile(d_j, offs_j, mj, rank, r0, B, inv_ts, BLOCK_B, BLOCK_R)
        al = tl.load(al_ptr + row * B + offs_r, mask=mr, other=0.0)
        be = tl.load(be_ptr + row * B + offs_r, mask=mr, other=0.0)
        if HARD:  # <e_r, z_j> = gz[j*, j]
            t = tl.load(gz_ptr + jstar[:, None].to(tl.int64) * B + offs_j[None, :], mask=mr[:, None] & mj[None, :],
                        other=0.0)
        else:
            t = _soft_gram_rows(d_ptr, gz_ptr, row, q, total, inv_ts, offs_j, mj, B, ACC, PRECISION, BLOCK_B,
                                BLOCK_R, BLOCK_J)
            crow += tl.sum(al[:, None] * pt, axis=0)
            for j0 in range(0, B, BLOCK_J):  # H[j, :] += sum_r beta_r Pt_rj Pt_r.
                offs_c = j0 + tl.arange(0, BLOCK_J)
                mc = offs_c < B
                d_c = tl.load(d_ptr + row * B + offs_c, mask=mc, other=0.0)
                p_c = tl.where(mc[None, :], tl.exp(-tl.abs(q[:, None] - d_c[None, :]) * inv_ts), 0.0) / total[:, None]
                h = tl.dot(tl.trans((p_c * be[:, None]).to(ACC)), pt.to(ACC), input_precision=PRECISION,
                           out_dtype=ACC)
                tl.atomic_add(h_ptr + offs_c[:, None].to(tl.int64) * B + offs_j[None, :], h,
                              mask=mc[:, None] & mj[None, :])
        dpt = al[:, None] * mrow[None, :] + be[:, None] * t
        s = tl.sum(pt * dpt, axis=1)
        diff = q[:, None] - d_j[None, :]
        sg = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        dl = tl.where(mr[:, None] & mj[None, :], pt * (dpt - s[:, None]) * sg * inv_ts, 0.0)
        dd += tl.sum(dl, axis=0)
        dq = -tl.sum(dl, axis=1)
        dd += tl.sum(tl.where(hit, dq[:, None], 0.0), axis=0)  # q_r is the distance of the candidate at rank r
    tl.store(dd_ptr + row * B + offs_j, dd, mask=mj)
    if not HARD:
        tl.store(c_ptr + row * B + offs_j, crow, mask=mj)


@on_tensor_device
def sorted_nce_backward_triton(grad: torch.Tensor, u: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                               z_anchor: torch.Tensor, bits: Sequence[int], m: int, tau: float,
                               sort_tau: Sequence[float], hard: bool):
    """(du, dv, dz, dz_anchor) of reference.sorted_nce_backward."""
    from nhl_fast import _checks

    op = "sorted_nce_backward"
    bits = check_args(op, u, v, z, z_anchor, bits, m, tau, sort_tau)
    _checks.shaped(grad, "grad", (len(bits),), u.dtype, op, like="u")
    n_len, batch = len(bits), u.shape[0]
    dist, gz, mt, anorm, inv_ts = prepare(op, u, v, z, z_anchor, bits, sort_tau)
    dot, n2, jstar = rank_terms(dist, gz, mt, inv_ts, hard)
    x, norm = rank_logits(dot, n2, anorm, tau)
    # dL/dc: positives exp(x_r - lae_r) - 1, negatives sum_{p<m} exp(x_r - lae_p), over m, times grad_k / (B tau)
    neg = torch.logsumexp(x[..., m:], dim=-1, keepdim=True)
    lae = torch.logaddexp(x[..., :m], neg)
    dx = torch.cat([torch.exp(x[..., :m] - lae) - 1, torch.exp(x[..., m:, None] - lae[..., None, :]).sum(-1)], -1)
    g = dx * (grad.detach().to(u.dtype) / (m * batch * tau))[:, None, None]
    c = x * tau
    ne = norm.clamp_min(EPS)
    na = anorm.clamp_min(EPS)
    alpha = (g / (ne * na[None, :, None])).contiguous()
    beta = torch.where(norm > EPS, -g * c / (ne * ne), torch.zeros_like(g)).contiguous()
    delta = torch.where(anorm > EPS, -(g * c).sum(dim=(0, 2)) / (na * na), torch.zeros_like(anorm))

    ddist = torch.empty_like(dist)
    cmat = torch.empty_like(dist) if not hard else ddist  # unused by the hard kernel
    h = torch.zeros((batch, batch), dtype=u.dtype, device=u.device)
    acc, _ = acc_and_precision(u.dtype)
    _sorted_nce_back_kernel[(n_len, batch)](dist, inv_ts, mt, gz, alpha, beta, ddist, cmat, h, batch, HARD=hard,
                                            ACC=acc, PRECISION="ieee", BLOCK_B=max(16, triton.next_power_of_2(batch)),
                                            BLOCK_R=BLOCK_R, BLOCK_J=BLOCK_J)
    z, z_anchor = z.contiguous(), z_anchor.contiguous()
    if hard:  # C[i, j*] += alpha, H[j*, j*] += beta
        cols = jstar.long().permute(1, 0, 2).reshape(batch, -1)
        coef = torch.zeros((batch, batch), dtype=u.dtype, device=u.device)
        coef.scatter_add_(1, cols, alpha.permute(1, 0, 2).reshape(batch, -1))
        hdiag = torch.zeros(batch, dtype=u.dtype, device=u.device).scatter_add_(0, jstar.long().flatten(),
                                                                               beta.flatten())
        dz = coef.T @ z_anchor + hdiag[:, None] * z
    else:
        coef = cmat.sum(0)
        dz = coef.T @ z_anchor + h @ z
    da = coef @ z + delta[:, None] * z_anchor
    # D_k = (b_k - u v^T) / (2 b_k): column block k of du takes W_k = sum_{k' >= k} -dD_k' / (2 b_k')
    du, dv = torch.empty_like(u), torch.empty_like(v)
    w = torch.zeros((batch, batch), dtype=u.dtype, device=u.device)
    for k in range(n_len - 1, -1, -1):
        w = w + ddist[k] * (-0.5 / bits[k])
        lo = bits[k - 1] if k else 0
        du[:, lo:bits[k]] = w @ v[:, lo:bits[k]]
        dv[:, lo:bits[k]] = w.T @ u[:, lo:bits[k]]
    return du, dv, dz, da
