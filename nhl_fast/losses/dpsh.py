"""DPSH: deep pairwise-supervised hashing."""
from __future__ import annotations

from nhl_fast.losses import register
from nhl_fast.losses._common import prefix_sum
from nhl_fast.losses._likelihood import BankLikelihood


@register("dpsh")
class DPSH(BankLikelihood):
    """L_k = mean_{i,n} [log(1 + e^{theta_in}) - s_in theta_in] + alpha mean (u - sign u)^2, theta_in = <u_i, U_n>_{b_k}/2.

    Source: Li et al., "Feature Learning based Deep Supervised Hashing with Pairwise Labels", IJCAI 2016;
    DeepHash-pytorch DPSH.py (alpha = 0.1, memory bank U/Y).
    """

    def quantization(self, u):
        return prefix_sum((u - u.sign()).pow(2), self.bit_list).sum(0) / (u.shape[0] * self.bits_like(u))
