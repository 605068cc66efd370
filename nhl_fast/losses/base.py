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


class UnsupervisedNestedLoss(NestedLoss):
    """Base class of the losses without labels: forward(u, u_other, indices=None, *, z=None, z_other=None) -> (K,).

    u, u_other: (B, b_max) relaxed codes of two augmented views of the same B samples (row i of
    both is one sample); z, z_other: optional (B, d) latent features of the two views, for the
    losses that contrast latents (their docstrings say so); indices: (B,) positions in the
    training set, for losses with a memory. Labels are never seen.
    """

    unsupervised = True

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop at each epoch (from 0): the warm-up of a loss's code memory (the
        ``memory`` submodule of cibhash and sortednce, None when off) counts them."""
        # getattr, not a class-level default: nn.Module keeps submodules in _modules, behind a class attribute
        memory = getattr(self, "memory", None)
        if memory is not None:
            memory.set_epoch(epoch)

    def check_views(self, u: Tensor, u_other: Tensor, z: Optional[Tensor] = None,
                    z_other: Optional[Tensor] = None) -> None:
        """The two views must be tensors of one shape (B, b_max), B >= 2; latents, when given, both (B, d)."""
        for name, t in (("u", u), ("u_other", u_other)):
            _checks.tensor(t, name, "a torch.Tensor of relaxed codes (an unsupervised loss takes two views, no labels)")
            _checks.ensure(t.dtype.is_floating_point, TypeError,
                           lambda: f"{name} must be floating relaxed codes, got {t.dtype} (labels? an unsupervised "
                                   "loss takes the two views' codes and no labels)")
            _checks.ensure(t.dim() == 2 and t.shape[1] >= self.bit_list[-1], ValueError,
                           lambda: f"{name} must be (B, >= {self.bit_list[-1]}) relaxed codes, got {tuple(t.shape)}")
        _checks.ensure(u.shape == u_other.shape, ValueError,
                       lambda: f"the two views must have one shape, got u {tuple(u.shape)} and u_other {tuple(u_other.shape)}")
        _checks.ensure(u.shape[0] >= 2, ValueError, lambda: f"a contrastive loss needs B >= 2 samples, got {u.shape[0]}")
        _checks.ensure((z is None) == (z_other is None), ValueError,
                       lambda: "give both latents z and z_other, or neither")
        if z is not None:
            for name, t in (("z", z), ("z_other", z_other)):
                _checks.tensor(t, name)
                _checks.ensure(t.dim() == 2 and t.shape[0] == u.shape[0] and t.shape == z.shape, ValueError,
                               lambda: f"{name} must be (B={u.shape[0]}, d) like z, got {tuple(t.shape)}")

    def forward(self, u: Tensor, u_other: Tensor, indices: Optional[Tensor] = None, *,
                z: Optional[Tensor] = None, z_other: Optional[Tensor] = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError
