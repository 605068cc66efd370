"""DTSH: deep supervised hashing with triplet labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nhl_fast.losses import register
from nhl_fast.losses._common import HashLoss, prefix_gram, prefix_sum


@register("dtsh")
class DTSH(HashLoss):
    """L_k = mean_{a valid} mean_{p in P_a, n in N_a} log(1 + e^{-t_apn}) + lambda_ mean (u - sign u)^2, t_apn = clip(<u_a,u_p> - <u_a,u_n> - alpha, -100, 50) on b_k bits.

    Source: Wang et al., "Deep Supervised Hashing with Triplet Labels", ACCV 2016; DeepHash-pytorch DTSH.py,
    NHL bit_length/DTSH.py (alpha = 5, lambda = 1; P_a = in-batch items sharing a label with anchor a,
    itself included; anchors need both a positive and a negative). All B^3 triplets of all K lengths
    are masked (B, B, B) tensor expressions (one per length, Grams from one product): no loop over anchors.
    """

    min_batch = 2

    def __init__(self, bit_list, num_classes=None, num_train=None, alpha: float = 5.0, lambda_: float = 1.0):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        self.alpha = float(alpha)
        self.lambda_ = float(lambda_)

    def forward(self, u, labels, indices=None):
        u, y, _ = self.prepare(u, labels, indices)
        theta = prefix_gram(u, u, self.bit_list)                         # (K, B, B)
        pos = (y @ y.T > 0).to(u.dtype)                                  # (B, B)
        neg = 1 - pos
        n_pos, n_neg = pos.sum(1), neg.sum(1)
        valid = (n_pos > 0) & (n_neg > 0)
        mask = pos[:, :, None] * neg[:, None, :]                         # (a, p, n), shared by all lengths
        # one (B, B, B) block per length: the stacked (K, B, B, B) tensor would fall out of cache
        per_anchor = []
        for th in theta:
            t = (th[:, :, None] - th[:, None, :] - self.alpha).clamp(min=-100, max=50)
            per_anchor.append((F.softplus(-t) * mask).sum((1, 2)))
        per_anchor = torch.stack(per_anchor) / (n_pos * n_neg).clamp(min=1)          # (K, B)
        count = valid.sum()
        trip = torch.where(count > 0, (per_anchor * valid).sum(1) / count.clamp(min=1), per_anchor.new_zeros(()))
        quant = prefix_sum((u - u.sign()).pow(2), self.bit_list).sum(0) / (u.shape[0] * self.bits_like(u))
        return trip + self.lambda_ * quant
