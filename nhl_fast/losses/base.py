"""The nested-loss protocol every base deep-hashing loss implements.

A NestedLoss sees the full relaxed code u (B, b_max) once and returns the K
per-length losses (K,) for the prefixes u[:, :b_k]: pairwise terms come from
cumulative prefix inner products, and any per-sample memory bank is one
(num_train, b_max) tensor shared by all lengths through prefix views.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from nhl_fast import _checks


def multi_hot(labels: Tensor, num_classes: Optional[int] = None, name: str = "labels") -> Tensor:
    """Class indices (B,) or multi-hot (B, C) -> float multi-hot (B, C)."""
    labels = _checks.labels(labels, name, num_classes=num_classes, zero_one=False)
    if labels.dim() == 2:
        return labels.float()
    if num_classes is None:
        raise ValueError(f"{name} are class indices: pass num_classes (or give multi-hot (B, C) labels)")
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


class NestedLoss(nn.Module):
    """Base class: forward(u, labels, indices) -> (K,) per-length losses.

    u: (B, b_max) relaxed codes (the layer output before prefix slicing);
    labels: (B, C) float multi-hot (use `multi_hot`); indices: (B,) int64 positions of
    the samples in the training set (for losses with memory banks).
    """

    name = "base"

    def __init__(self, bit_list: Sequence[int], num_classes: Optional[int] = None,
                 num_train: Optional[int] = None):
        super().__init__()
        self.bit_list = _checks.increasing_lengths(bit_list, "bit_list")
        self.num_classes = num_classes
        self.num_train = num_train

    def forward(self, u: Tensor, labels: Tensor, indices: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class PerLengthLoss(NestedLoss):
    """Wraps a user callable fn(u_k, labels, indices) -> scalar into a NestedLoss (one call per length)."""

    name = "callable"

    def __init__(self, fn: Callable[[Tensor, Tensor, Tensor], Tensor], bit_list: Sequence[int], **kwargs):
        super().__init__(bit_list, **kwargs)
        if not callable(fn):
            raise TypeError(f"base_loss must be a registered name or a callable, got {type(fn).__name__}")
        self.fn = fn

    def forward(self, u: Tensor, labels: Tensor, indices: Tensor) -> Tensor:
        return torch.stack([self.fn(u[:, :b], labels, indices).reshape(()) for b in self.bit_list])
