"""LCDSH: locality-constrained deep supervised hashing."""
from __future__ import annotations

import torch.nn.functional as F

from nhl_fast.losses import register
from nhl_fast.losses._common import HashLoss, prefix_gram


@register("lcdsh")
class LCDSH(HashLoss):
    """L_k = mean_ij log(1 + e^{-s_ij phi_ij}) + lambda_ mean_ij (sigmoid(phi_ij) - sigmoid(<b_i,b_j>/2))^2, phi = clip(<u_i,u_j>/2, -50, 50), b = sign u, s = +-1, on b_k bits.

    Source: Zhu & Gao, "Locality-Constrained Deep Supervised Hashing for Image Retrieval", IJCAI 2017; DeepHash-pytorch LCDSH.py,
    NHL bit_length/LCDSH.py (lambda = 3).
    """

    min_batch = 2

    def __init__(self, bit_list, num_classes=None, num_train=None, lambda_: float = 3.0):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        self.lambda_ = float(lambda_)

    def forward(self, u, labels, indices=None):
        u, y, _ = self.prepare(u, labels, indices)
        s = 2 * (y @ y.T > 0).to(u.dtype) - 1
        phi = (prefix_gram(u, u, self.bit_list) * 0.5).clamp(min=-50, max=50)
        l1 = F.softplus(-s * phi).mean((1, 2))
        b = u.detach().sign()
        phi_b = prefix_gram(b, b, self.bit_list) * 0.5
        l2 = (phi.sigmoid() - phi_b.sigmoid()).pow(2).mean((1, 2))
        return l1 + self.lambda_ * l2
