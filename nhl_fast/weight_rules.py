"""Rules that turn the per-length gradient dots of NHLObjective into the K length weights.

``dominance`` is the NHL paper's rule (reference.dominance_weights, run inside the nhl_objective op):
a_ij = tau_i / -d_ij where the length-j gradient conflicts with a shorter length i past tau_i, capped by
the anchor a_i,i+1, and w_j = prod_{i<j} a_ij, normalised to sum K. Measured (bench/bench_fidelity.py):

* with a linear head on features it is exactly 1: the per-length losses are means over b_k bits, so the
  longer lengths' gradients on the shared rows are ~b_i/b_j of the shorter one's and the dot rarely
  passes tau_i = beta n_i^2 / (K-1);
* with a backbone, once a short length has converged its gradient norm n_i is small, every longer length
  conflicts far past tau_i, and the product over i < j compounds: the weights collapse to one length
  (e.g. [4.73, 0.067, 0.067, 0.067, 0.067], 70 : 1) and the long codes stop learning.

``bounded`` keeps the rule's direction (a length that conflicts with a shorter one is turned down) but
bounds it: w_j = max(floor, min_{i<j} a_ij) (the worst conflict, not the product of all of them), then
normalised to mean 1, so no length is ever weighted below ``floor`` / (its share); ``BoundedWeights`` also
smooths the weights over steps (an exponential moving average, ``momentum``), since one batch's dots are
noisy estimates. Measured on bench/bench_fidelity.py it equals the dominance rule wherever the lengths do
not conflict (CSQ with joint centres: weights 1.00) and is better where they do (DPSH with an MLP backbone,
worst length -0.008 vs -0.015 below the independent heads): NHLObjective's default. It runs on the torch spec
(about 2x the objective's cost on CPU; the dominance rule is inside the nhl_objective op).

``pcgrad`` is gradient surgery (Yu et al., NeurIPS 2020, "Gradient Surgery for Multi-Task Learning") over the
K lengths: each length's gradient g_i on the head's weight W (the parameter every length shares: rows
[0, b_i) of W) is projected off every other length's gradient it conflicts with (negative dot), and the
projected gradients are summed. Every projected gradient is a linear combination of the original ones, so
with the Gram matrix of the g_k (the objective's ``dots``: <g_i[:b_i], g_j[:b_i]> is the full dot, g_i being
zero past row b_i) the whole surgery runs on K x K coefficients: g_i^PC = sum_m C_im g_m, and the summed
gradient is sum_m w_m g_m with w_m = sum_i C_im. Those w are this rule's weights, held constant in the
backward like every rule's, so W gets exactly PCGrad's gradient, and the layer's input (the backbone)
receives the same combination of the per-length gradients. Projection order: fixed (the paper draws it at
random per step): for each i, j = 1..K in increasing length, j != i, each against the ORIGINAL g_j as in
the paper's Algorithm 1. The weights are not normalised (PCGrad sums; without conflicts they are all 1, and
they are never below 1: a projection adds back part of the partner's gradient). Measured on
bench/bench_fidelity.py it is inert where the nested head loses (weights 1.00: CSQ with joint centres, DPSH
with a linear head: the lengths compete for the shared rows without opposing each other) and no better where
it acts (DPSH + MLP, DCH with a linear head): an option, not the default.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

WEIGHT_RULES = ("dominance", "bounded", "pcgrad")


def bounded_weights(dots: Tensor, beta: float, floor: float = 0.5):
    """(weights (K,), conflicts (K, K) bool) from the gradient dots d[i, j] = <g_i[:b_i], g_j[:b_i]>:
    tau_i = beta n_i^2 / (K-1), a_ij = tau_i / -d_ij where d_ij < -tau_i else 1 (i < j),
    w_j = max(floor, min_{i<j} a_ij) (w_0 = 1), w <- K w / sum(w)."""
    k = dots.shape[0]
    tau = beta * dots.diagonal() / max(k - 1, 1)
    upper = torch.ones(k, k, dtype=torch.bool, device=dots.device).triu(1)
    conflicts = upper & (dots < -tau[:, None])
    alpha = torch.where(conflicts, tau[:, None] / -dots, torch.ones_like(dots))
    w = alpha.min(0).values.clamp(min=floor)  # column j: the worst conflict with a shorter length
    return k * w / w.sum(), conflicts


class BoundedWeights(nn.Module):
    """The ``bounded`` rule with an exponential moving average over training steps (state: ``ema``)."""

    def __init__(self, beta: float = 1.0, floor: float = 0.5, momentum: float = 0.9):
        super().__init__()
        if not 0 < floor <= 1:
            raise ValueError(f"weight_floor must be in (0, 1], got {floor!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"weight_momentum must be in [0, 1), got {momentum!r}")
        self.beta, self.floor, self.momentum = float(beta), float(floor), float(momentum)
        self.ema: Optional[Tensor] = None

    def forward(self, dots: Tensor):
        w, conflicts = bounded_weights(dots, self.beta, self.floor)
        if self.training and self.momentum > 0:
            w = w if self.ema is None else self.momentum * self.ema + (1 - self.momentum) * w
            self.ema = w.detach()
        return w, conflicts


def pcgrad_weights(dots: Tensor):
    """(weights (K,), conflicts (K, K) bool) of PCGrad from the Gram matrix dots[i, j] = <g_i, g_j>: the
    coefficients w with sum_m w_m g_m = sum_i g_i^PC, where g_i^PC starts at g_i and, for j = 0..K-1 (j != i,
    fixed order), loses (<g_i^PC, g_j> / |g_j|^2) g_j whenever <g_i^PC, g_j> < 0 (g_j = 0 is skipped).
    conflicts[i, j] (i < j): the original g_i and g_j conflict (<g_i, g_j> < 0). No host sync."""
    k = dots.shape[0]
    eye = torch.eye(k, dtype=dots.dtype, device=dots.device)
    norm2 = dots.diagonal()
    coef = eye.clone()  # row i: g_i^PC in the basis g_1..g_K
    for j in range(k):
        d = coef @ dots[:, j]  # <g_i^PC, g_j> for every i at once (row j is not projected on itself)
        step = torch.where((d < 0) & (norm2[j] > 0), d / norm2[j].clamp(min=torch.finfo(dots.dtype).tiny), 0.0)
        step = step * (1 - eye[j])
        coef = coef - step[:, None] * eye[j]
    upper = torch.ones(k, k, dtype=torch.bool, device=dots.device).triu(1)
    return coef.sum(0), upper & (dots < 0)


class PCGradWeights(nn.Module):
    """The ``pcgrad`` rule as a module (no state: one step's gradients, one projection)."""

    def forward(self, dots: Tensor):
        return pcgrad_weights(dots)
