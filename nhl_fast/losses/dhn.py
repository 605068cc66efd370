"""DHN: deep hashing network."""
from __future__ import annotations

from nhl_fast.losses import register
from nhl_fast.losses._common import prefix_sum
from nhl_fast.losses._likelihood import BankLikelihood


@register("dhn")
class DHN(BankLikelihood):
    """L_k = mean_{i,n} [log(1 + e^{theta_in}) - s_in theta_in] + alpha mean log cosh(|u| - 1), theta_in = <u_i, U_n>_{b_k}/2.

    Source: Zhu et al., "Deep Hashing Network for Efficient Similarity Retrieval", AAAI 2016;
    DeepHash-pytorch DHN.py, NHL bit_length/DHN.py (alpha = 0.1, memory bank U/Y).
    """

    def quantization(self, u):
        return prefix_sum((u.abs() - 1).cosh().log(), self.bit_list).sum(0) / (u.shape[0] * self.bits_like(u))
