"""DSH: deep supervised hashing (contrastive loss against a memory bank)."""
from __future__ import annotations

import torch

from nhl_fast.losses import register
from nhl_fast.losses._common import HashLoss, prefix_sum


@register("dsh")
class DSH(HashLoss):
    """L_k = mean_{i,n} [s_in/2 d_in + (1-s_in)/2 max(0, 2 b_k - d_in)] + alpha mean |1 - |u_i||, d_in = ||u_i - U_n||^2 on b_k bits.

    Source: Liu et al., "Deep Supervised Hashing for Fast Image Retrieval", CVPR 2016; DeepHash-pytorch DSH.py,
    NHL bit_length/DSH.py (margin m = 2 b, alpha = 0.1, U/Y = bank of the training set's latest codes/labels).
    s_in = 1 when y_i and Y_n share a label. One (num_train, b_max) bank serves every length (prefix views).
    """

    uses_bank = True

    def __init__(self, bit_list, num_classes=None, num_train=None, alpha: float = 0.1):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        self.alpha = float(alpha)

    def forward(self, u, labels, indices):
        u, y, idx = self.prepare(u, labels, indices)
        self.write_bank(u, y, idx)
        U, Y = self.bank(u)
        bits = self.bits_like(u)
        sq_u = prefix_sum(u * u, self.bit_list)                       # (B, K)
        sq_U = prefix_sum(U * U, self.bit_list)                       # (N, K)
        dissim = y @ Y.T == 0                                         # (B, N), once for all lengths
        # per length over the (B, N) bank block: a stacked (K, B, N) tensor falls out of cache
        pair = []
        for k, b in enumerate(self.bit_list):
            dist = sq_u[:, k, None] + sq_U[None, :, k] - 2 * (u[:, :b] @ U[:, :b].T)
            pair.append(torch.where(dissim, (2 * b - dist).clamp(min=0), dist).mean() / 2)
        quant = prefix_sum((1 - u.abs()).abs(), self.bit_list).sum(0) / (u.shape[0] * bits)
        return torch.stack(pair) + self.alpha * quant
