"""Triton sorted_nce_backward: (du, dv, dz, dz_anchor) of sorted_nce (spec: reference.sorted_nce_backward).

Recomputes the forward's rank terms (kernels/sorted_nce.py: the recurrences), then, with G_r = dL/dc_r from the
closed form of the loss over ranks (torch, elementwise on (K, B, N): B anchors, N candidates), h_r the forward latent:
  alpha_r = G_r / (|h_r| |a_i|), beta_r = -G_r c_r / |h_r|^2, delta_i = -sum_r G_r c_r / |a_i|^2,
  y_r = (alpha_r a_i + beta_r h_r) / Z_r, gamma_r = <y_r, e~_r>   (dL/dw_rs = <y_r, z_s - e~_r>; straight-through
  in the hard variant: the soft rows take the hard rows' gradient)
and D_i,pi(k) = q_k receives (the derivation: csrc/kernels/sorted_nce.h)
  dq_k = (1/tau_s) [ <y_k, Ca_k - Ab_k> + gamma_k (Zb_k - Za_k) + <z_k, Ya_k - Yb_k> + Gb_k - Ga_k ]
(Xb / Xa: the strict sums over q_s < q_k / q_s > q_k of w_ks x_s, x = z_pi, 1, y, gamma).
One program per anchor row (strided, as the forward) runs the two scans of y (the a_i part as a scalar scan of
alpha / Z, the h part d-wide), of gamma and of 1, writing dD_i. and, soft, its row of C = sum_r alpha_r P_r. (the
scalar scan's full sum) and (W (beta h / Z)) into dz (atomics). The hard variant's C and dz are scatter-adds at
j*(r) (torch). Then dz += C^T a, da = C z + delta a, and du, dv from dD through the prefix Grams' blocks.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device

from .sorted_nce import EPS, _soft_latents, check_args, prepare, programs, rank_logits, rank_terms


@triton.jit
def _latent_of(z_ptr, js_ptr, slot, base, r, offs, md, d, HARD: tl.constexpr):
    """h_r: z_j*(r) (hard) or e~_r from the slot (soft)."""
    if HARD:
        js = tl.load(js_ptr + base + r)
        h = tl.load(z_ptr + js.to(tl.int64) * d + offs, mask=md, other=0.0)
    else:
        h = tl.load(slot + r * d + offs, mask=md, other=0.0)
    return h


@triton.jit
def _sorted_nce_back_kernel(z_ptr, a_ptr, ord_ptr, q_ptr, f_ptr, last_ptr, js_ptr, mt_ptr, buf_ptr, zs_ptr, xa_ptr,
                            xb_ptr, gam_ptr, part_ptr, inv_ts_ptr, dd_ptr, c_ptr, dz_ptr, A, B, d, n_rows,
                            HARD: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    slot = buf_ptr + (pid + tl.zeros([], tl.int64)) * B * d
    offs = tl.arange(0, BLOCK_D)
    md = offs < d
    for row_ in range(pid, n_rows, tl.num_programs(0)):
        row = row_ + tl.zeros([], tl.int64)
        i = row % A  # A anchors, B (= the op's N) candidates
        base = row * B
        inv_ts = tl.load(inv_ts_ptr + row // A)
        if not HARD:  # e~_r back into the slot (the scalars were kept from the first pass)
            _soft_latents(z_ptr, a_ptr, ord_ptr, q_ptr, f_ptr, last_ptr, js_ptr, slot, row, i, B, d, HARD, False,
                          BLOCK_D, zs_ptr, zs_ptr, zs_ptr, zs_ptr, zs_ptr)
            tl.debug_barrier()
        acc = tl.zeros([BLOCK_D], dtype=tl.load(zs_ptr + base).dtype)
        lo, zero = acc, tl.sum(acc, axis=0)
        s1, sl, g1, gl, o1, ol = zero, zero, zero, zero, zero, zero  # running sums (1) and strict parts (l)
        q_prev = tl.load(q_ptr + base)
        for r in range(0, B):  # strict below and inclusive scans of alpha / Z, gamma and x = beta h / Z
            fr = tl.load(f_ptr + base + r)
            qr = tl.load(q_ptr + base + r)
            j = tl.load(ord_ptr + base + r)
            keep = (r > 0) & (qr == q_prev)
            lo = tl.where(keep, lo, fr * acc)
            sl = tl.where(keep, sl, fr * s1)
            gl = tl.where(keep, gl, fr * g1)
            ol = tl.where(keep, ol, fr * o1)
            zj = tl.load(z_ptr + j.to(tl.int64) * d + offs, mask=md, other=0.0)
            h = _latent_of(z_ptr, js_ptr, slot, base, r, offs, md, d, HARD)
            acc = fr * acc + tl.load(xb_ptr + base + r) * h
            s1 = fr * s1 + tl.load(xa_ptr + base + r)
            gam = tl.load(gam_ptr + base + r)
            g1 = fr * g1 + gam
            o1 = fr * o1 + 1.0
            mt = tl.load(mt_ptr + i * B + j)
            part = tl.load(part_ptr + base + r) + gam * ol + gl - mt * sl - tl.sum(zj * lo, axis=0)
            tl.store(dd_ptr + base + j, part)
            if not HARD:
                tl.store(c_ptr + base + j, s1)
                tl.atomic_add(dz_ptr + j.to(tl.int64) * d + offs, acc, mask=md)
            q_prev = qr
        acc, lo = tl.zeros([BLOCK_D], dtype=zero.dtype), tl.zeros([BLOCK_D], dtype=zero.dtype)
        s2, sh, g2, gh, o2, oh = zero, zero, zero, zero, zero, zero  # running sums (2) and strict parts (h)
        for rr in range(0, B):  # strict above and exclusive scans
            r = B - 1 - rr
            nxt = r + 1
            ok = nxt < B
            fac = tl.load(f_ptr + base + nxt, mask=ok, other=0.0)
            qn = tl.load(q_ptr + base + nxt, mask=ok, other=0.0)
            qr = tl.load(q_ptr + base + r)
            hn = _latent_of(z_ptr, js_ptr, slot, base, nxt, offs, md & ok, d, HARD)
            acc = fac * (acc + tl.load(xb_ptr + base + nxt, mask=ok, other=0.0) * hn)
            s2 = fac * (s2 + tl.load(xa_ptr + base + nxt, mask=ok, other=0.0))
            g2 = fac * (g2 + tl.load(gam_ptr + base + nxt, mask=ok, other=0.0))
            o2 = fac * (o2 + 1.0)
            new = ok & (qn != qr)
            lo = tl.where(new, acc, lo)
            sh = tl.where(new, s2, sh)
            gh = tl.where(new, g2, gh)
            oh = tl.where(new, o2, oh)
            j = tl.load(ord_ptr + base + r)
            zj = tl.load(z_ptr + j.to(tl.int64) * d + offs, mask=md, other=0.0)
            mt = tl.load(mt_ptr + i * B + j)
            gam = tl.load(gam_ptr + base + r)
            total = tl.load(dd_ptr + base + j) - gam * oh + mt * sh + tl.sum(zj * lo, axis=0) - gh
            tl.store(dd_ptr + base + j, total * inv_ts)
            if not HARD:
                tl.store(c_ptr + base + j, tl.load(c_ptr + base + j) + s2)
                tl.atomic_add(dz_ptr + j.to(tl.int64) * d + offs, acc, mask=md)


@on_tensor_device
def sorted_nce_backward_triton(grad: torch.Tensor, u: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                               z_anchor: torch.Tensor, bits: Sequence[int], m: int, tau: float,
                               sort_tau: Sequence[float], hard: bool):
    """(du, dv, dz, dz_anchor) of reference.sorted_nce_backward."""
    from nhl_fast import _checks

    op = "sorted_nce_backward"
    bits = check_args(op, u, v, z, z_anchor, bits, m, tau, sort_tau)
    _checks.shaped(grad, "grad", (len(bits),), u.dtype, op, like="u")
    n_len, batch, n_cand, d = len(bits), u.shape[0], v.shape[0], z.shape[1]
    p = prepare(op, u, v, z, z_anchor, bits, sort_tau)
    t = rank_terms(p, hard)
    x, norm = rank_logits(p, t, tau, hard)
    # dL/dc: positives exp(x_r - lae_r) - 1, negatives sum_{p<m} exp(x_r - lae_p), over m, times grad_k / (B tau)
    neg = torch.logsumexp(x[..., m:], dim=-1, keepdim=True)
    lae = torch.logaddexp(x[..., :m], neg)
    dx = torch.cat([torch.exp(x[..., :m] - lae) - 1, torch.exp(x[..., m:, None] - lae[..., None, :]).sum(-1)], -1)
    g = dx * (grad.detach().to(u.dtype) / (m * batch * tau))[:, None, None]
    c = x * tau
    ne = norm.clamp_min(EPS)
    na = p["anorm"].clamp_min(EPS)
    alpha = g / (ne * na[None, :, None])
    beta = torch.where(norm > EPS, -g * c / (ne * ne), torch.zeros_like(g))
    delta = torch.where(p["anorm"] > EPS, -(g * c).sum(dim=(0, 2)) / (na * na), torch.zeros_like(na))
    zs = t["zs"]
    gam = (alpha * t["ea"] + beta * t["eh"]) / zs
    part = ((alpha * t["sl"] + beta * t["sh"]) / zs).contiguous()

    ddist = torch.empty_like(p["dist"])
    cmat = torch.empty_like(p["dist"]) if not hard else ddist  # unused by the hard kernel
    dz = torch.zeros_like(p["z"])
    grid = programs(p)
    buf = torch.empty((grid, n_cand, d), dtype=u.dtype, device=u.device)
    _sorted_nce_back_kernel[(grid,)](p["z"], p["a"], p["order"], p["q"], p["f"], p["last"], p["jstar"], p["mt"], buf,
                                     zs, (alpha / zs).contiguous(), (beta / zs).contiguous(), gam.contiguous(), part,
                                     p["inv_ts"], ddist, cmat, dz, batch, n_cand, d, n_len * batch, HARD=hard,
                                     BLOCK_D=triton.next_power_of_2(d))
    z, z_anchor = p["z"], p["a"]
    if hard:  # C[i, j*] += alpha, dz[j*] += beta z_j*
        jstar = p["jstar"]
        cols = jstar.permute(1, 0, 2).reshape(batch, -1)
        coef = torch.zeros((batch, n_cand), dtype=u.dtype, device=u.device)
        coef.scatter_add_(1, cols, alpha.permute(1, 0, 2).reshape(batch, -1))
        hdiag = torch.zeros(n_cand, dtype=u.dtype, device=u.device).scatter_add_(0, jstar.flatten(), beta.flatten())
        dz += hdiag[:, None] * z
    else:
        coef = cmat.sum(0)
    dz += coef.T @ z_anchor
    da = coef @ z + delta[:, None] * z_anchor
    # D_k = (b_k - u v^T) / (2 b_k): column block k of du takes W_k = sum_{k' >= k} -dD_k' / (2 b_k')
    du, dv = torch.empty_like(u), torch.empty_like(v)
    w = torch.zeros((batch, n_cand), dtype=u.dtype, device=u.device)
    for k in range(n_len - 1, -1, -1):
        w = w + ddist[k] * (-0.5 / bits[k])
        lo = bits[k - 1] if k else 0
        du[:, lo:bits[k]] = w @ v[:, lo:bits[k]]
        dv[:, lo:bits[k]] = w.T @ u[:, lo:bits[k]]
    return du, dv, dz, da

