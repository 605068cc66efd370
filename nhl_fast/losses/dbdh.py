"""DBDH: deep balanced discrete hashing."""
from __future__ import annotations

from nhl_fast.losses import register
from nhl_fast.losses._common import prefix_sum
from nhl_fast.losses._likelihood import BankLikelihood


@register("dbdh")
class DBDH(BankLikelihood):
    """L_k = mean_{i,n} [log(1 + e^{theta_in}) - s_in theta_in] + alpha mean_i |mean_{j<b_k} u_ij|^p, u clamped to [-1, 1].

    Source: Zheng et al., "Deep Balanced Discrete Hashing for Image Retrieval", Neurocomputing 2020;
    DeepHash-pytorch DBDH.py, NHL bit_length/DBDH.py (alpha = 0.1, p = 2, memory bank of clamped codes).
    """

    def __init__(self, bit_list, num_classes=None, num_train=None, alpha: float = 0.1, p: int = 2):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train, alpha=alpha)
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p!r}")
        self.p = p

    def relax(self, u):
        return u.clamp(min=-1, max=1)

    def quantization(self, u):
        row_mean = prefix_sum(u, self.bit_list) / self.bits_like(u)   # (B, K): balance of each prefix
        bal = row_mean.abs() if self.p == 1 else row_mean.pow(2)
        return bal.mean(0)
