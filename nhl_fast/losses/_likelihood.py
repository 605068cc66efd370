"""The pairwise-likelihood family against a memory bank (DPSH, DHN, DBDH).

All three share  mean_{i,n} [log(1 + exp(theta_in)) - s_in theta_in],  theta_in = <u_i, U_n>/2 on b_k bits,
s_in = 1 when y_i and Y_n share a label, U/Y the bank of the training set's latest codes and labels
(written before the loss reads it, as the references do); they differ in the relaxation and the
quantization term. One (num_train, b_max) bank serves every length through prefix views.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nhl_fast.losses._common import HashLoss


class BankLikelihood(HashLoss):
    uses_bank = True

    def __init__(self, bit_list, num_classes=None, num_train=None, alpha: float = 0.1):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        self.alpha = float(alpha)

    def relax(self, u: Tensor) -> Tensor:
        return u

    def quantization(self, u: Tensor) -> Tensor:  # (K,)
        raise NotImplementedError

    def forward(self, u, labels, indices):
        u, y, idx = self.prepare(u, labels, indices)
        u = self.relax(u)
        self.write_bank(u, y, idx)
        U, Y = self.bank(u)
        s = (y @ Y.T > 0).to(u.dtype)                                 # (B, N), once for all lengths
        # per length over the (B, N) bank block: a stacked (K, B, N) tensor falls out of cache
        like = []
        for b in self.bit_list:
            theta = 0.5 * (u[:, :b] @ U[:, :b].T)
            # log(1 + e^theta) - s theta; softplus = the references' log(1 + e^-|theta|) + max(theta, 0), one pass
            like.append((F.softplus(theta) - s * theta).mean())
        return torch.stack(like) + self.alpha * self.quantization(u)
