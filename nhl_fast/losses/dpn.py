"""DPN: deep polarized network."""
from __future__ import annotations

import torch

from nhl_fast.losses import register
from nhl_fast.losses._centered import CenteredLoss


@register("dpn")
class DPN(CenteredLoss):
    """L_k = mean_{i, j<b_k} max(0, m - u_ij t_ij), t = target vector of y_i (sign of the summed targets if multi-label).

    Source: Fan et al., "Deep Polarized Network for Supervised Learning of Accurate Binary Hashing Codes",
    IJCAI 2020; DeepHash-pytorch DPN.py, NHL bit_length/DPN.py (m = 1, p = 0.5: int(b p) random -1 bits per target).
    ``centers="nested"`` uses prefix-separated targets instead (nhl_fast.losses.centers).
    ``adaptive=True`` (the reference's "-A" variant) keeps the (num_train, b_max) code/label bank and
    ``update_targets()`` (call once per epoch) sets t_c = sign(sum_{n: y_nc = 1} ternary(U_n)),
    ternary(v) = sign(v) [|v| > m]; it is per column, so one bank update serves all lengths.
    """

    center_method = "dpn"

    def __init__(self, bit_list, num_classes=None, num_train=None, m: float = 1.0, p: float = 0.5,
                 centers="per_length", adaptive: bool = False, seed: int = 0):
        if not 0 < p < 1:
            raise ValueError(f"p must be in (0, 1), got {p!r}")
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train, centers=centers, seed=seed,
                         p=p, bank=adaptive)
        self.m = float(m)

    def forward(self, u, labels, indices=None):
        u, y, idx = self.prepare(u, labels, indices)
        if self.uses_bank:
            self.write_bank(u, y, idx)
        x = self.layout(u)
        t = self.targets(y)
        return self.per_length_mean((self.m - x * t).clamp(min=0))

    @torch.no_grad()
    def update_targets(self) -> None:
        if not self.uses_bank:
            raise RuntimeError("update_targets needs the bank: construct DPN with adaptive=True")
        tern = (self.U.abs() > self.m).float() * self.U.sign()
        new = (self.Y.t() @ tern).sign()                               # (C, b_max)
        self.centers_table.copy_(new.index_select(1, self.cols))
