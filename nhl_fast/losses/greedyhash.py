"""GreedyHash, unsupervised: Su, Zhang, Han, Tian, "Greedy Hash: Towards Fast Optimization for
Accurate Hash Coding in CNN", NeurIPS 2018 (reference code ssppp/GreedyHash; the unsupervised
recipe as in DeepHash-pytorch's GreedyHashUnsupervised)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from nhl_fast.losses import register
from nhl_fast.losses._common import prefix_sum
from nhl_fast.losses._similarity import check_scalar, latent_target, similarity_mse
from nhl_fast.losses._views import sign_ste
from nhl_fast.losses.base import UnsupervisedNestedLoss


@register("greedyhash")
class GreedyHashLoss(UnsupervisedNestedLoss):
    """Nested unsupervised GreedyHash: keep the latents' cosine structure in the sign codes.

    u, u_other: raw head outputs (``relax="none"``) of two views; z, z_other: their latents
    (required). b = sign(u) forward, identity backward (the greedy hash layer). Per length b_k:
        L_k = mean_{i,j} (cos(b_i[:b_k], b'_j[:b_k]) - cos(z_i, z'_j))^2
              + alpha * mean_{rows of [u; u'], c < b_k} | |u_ic| - 1 |^3
    with the latent cosines detached (the reference's targets come from frozen VGG-16 features).
    The reference pairs the first half of a batch with the second half (B/2 pairs of different
    images); here every cross-view pair (i, j) is used: j != i are those pairs of different
    images, j = i adds the two views of one image.

    Published defaults: alpha 0.1 (DeepHash-pytorch's unsupervised config; the p = 3 penalty of
    the paper), SGD lr 1e-4, momentum 0.9, weight decay 5e-4, batch 64.
    """

    def __init__(self, bit_list, num_classes: Optional[int] = None, num_train: Optional[int] = None, *,
                 alpha: float = 0.1):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        self.alpha = check_scalar("alpha", alpha)

    def forward(self, u: Tensor, u_other: Tensor, indices: Optional[Tensor] = None, *,
                z: Optional[Tensor] = None, z_other: Optional[Tensor] = None) -> Tensor:
        self.check_views(u, u_other, z, z_other)
        target = latent_target(z, z_other, "greedyhash")
        b_max = self.bit_list[-1]
        u, u_other = u[:, :b_max], u_other[:, :b_max]
        sim = similarity_mse(sign_ste(u), sign_ste(u_other), target, self.bit_list)
        pen = prefix_sum(((u.abs() - 1) ** 3).abs(), self.bit_list).sum(0) \
            + prefix_sum(((u_other.abs() - 1) ** 3).abs(), self.bit_list).sum(0)
        rows = 2 * u.shape[0]
        bits = torch.tensor(self.bit_list, dtype=u.dtype, device=u.device)
        return sim + self.alpha * pen / (rows * bits)

    def extra_repr(self) -> str:
        return f"bit_list={self.bit_list}, alpha={self.alpha}"
