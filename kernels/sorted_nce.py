"""Triton sorted_nce: SortedNCE of every code length through a fused SoftSort (spec: reference.sorted_nce).

The same algorithm as the C++ kernel (csrc/kernels/sorted_nce.h): in each anchor's sorted order (torch's stable
sort of the (K, B, N) distances of B anchors to N candidates, q_r = D_i,pi(r)) the SoftSort weights
w_rs = exp(-|q_r - q_s| / tau_s) factor into two linear recurrences with factors
f_r = exp(-(q_r - q_{r-1}) / tau_s) <= 1,
  F_r = f_r F_{r-1} + x_r (s <= r),   K_r = f_{r+1} (K_{r+1} + x_{r+1}) (s > r),   (W x)_r = F_r + K_r,
so the soft sorted latent e~_r = (W z_pi)_r / Z_r (Z = W 1) costs O(N d) per anchor: no (B, N, N) permutation
and no (B, N, d) sorted latents. One program walks its anchors' ranks with d-wide running sums; the K_r rows
of the anchor in hand sit in the program's own (N, d) scratch slot (programs are capped so that the slots stay
within SCRATCH elements). Per rank it writes <a_i, e~_r>, <h_r, e~_r> (h_r = e~_r soft, z_j*(r) hard) and, for
the backward, the strict parts <a_i | h_r, Ca_r - Ab_r> (q_s > q_r minus q_s < q_r). The hard forward reads
<a_i, z_j*> and |z_j*|^2 (a z^T and the norms, torch). The loss over ranks (a logsumexp per anchor) is a few
elementwise torch ops on the (K, B, N) rank logits. The backward (kernels/sorted_nce_backward.py) recomputes.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device

EPS = 1e-8         # the norm floor of the reference's cosine
MAX_BATCH = 2048   # kept for the batch check of the op contract
SCRATCH = 1 << 24  # elements of (B, d) scratch slots over all programs


@triton.jit
def _soft_latents(z_ptr, a_ptr, ord_ptr, q_ptr, f_ptr, last_ptr, js_ptr, buf_ptr, row, i, B, d, HARD: tl.constexpr,
                  STATS: tl.constexpr, BLOCK_D: tl.constexpr, ea_ptr, eh_ptr, sl_ptr, sh_ptr, zs_ptr):
    """Anchor row `row` (= k n_anchors + i) of B (= the op's N) candidates: e~_r into the slot buf (B, d); with
    STATS the per-rank scalars (see above), and Z_r into zs."""
    offs = tl.arange(0, BLOCK_D)
    md = offs < d
    base = row * B
    a = tl.load(a_ptr + i * d + offs, mask=md, other=0.0)
    acc = tl.zeros([BLOCK_D], dtype=a.dtype)
    k1 = tl.sum(acc, axis=0)
    for rr in range(0, B):  # K_r = sum_{s>r} w_rs z_pi(s) into buf[r], its scalar twin into zs
        r = B - 1 - rr
        nxt = r + 1
        ok = nxt < B
        fac = tl.load(f_ptr + base + nxt, mask=ok, other=0.0)
        jn = tl.load(ord_ptr + base + nxt, mask=ok, other=0)
        zn = tl.load(z_ptr + jn.to(tl.int64) * d + offs, mask=md & ok, other=0.0)
        acc = fac * (acc + zn)
        k1 = fac * (k1 + 1.0)
        tl.store(buf_ptr + r * d + offs, acc, mask=md)
        tl.store(zs_ptr + base + r, k1)
    tl.debug_barrier()
    acc = tl.zeros([BLOCK_D], dtype=a.dtype)
    lo = tl.zeros([BLOCK_D], dtype=a.dtype)
    f1 = tl.sum(acc, axis=0)
    q_prev = tl.load(q_ptr + base)
    for r in range(0, B):  # F_r, its strict part Ab_r (lo), e~_r = (F_r + K_r) / Z_r over K_r
        fr = tl.load(f_ptr + base + r)
        qr = tl.load(q_ptr + base + r)
        jr = tl.load(ord_ptr + base + r)
        keep = (r > 0) & (qr == q_prev)
        lo = tl.where(keep, lo, fr * acc)
        acc = fr * acc + tl.load(z_ptr + jr.to(tl.int64) * d + offs, mask=md, other=0.0)
        f1 = fr * f1 + 1.0
        zr = f1 + tl.load(zs_ptr + base + r)
        kr = tl.load(buf_ptr + r * d + offs, mask=md, other=0.0)
        e = (acc + kr) / zr
        if HARD:
            js = tl.load(js_ptr + base + r)
            h = tl.load(z_ptr + js.to(tl.int64) * d + offs, mask=md, other=0.0)
        else:
            h = e
        if STATS:
            lr = tl.load(last_ptr + base + r)
            diff = tl.load(buf_ptr + lr * d + offs, mask=md, other=0.0) - lo  # Ca_r - Ab_r (buf[last] still K)
            tl.store(sl_ptr + base + r, tl.sum(a * diff, axis=0))
            tl.store(sh_ptr + base + r, tl.sum(h * diff, axis=0))
            tl.store(ea_ptr + base + r, tl.sum(a * e, axis=0))
            tl.store(eh_ptr + base + r, tl.sum(h * e, axis=0))
        tl.debug_barrier()
        tl.store(buf_ptr + r * d + offs, e, mask=md)
        tl.store(zs_ptr + base + r, zr)
        q_prev = qr


@triton.jit
def _sorted_nce_rows_kernel(z_ptr, a_ptr, ord_ptr, q_ptr, f_ptr, last_ptr, js_ptr, buf_ptr, ea_ptr, eh_ptr, sl_ptr,
                            sh_ptr, zs_ptr, A, B, d, n_rows, HARD: tl.constexpr, BLOCK_D: tl.constexpr):
    """Programs stride over the (length, anchor) rows (A anchors, B candidates); each owns one (B, d) scratch
    slot."""
    pid = tl.program_id(0)
    slot = buf_ptr + (pid + tl.zeros([], tl.int64)) * B * d
    for row_ in range(pid, n_rows, tl.num_programs(0)):
        row = row_ + tl.zeros([], tl.int64)
        i = row % A
        _soft_latents(z_ptr, a_ptr, ord_ptr, q_ptr, f_ptr, last_ptr, js_ptr, slot, row, i, B, d, HARD,
                      True, BLOCK_D, ea_ptr, eh_ptr, sl_ptr, sh_ptr, zs_ptr)


def check_args(op: str, u, v, z, z_anchor, bits, m, tau, sort_tau) -> tuple:
    """The op's argument checks (nhl_fast._checks.sorted_nce_args, as csrc/checks.h check_sorted_nce), plus the
    Triton path's batch limit."""
    from nhl_fast import _checks

    bits = _checks.sorted_nce_args(u, v, z, z_anchor, bits, m, tau, sort_tau, op)
    if max(u.shape[0], v.shape[0]) > MAX_BATCH:
        raise ValueError(f"{op}: the Triton kernel takes B, N <= {MAX_BATCH} anchors and candidates, got B = "
                         f"{u.shape[0]}, N = {v.shape[0]}; use backend='cpp' on CPU tensors")
    return bits


def prepare(op: str, u, v, z, z_anchor, bits: Sequence[int], sort_tau: Sequence[float]) -> dict:
    """D_k from one running prefix Gram, each row's stable sort (order, q), the recurrence factors f, the hard
    picks j*(r) (first candidate of r's tie group), the last rank of r's tie group, a z^T, |z_j|^2 and |a_i|."""
    batch, n_cand = u.shape[0], v.shape[0]
    dist = torch.empty((len(bits), batch, n_cand), dtype=u.dtype, device=u.device)
    gram = torch.zeros((batch, n_cand), dtype=u.dtype, device=u.device)
    lo = 0
    for k, b in enumerate(bits):
        gram = torch.addmm(gram, u[:, lo:b], v[:, lo:b].T)
        torch.mul(gram, -0.5 / b, out=dist[k]).add_(0.5)
        lo = b
    if not bool(torch.isfinite(dist).all()):
        raise ValueError(f"{op}: u and v must be finite")
    q, order = torch.sort(dist, dim=-1, stable=True)
    inv_ts = torch.tensor([1.0 / t for t in sort_tau], dtype=u.dtype, device=u.device)
    f = torch.zeros_like(q)
    f[..., 1:] = torch.exp(-(q[..., 1:] - q[..., :-1]) * inv_ts[:, None, None])  # exactly 1 on a tie
    ranks = torch.arange(n_cand, device=u.device).expand_as(order)
    start = torch.ones_like(q, dtype=torch.bool)
    start[..., 1:] = q[..., 1:] != q[..., :-1]
    first = torch.where(start, ranks, 0).cummax(-1).values
    end = torch.ones_like(start)
    end[..., :-1] = start[..., 1:]
    last = torch.where(end, ranks, n_cand).flip(-1).cummin(-1).values.flip(-1)
    z, z_anchor = z.contiguous(), z_anchor.contiguous()
    return {"dist": dist, "q": q.contiguous(), "order": order.contiguous(), "f": f, "inv_ts": inv_ts,
            "jstar": order.gather(-1, first).contiguous(), "last": last.contiguous(), "z": z, "a": z_anchor,
            "mt": z_anchor @ z.T, "zn2": z.square().sum(1), "anorm": torch.linalg.vector_norm(z_anchor, dim=1)}


def programs(p: dict) -> int:
    n_rows, n_cand, d = p["q"].shape[0] * p["q"].shape[1], p["q"].shape[2], p["z"].shape[1]
    return max(1, min(n_rows, SCRATCH // (n_cand * d)))


def rank_terms(p: dict, hard: bool) -> dict:
    """Per (length, anchor, rank), each (K, B, N): <a_i, e~_r> (ea), <h_r, e~_r> (eh), the strict parts sl, sh,
    and Z_r (zs)."""
    z = p["z"]
    n_cand, d = z.shape
    batch = p["q"].shape[1]
    n_rows = p["q"].shape[0] * batch
    out = {name: torch.empty_like(p["q"]) for name in ("ea", "eh", "sl", "sh", "zs")}
    grid = programs(p)
    buf = torch.empty((grid, n_cand, d), dtype=z.dtype, device=z.device)
    _sorted_nce_rows_kernel[(grid,)](z, p["a"], p["order"], p["q"], p["f"], p["last"], p["jstar"], buf, out["ea"],
                                     out["eh"], out["sl"], out["sh"], out["zs"], batch, n_cand, d, n_rows, HARD=hard,
                                     BLOCK_D=triton.next_power_of_2(d))
    return out


def rank_logits(p: dict, t: dict, tau: float, hard: bool):
    """x = c / tau with c_r = <h_r, a_i> / (max(|h_r|, eps) max(|a_i|, eps)), and |h_r|."""
    if hard:
        dot = p["mt"][torch.arange(p["q"].shape[1], device=p["q"].device)[None, :, None], p["jstar"]]
        n2 = p["zn2"][p["jstar"]]
    else:
        dot, n2 = t["ea"], t["eh"]
    norm = n2.clamp_min(0).sqrt()
    c = dot / (norm.clamp_min(EPS) * p["anorm"].clamp_min(EPS)[None, :, None])
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
    p = prepare("sorted_nce", u, v, z, z_anchor, bits, sort_tau)
    t = None if hard else rank_terms(p, hard)
    x, _ = rank_logits(p, t, tau, hard)
    return losses(x, m)
