"""Triton nhl_objective: the NHL objective's forward for one batch (spec: reference.nhl_objective): the cascade
distillation, the K x K weight-gradient dots, the dominance-aware weights, the weighted total and d total/du
(weights constant), in a fixed number of launches whatever K (7 with distillation and adaptive weights):

  1-3. cascade_distill_triton (kernels/cascade_distill.py) when distill > 0;
  4. _weight_grad_rows_kernel: Gz = (grads + distill grad_d) * du/dz, written transposed and zero-padded as
     (K, b_max, B) (rows past b_k zero), so that
  5. ONE GEMM gives every length's weight gradient g = Gz^T x, (K b_max, in) (the spec's K GEMMs), and
  6. ONE GEMM the dots d_ij = <g_i, g_j> (rows past b_i are zero: <g_i[:b_i], g_j[:b_i]>);
  7. _fold_kernel over (row block, column block) tiles of grad_u: every program evaluates the dominance rule
     on the K x K dots (a few hundred flops, cheaper than a launch), folds sum_k final_k (dL_k/du + distill
     dD_k/du) onto u's columns, and program (0, 0) stores the weights, conflicts, total (and the zero dots /
     distillation values of the parts that are off).

The torch spec runs K GEMMs and their copies, ~18 ops of dominance_weights, the distillation's ~29 and the
index building and folding (~95 ops at K = 5): at training batch sizes every one of them is launch-bound.
"""
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from nhl_fast._checks import objective_args
from nhl_fast.kernels import on_tensor_device

from .cascade_distill import cascade_distill_triton, packed_offsets


@triton.jit
def _weight_grad_rows_kernel(grads_ptr, gradd_ptr, deriv_ptr, off_ptr, out_ptr, B, P, b_max, distill: tl.float64,
                             HAS_GRADS: tl.constexpr, HAS_DISTILL: tl.constexpr, HAS_DERIV: tl.constexpr,
                             ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[k, c, r] = (grads + distill grad_d)[r, off_k + c] * deriv[r, c] for c < b_k, else 0."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    k = tl.program_id(2)
    lo = tl.load(off_ptr + k)
    b = tl.load(off_ptr + k + 1) - lo
    rmask = rows < B
    inside = rmask[:, None] & (cols[None, :] < b)
    src = rows[:, None] * P + lo + cols[None, :]
    g = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    if HAS_GRADS:
        g = tl.load(grads_ptr + src, mask=inside, other=0.0).to(ACC)
    if HAS_DISTILL:
        g = g + tl.full([], distill, ACC) * tl.load(gradd_ptr + src, mask=inside, other=0.0).to(ACC)
    if HAS_DERIV:
        g = g * tl.load(deriv_ptr + rows[:, None] * b_max + cols[None, :], mask=inside, other=0.0).to(ACC)
    g = tl.where(inside, g, 0.0)
    dst = (k.to(tl.int64) * b_max + cols[None, :]) * B + rows[:, None]
    tl.store(out_ptr + dst, g, mask=rmask[:, None] & (cols[None, :] < b_max))


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _fold_kernel(grads_ptr, gradd_ptr, losses_ptr, dots_ptr, off_ptr, dist_ptr, grad_u_ptr, w_ptr, conf_ptr,
                 total_ptr, B, P, b_max, K, beta: tl.float64, distill: tl.float64, ADAPTIVE: tl.constexpr,
                 FAITHFUL: tl.constexpr, CLOSED: tl.constexpr, DISTILL: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    ki = tl.arange(0, BLOCK_K)
    kin = ki < K
    one = tl.full([], 1.0, ACC)
    distill_ = tl.full([], distill, ACC)  # tl.full: exact for the fp64 arguments
    # --- the weights (reference.dominance_weights), evaluated by every program
    ii = ki[:, None]
    jj = ki[None, :]
    valid = (ii < K) & (jj < K)
    if ADAPTIVE:
        d = tl.load(dots_ptr + ii * K + jj, mask=valid, other=0.0).to(ACC)
        if FAITHFUL:  # ||g_1[:b_i]||^2 = d[0, 0] for every i
            d00 = tl.sum(tl.sum(tl.where((ii == 0) & (jj == 0), d, 0.0), axis=1), axis=0)
            norm2 = tl.zeros((BLOCK_K,), dtype=ACC) + d00
        else:
            norm2 = tl.sum(tl.where(ii == jj, d, 0.0), axis=1)
        tau = tl.full([], beta, ACC) * norm2 / (K - 1)
        upper = valid & (jj > ii)
        conflict = upper & (d < -tau[:, None])
        alpha = tl.where(conflict, tau[:, None] / tl.where(conflict, -d, one), one)
        anchor = tl.sum(tl.where(jj == ii + 1, alpha, 0.0), axis=1)  # a_{i,i+1}; the last row has none
        anchor = tl.where(ki < K - 1, anchor, one)
        alpha = tl.where(upper, tl.minimum(alpha, anchor[:, None]), one)
        w = tl.reduce(alpha, 0, _mul)  # w_j = prod_i a_ij (a_ij = 1 for i >= j)
        w = tl.where(kin, w, 0.0)
        w = K * w / tl.sum(w, axis=0)
    else:
        w = tl.where(kin, one, 0.0)
    final = w
    if FAITHFUL and ADAPTIVE and DISTILL:  # quirk 3: the longest length's term is dropped
        final = tl.where(ki == K - 1, 0.0, final)
    # --- grad_u[rows, cols] = sum_k final_k (dL_k/du if closed form) + final_k distill dD_k/du
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < B
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    if CLOSED or DISTILL:
        for k in range(K):
            lo = tl.load(off_ptr + k)
            b = tl.load(off_ptr + k + 1) - lo
            fk = tl.sum(tl.where(ki == k, final, 0.0), axis=0)
            m = rmask[:, None] & (cols[None, :] < b)
            src = rows[:, None] * P + lo + cols[None, :]
            term = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
            if CLOSED:
                term = fk * tl.load(grads_ptr + src, mask=m, other=0.0).to(ACC)
            if DISTILL:
                term = term + (fk * distill_) * tl.load(gradd_ptr + src, mask=m, other=0.0).to(ACC)
            acc += term
    tl.store(grad_u_ptr + rows[:, None] * b_max + cols[None, :], acc, mask=rmask[:, None] & (cols[None, :] < b_max))
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        tl.store(w_ptr + ki, w, mask=kin)
        if ADAPTIVE:
            tl.store(conf_ptr + ii * K + jj, conflict, mask=valid)
        else:
            tl.store(conf_ptr + ii * K + jj, tl.zeros((BLOCK_K, BLOCK_K), dtype=tl.int1), mask=valid)
            tl.store(dots_ptr + ii * K + jj, tl.zeros((BLOCK_K, BLOCK_K), dtype=ACC), mask=valid)
        pair = ki < K - 1
        if DISTILL:
            dist = tl.load(dist_ptr + ki, mask=pair, other=0.0).to(ACC)
        else:
            dist = tl.zeros((BLOCK_K,), dtype=ACC)
            tl.store(dist_ptr + ki, dist, mask=pair)
        total = tl.zeros((), dtype=ACC)
        if CLOSED:
            losses = tl.load(losses_ptr + ki, mask=kin, other=0.0).to(ACC)
            total = tl.sum(tl.where(kin, final * losses, 0.0), axis=0)
        total = total + distill_ * tl.sum(tl.where(pair, final * dist, 0.0), axis=0)
        tl.store(total_ptr, total)


@on_tensor_device
def nhl_objective_triton(u: torch.Tensor, grads: Optional[torch.Tensor], losses: torch.Tensor,
                         x: Optional[torch.Tensor], relax_deriv: Optional[torch.Tensor], bits: Sequence[int],
                         beta: float, distill: float, faithful: bool, closed_form: bool):
    """(total, grad_u (B, b_max), weights (K,), conflicts (K, K) bool, dots (K, K), dist (K-1,)) of
    reference.nhl_objective, in u's dtype."""
    bits = objective_args(u, grads, losses, x, relax_deriv, bits, beta, distill, closed_form)
    n_len, total_cols = len(bits), sum(bits)
    batch, b_max = u.shape
    device, dtype = u.device, u.dtype
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    offsets = packed_offsets(bits, device)
    use_distill = distill > 0 and n_len > 1
    if use_distill:
        dist, grad_d = cascade_distill_triton(u, bits)
    else:
        dist, grad_d = torch.empty(n_len - 1, dtype=dtype, device=device), None  # zeroed by _fold_kernel
    grads = grads.contiguous() if grads is not None else None
    adaptive = x is not None and n_len > 1 and (grads is not None or use_distill)
    dots = torch.empty((n_len, n_len), dtype=dtype, device=device)  # zeroed by _fold_kernel when not adaptive
    if adaptive and batch > 0:
        gz = torch.empty((n_len, b_max, batch), dtype=dtype, device=device)
        block_r, block_c = 32, max(16, min(64, triton.next_power_of_2(b_max)))
        deriv = relax_deriv.contiguous() if relax_deriv is not None else None
        grid = (triton.cdiv(batch, block_r), triton.cdiv(b_max, block_c), n_len)
        _weight_grad_rows_kernel[grid](grads, grad_d, deriv, offsets, gz, batch, total_cols, b_max, float(distill),
                                       HAS_GRADS=grads is not None, HAS_DISTILL=use_distill,
                                       HAS_DERIV=deriv is not None, ACC=acc, BLOCK_R=block_r, BLOCK_C=block_c)
        g = torch.mm(gz.view(n_len * b_max, batch), x)  # every length's weight gradient, rows past b_k zero
        flat = g.view(n_len, -1)
        torch.mm(flat, flat.T, out=dots)
    elif adaptive:  # an empty batch: every weight gradient is 0
        dots.zero_()
    grad_u = torch.empty((batch, b_max), dtype=dtype, device=device)
    weights = torch.empty(n_len, dtype=dtype, device=device)
    conflicts = torch.empty((n_len, n_len), dtype=torch.bool, device=device)
    total = torch.empty((), dtype=dtype, device=device)
    block_r, block_c = 32, max(16, min(64, triton.next_power_of_2(b_max)))
    grid = (max(1, triton.cdiv(batch, block_r)), triton.cdiv(b_max, block_c))
    _fold_kernel[grid](grads, grad_d, losses.contiguous(), dots, offsets, dist, grad_u, weights, conflicts, total,
                       batch, total_cols, b_max, n_len, float(beta), float(distill), ADAPTIVE=adaptive,
                       FAITHFUL=bool(faithful), CLOSED=bool(closed_form), DISTILL=use_distill, ACC=acc,
                       BLOCK_K=max(2, triton.next_power_of_2(n_len)), BLOCK_R=block_r, BLOCK_C=block_c)
    return total, grad_u, weights, conflicts, dots, dist
