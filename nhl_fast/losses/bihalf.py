"""BiHalf: Li and van Gemert, "Deep Unsupervised Image Hashing by Maximizing Bit Entropy",
AAAI 2021 (arXiv 2012.12334; reference code liyunqianggyn/Deep-Unsupervised-Image-Hashing)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from nhl_fast.losses import register
from nhl_fast.losses._common import prefix_sum
from nhl_fast.losses._similarity import check_scalar, latent_target, similarity_mse
from nhl_fast.losses.base import UnsupervisedNestedLoss


def bi_half(u: Tensor) -> Tensor:
    """+-1 per column: the floor(N/2) largest entries of each column +1, the rest -1 (the
    optimal transport of a column onto the half-half distribution). Ties: the lower row first."""
    n = u.shape[0]
    order = torch.sort(u.detach(), dim=0, descending=True, stable=True).indices
    ranked = torch.cat([u.new_ones(n // 2, u.shape[1]), -u.new_ones(n - n // 2, u.shape[1])])
    return torch.empty_like(u).scatter_(0, order, ranked)


@register("bihalf")
class BiHalfLoss(UnsupervisedNestedLoss):
    """Nested BiHalf: the bi-half layer + the latents' cosine structure kept in the codes.

    u, u_other: raw head outputs (``relax="none"``) of two views, z, z_other their latents
    (required). The bi-half layer runs over the 2B stacked rows U = [u; u'] per bit: column c
    of B = bihalf(U) is +1 on its floor(2B/2) largest entries. It is per column, so the codes of
    length b_k are the prefixes B[:, :b_k]: one layer call serves every length. Per length:
        L_k = mean_{i,j} (cos(B_i[:b_k], B'_j[:b_k]) - cos(z_i, z'_j))^2 + gamma / (2 n_k) ||U_k - B_k||^2
    with n_k = 2B * b_k and B_k detached. The reference's layer passes the gradient straight
    through plus gamma (U - B) / numel(B) in its backward; the second term is that extra gradient
    written as a loss (same gradient; the value includes the penalty, which the reference's does not).
    Latent cosines are detached (the reference's come from frozen VGG-16 fc7 features); every
    cross-view pair (i, j) is used (the reference: the B/2 pairs of a batch's two halves).

    Published defaults: gamma 6 (reference code), SGD lr 1e-4 momentum 0.9 (DeepHash-pytorch) or
    Adam 1e-4 (reference), batch 32-64.
    """

    def __init__(self, bit_list, num_classes: Optional[int] = None, num_train: Optional[int] = None, *,
                 gamma: float = 6.0):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        self.gamma = check_scalar("gamma", gamma)

    def forward(self, u: Tensor, u_other: Tensor, indices: Optional[Tensor] = None, *,
                z: Optional[Tensor] = None, z_other: Optional[Tensor] = None) -> Tensor:
        self.check_views(u, u_other, z, z_other)
        target = latent_target(z, z_other, "bihalf")
        B, b_max = u.shape[0], self.bit_list[-1]
        U = torch.cat([u[:, :b_max], u_other[:, :b_max]])
        Bh = bi_half(U)
        codes = U + (Bh - U).detach()                    # straight through
        sim = similarity_mse(codes[:B], codes[B:], target, self.bit_list)
        n_k = U.shape[0] * torch.tensor(self.bit_list, dtype=U.dtype, device=U.device)
        pen = prefix_sum((U - Bh) ** 2, self.bit_list).sum(0)
        return sim + self.gamma / (2 * n_k) * pen

    def extra_repr(self) -> str:
        return f"bit_list={self.bit_list}, gamma={self.gamma}"
