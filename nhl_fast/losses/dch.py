"""DCH: deep Cauchy hashing."""
from __future__ import annotations

import torch

from nhl_fast.losses import register
from nhl_fast.losses._common import HashLoss, prefix_gram, prefix_sum


@register("dch")
class DCH(HashLoss):
    """L_k = mean_ij w_ij [s_ij log(d_ij/gamma) + log(1 + gamma/d_ij)] + lambda_ mean_i log(1 + d(|u_i|, 1)/gamma), d = b_k/2 (1 - min(cos, 0.99)).

    Source: Cao et al., "Deep Cauchy Hashing for Hamming Space Retrieval", CVPR 2018; DeepHash-pytorch DCH.py,
    NHL bit_length/DCH.py (gamma = 20, lambda = 0.1; w balances similar/dissimilar pairs when both occur;
    cosine with the product of norms floored at 1e-4).
    """

    min_batch = 2

    def __init__(self, bit_list, num_classes=None, num_train=None, gamma: float = 20.0, lambda_: float = 0.1):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.lambda_ = float(lambda_)

    def forward(self, u, labels, indices=None):
        u, y, _ = self.prepare(u, labels, indices)
        bits = self.bits_like(u)
        s = (y @ y.T > 0).to(u.dtype)
        n, n_sim = float(s.numel()), s.sum()
        both = (n_sim > 0) & (n_sim < n)
        w = torch.where(both, s * n / n_sim.clamp(min=1) + (1 - s) * n / (n - n_sim).clamp(min=1), torch.ones_like(s))
        norm = prefix_sum(u * u, self.bit_list).T.sqrt()                      # (K, B)
        cos = prefix_gram(u, u, self.bit_list) / (norm[:, :, None] * norm[:, None, :]).clamp(min=1e-4)
        d = (1 - cos.clamp(max=0.99)) * bits[:, None, None] / 2
        cauchy = w * (s * torch.log(d / self.gamma) + torch.log(1 + self.gamma / d))
        # distance of |u_i| to the all-ones code
        cos_q = prefix_sum(u.abs(), self.bit_list).T / (norm * bits[:, None].sqrt()).clamp(min=1e-4)
        d_q = (1 - cos_q.clamp(max=0.99)) * bits[:, None] / 2
        quant = torch.log(1 + d_q / self.gamma)
        return cauchy.mean((1, 2)) + self.lambda_ * quant.mean(1)
