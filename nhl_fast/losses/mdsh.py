"""MDSH: deep hashing with maximally distant hash centres."""
from __future__ import annotations

import torch

from nhl_fast.losses import register
from nhl_fast.losses._centered import QuantizedCenterLoss


@register("mdsh")
class MDSH(QuantizedCenterLoss):
    """L_k = -mean_{i,c} [y_ic log p_ic + (1 - y_ic) log(1 - p_ic)] + lambda_ mean (|u| - 1)^2, p_i = softmax_c(sqrt(b_k) cos(u_i, h_c)), on b_k bits.

    Source: Wang et al., "Deep Hashing with Minimal-Distance-Separated Hash Centers", CVPR 2023; NHL bit_length/MDSH.py (lambda = 1e-4).
    Centres: the reference loads offline-optimised centres (bit_length/MDSH_cg.py -> tmp_file/MDSH/*.npy);
    we generate distance-maximising ones ourselves (``centers="per_length"``: greedy maximisation of the
    minimum Hamming distance per length; ``"nested"``: the same over all prefixes at once), or pass yours
    (e.g. the reference's arrays) as a (C, b_max) tensor or K (C, b_k) tensors. The reference's
    momentum-bank pair term needs a momentum encoder and is switched off in the NHL code (the epoch
    passed is always 0, below its epoch_change = 9), so it is not part of this loss.
    """

    center_method = "optimized"

    def forward(self, u, labels, indices=None):
        u, y, _ = self.prepare(u, labels, indices)
        logits = self.center_logits(u) * self.bits_like(u).sqrt()[:, None, None]   # (K, B, C)
        logp = logits.log_softmax(-1)
        log1mp = torch.log1p(-logits.softmax(-1))
        ce = -(y * logp + (1 - y) * log1mp).mean((1, 2))
        quant = self.per_length_mean((self.layout(u).abs() - 1).pow(2))
        return ce + self.lambda_ * quant
