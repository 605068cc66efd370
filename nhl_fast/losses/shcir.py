"""SHCIR: semantic hash centres for image retrieval."""
from __future__ import annotations

import torch

from nhl_fast.losses import register
from nhl_fast.losses._centered import CenteredLoss


@register("shcir")
class SHCIR(CenteredLoss):
    """L_k = -mean_i mean_{p in P_i} [z_ip - log D_ip + sum_{n not in P_i} log(1 - e^{z_in}/D_ip)/(C-1)] + lambda_ mean (|u|-1)^2, z = sqrt(b_k)(cos(u_i, h_c) - margin), D_ip = e^{z_ip} + sum_n e^{z_in}.

    Source: Chen et al., "Deep Hashing with Semantic Hash Centers for Image Retrieval", 2025; NHL bit_length/SHCIR.py
    (lambda = 1e-4, margin = 0); for one label per
    sample P_i is that label and this is the reference's formula, for several labels it averages over them.
    Centres: the reference's are SEMANTIC — generated offline from a PRETRAINED CLASSIFIER's class head
    (SHCIR_cg.py -> tmp_file/SHCIR/SHCIR_<dataset>_<bit>.npy). Pass them (or ones you built from your own
    classifier) as ``centers=`` (a (C, b_max) tensor, or K (C, b_k) tensors). Without them we fall back to
    distance-maximising centres with no semantic structure (as MDSH) — a reasonable loss, not SHCIR's method.
    """

    center_method = "optimized"

    def __init__(self, bit_list, num_classes=None, num_train=None, lambda_: float = 1e-4, margin: float = 0.0,
                 centers="per_length", seed: int = 0):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train, centers=centers, seed=seed)
        if self.num_classes < 2:
            raise ValueError("SHCIR needs num_classes >= 2")
        self.lambda_ = float(lambda_)
        self.margin = float(margin)

    def forward(self, u, labels, indices=None):
        u, y, _ = self.prepare(u, labels, indices)
        C = self.num_classes
        z = (self.center_logits(u) - self.margin) * self.bits_like(u).sqrt()[:, None, None]   # (K, B, C)
        pos = y > 0
        # masked entries get finite stand-ins (not -inf) so no NaN leaks into the gradient
        neg_lse = torch.where(pos, -1e4, z).logsumexp(-1, keepdim=True)                     # log sum_n e^{z_n}
        log_d = torch.logaddexp(z, neg_lse)                                                  # (K, B, C): log D_ip
        # log(1 - e^{z_n} / D_p) for every (p, n): (K, B, C_p, C_n); e^{z_n} < D_p whenever n is a negative
        ratio = torch.where(pos[None, :, None, :], -1.0, z[:, :, None, :] - log_d[:, :, :, None])
        neg_term = torch.where(pos[None, :, None, :], 0.0, torch.log1p(-ratio.exp())).sum(-1) / (C - 1)
        per_pos = z - log_d + neg_term                                                       # (K, B, C)
        n_pos = pos.sum(1).clamp(min=1).to(u.dtype)
        ce = -(torch.where(pos, per_pos, 0.0).sum(-1) / n_pos).mean(1)
        quant = self.per_length_mean((self.layout(u).abs() - 1).pow(2))
        return ce + self.lambda_ * quant
