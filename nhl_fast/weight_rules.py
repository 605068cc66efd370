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
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

WEIGHT_RULES = ("dominance", "bounded")


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
