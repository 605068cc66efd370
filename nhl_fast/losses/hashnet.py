"""HashNet: deep learning to hash by continuation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nhl_fast.losses import register
from nhl_fast.losses._common import HashLoss, prefix_gram


@register("hashnet")
class HashNet(HashLoss):
    """L_k = sum_{ij} w_ij [log(1 + e^{a_ij}) - s_ij a_ij] / B^2, a_ij = alpha <tanh(beta u_i), tanh(beta u_j)>_{b_k}, w = B^2/|S1| on similar pairs, B^2/|S0| on dissimilar.

    Source: Cao et al., "HashNet: Deep Learning to Hash by Continuation", ICCV 2017; DeepHash-pytorch HashNet.py
    (alpha = 0.1; continuation beta = sqrt(epoch // step_continuation + 1), step_continuation = 20:
    call ``set_epoch(epoch)`` at the start of every epoch, or set ``scale``).
    """

    min_batch = 2

    def __init__(self, bit_list, num_classes=None, num_train=None, alpha: float = 0.1,
                 step_continuation: int = 20):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        if step_continuation < 1:
            raise ValueError(f"step_continuation must be >= 1, got {step_continuation!r}")
        self.alpha = float(alpha)
        self.step_continuation = int(step_continuation)
        self.scale = 1.0

    def set_epoch(self, epoch: int) -> None:
        self.scale = (int(epoch) // self.step_continuation + 1) ** 0.5

    def forward(self, u, labels, indices=None):
        u, y, _ = self.prepare(u, labels, indices)
        u = torch.tanh(self.scale * u)
        s = (y @ y.T > 0).to(u.dtype)
        dot = self.alpha * prefix_gram(u, u, self.bit_list)             # (K, B, B)
        nlp = F.softplus(dot) - s * dot                                 # = dot + log(1 + e^-dot) - s dot
        total = float(s.numel())
        n_sim = s.sum()
        w = torch.where(s > 0, total / n_sim.clamp(min=1), total / (total - n_sim).clamp(min=1))
        return (w * nlp).sum((1, 2)) / total
