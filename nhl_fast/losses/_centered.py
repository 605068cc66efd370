"""Centre-based losses (CSQ, DPN, MDSH, SHCIR): the centre store and the label -> target map.

Centres are kept in one "column layout": nested -> (C, b_max), length k reads columns [0, b_k);
per_length -> (C, sum_k b_k), length k reads its own segment. A (K, ncols) averaging matrix
turns per-column sums into the K per-length means in one product, so every elementwise
centre loss is evaluated for all K lengths in one pass.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from nhl_fast.losses import centers as _c
from nhl_fast.losses import joint_centers as _jc
from nhl_fast.losses._common import HashLoss, prefix_gram, prefix_sum

CENTER_MODES = ("per_length", "nested", "joint")


class CenteredLoss(HashLoss):
    needs_classes = True
    center_method = "csq"  # how per_length centres are drawn (the reference's procedure)

    def __init__(self, bit_list, num_classes=None, num_train=None,
                 centers: Union[str, Tensor, Sequence[Tensor]] = "per_length", seed: int = 0, p: float = 0.5,
                 bank: bool = False):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train, bank=bank)
        C, bits = self.num_classes, self.bit_list
        gen = torch.Generator().manual_seed(int(seed))
        if isinstance(centers, str):
            if centers not in CENTER_MODES:
                raise ValueError(f"centers must be one of {CENTER_MODES} or a tensor, got {centers!r}")
            self.nested = centers in ("nested", "joint")
            if centers == "joint":  # every prefix separated jointly (joint_centers; its own seeded generator)
                table = _jc.joint_centers(C, bits, seed)
            elif self.nested:
                table = _c.nested_centers(C, bits, gen)
            else:
                table = torch.cat(_c.per_length_centers(C, bits, gen, self.center_method, p), 1)
        elif isinstance(centers, Tensor):
            self.nested = True
            if centers.shape != (C, self.b_max):
                raise ValueError(f"centers tensor must have shape (num_classes, b_max) = ({C}, {self.b_max}), "
                                 f"got {tuple(centers.shape)}")
            table = centers.detach().float().sign()
        elif isinstance(centers, (list, tuple)) and all(isinstance(t, Tensor) for t in centers):
            self.nested = False
            want = [(C, b) for b in bits]
            if [tuple(t.shape) for t in centers] != want:
                raise ValueError(f"centers list must hold K tensors of shapes {want}")
            table = torch.cat([t.detach().float().sign() for t in centers], 1)
        else:
            raise TypeError("centers must be 'per_length', 'nested', 'joint', a (C, b_max) tensor or a list of "
                            "(C, b_k) tensors")
        if (table == 0).any():
            raise ValueError("centers must be +-1 valued (no zeros)")
        if self.nested:
            cols = torch.arange(self.b_max)
            seg = [torch.arange(self.b_max) < b for b in bits]
        else:
            cols = torch.cat([torch.arange(b) for b in bits])
            starts = [0] + list(torch.tensor(bits).cumsum(0)[:-1].tolist())
            seg = [(torch.arange(len(cols)) >= s) & (torch.arange(len(cols)) < s + b) for s, b in zip(starts, bits)]
        # (K, ncols): 1 where column j belongs to length k
        avg = torch.stack([m.float() for m in seg])
        self.register_buffer("centers_table", table)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("avg", avg, persistent=False)
        # multi-label: a bit whose label-summed centre is 0 takes a fixed random sign (the references' tie rule)
        tie = torch.where(torch.rand(table.shape[1], generator=gen) < 0.5, -1.0, 1.0)
        self.register_buffer("tie", tie)

    def center_logits(self, u: Tensor) -> Tensor:
        """(K, B, C) cosine similarity of every prefix u[:, :b_k] with the length-k centres."""
        if self.nested:
            dots = prefix_gram(u, self.centers_table.to(u.dtype), self.bit_list)
        else:
            dots = torch.stack([u[:, :b] @ self.centers_for(k).to(u.dtype).T for k, b in enumerate(self.bit_list)])
        # centres are +-1, so ||c|| = sqrt(b_k); F.normalize's 1e-12 floor on ||u||
        norm_u = prefix_sum(u * u, self.bit_list).T.sqrt().clamp(min=1e-12)  # (K, B)
        return dots / (norm_u[:, :, None] * self.bits_like(u).sqrt()[:, None, None])

    def centers_for(self, k: int) -> Tensor:
        """The (C, b_k) centres of length k."""
        if self.nested:
            return self.centers_table[:, : self.bit_list[k]]
        start = sum(self.bit_list[:k])
        return self.centers_table[:, start : start + self.bit_list[k]]

    def layout(self, u: Tensor) -> Tensor:
        """u arranged in the centre column layout (a view in nested mode)."""
        return u if self.nested else u.index_select(1, self.cols)

    def targets(self, y: Tensor) -> Tensor:
        """(B, ncols) +-1 target of every sample: sign of its label-summed centres (= its centre when single-label)."""
        s = y @ self.centers_table.to(y.dtype)
        return torch.where(s == 0, self.tie.to(y.dtype), s.sign())

    def per_length_mean(self, e: Tensor) -> Tensor:
        """(B, ncols) elementwise loss -> (K,) mean over the batch and the bits of each length."""
        return self.avg.to(e.dtype) @ e.sum(0) / (e.shape[0] * self.bits_like(e))


class QuantizedCenterLoss(CenteredLoss):
    """A centre loss plus ``lambda_`` times a quantisation term (CSQ, MDSH): the same constructor."""

    def __init__(self, bit_list, num_classes=None, num_train=None, lambda_: float = 1e-4,
                 centers="per_length", seed: int = 0):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train, centers=centers, seed=seed)
        self.lambda_ = float(lambda_)
