"""Shared machinery of the built-in losses: input checks, prefix sums, the shared memory bank.

One call serves all K lengths: the K prefix Grams ``a[:, :b_k] @ c[:, :b_k].T`` of an in-batch
loss come from one batched product (prefix_gram), elementwise terms are summed per column once
and read out at the K prefix ends (prefix_sum), and label similarities, targets and the bank
write are done once. Bank losses (B x num_train blocks) loop over lengths for the elementwise
part instead of stacking K large blocks, which is faster on CPU caches.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from nhl_fast import _checks
from nhl_fast.losses.base import NestedLoss, multi_hot


def prefix_gram(a: Tensor, c: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(K, A, C): ``a[:, :b_k] @ c[:, :b_k].T`` for every k, as ONE product.

    The rows of ``a`` are stacked K times with the columns past b_k zeroed, so all K Grams
    come out of one (K*A, b_max) x (b_max, C) GEMM whose output is written once (no
    per-length launches, no running-sum passes over the K*A*C result; with b_max small the
    product is bound by writing its output, not by the extra zero columns).
    """
    b_max = a.shape[1]
    keep = torch.arange(b_max, device=a.device) < torch.tensor(list(bit_list), device=a.device)[:, None]
    return (a.unsqueeze(0) * keep.unsqueeze(1).to(a.dtype)) @ c.T


def prefix_sum(x: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(..., K): ``x[..., :b_k].sum(-1)`` for every k (one cumulative sum over the columns)."""
    ends = torch.tensor([b - 1 for b in bit_list], device=x.device)
    return x.cumsum(-1).index_select(-1, ends)


class HashLoss(NestedLoss):
    """NestedLoss with the checks and helpers every built-in loss shares.

    Inputs are the raw head outputs (the layer's ``relax="none"``): every loss applies its
    own relaxation (tanh, clamp, ...) exactly where its reference does.
    """

    #: losses whose terms are pairs inside the batch need at least two samples
    min_batch = 1
    #: losses with a memory bank need num_train and indices
    uses_bank = False
    #: losses that need num_classes (code centres, label bank)
    needs_classes = False

    def __init__(self, bit_list, num_classes: Optional[int] = None, num_train: Optional[int] = None,
                 bank: Optional[bool] = None):
        if num_classes is not None:
            _checks.positive_int(num_classes, "num_classes")
        if num_train is not None:
            _checks.positive_int(num_train, "num_train")
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        bits = self.bit_list
        if bank is not None:
            self.uses_bank = bool(bank)
        self.b_max = bits[-1]
        self.register_buffer("bits_t", torch.tensor(bits, dtype=torch.float32), persistent=False)
        if (self.needs_classes or self.uses_bank) and num_classes is None:
            raise ValueError(f"{type(self).__name__} needs num_classes")
        if self.uses_bank:
            if num_train is None:
                raise ValueError(f"{type(self).__name__} keeps a memory bank: pass num_train (the training-set size)")
            # ONE bank of b_max columns for all lengths; length k reads the prefix view U[:, :b_k]
            self.register_buffer("U", torch.zeros(num_train, self.b_max))
            self.register_buffer("Y", torch.zeros(num_train, num_classes))

    def bits_like(self, x: Tensor) -> Tensor:
        return self.bits_t.to(device=x.device, dtype=x.dtype)

    def prepare(self, u: Tensor, labels: Tensor, indices: Optional[Tensor]):
        """Checked (u[:, :b_max], float multi-hot labels, long indices or None)."""
        _checks.tensor(u, "u")
        if u.dim() != 2 or u.shape[1] < self.b_max:
            raise ValueError(f"u must have shape (B, >= {self.b_max}) (b_max of bit_list), got {tuple(u.shape)}")
        if not u.dtype.is_floating_point:
            raise TypeError(f"u must be a floating tensor, got {u.dtype}")
        B = u.shape[0]
        if B < self.min_batch:
            raise ValueError(f"{type(self).__name__} compares pairs inside the batch: needs a batch of "
                             f">= {self.min_batch} samples, got {B}")
        y = multi_hot(labels, self.num_classes)
        if y.shape[0] != B:
            raise ValueError(f"labels has {y.shape[0]} rows, u has {B}")
        y = y.to(device=u.device, dtype=u.dtype)
        idx = None
        if self.uses_bank:
            if not isinstance(indices, Tensor) or indices.dim() != 1 or indices.shape[0] != B:
                raise ValueError(f"indices must be a (B,) = ({B},) integer tensor of training-set positions")
            if indices.dtype.is_floating_point or indices.dtype == torch.bool:
                raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
            idx = indices.to(device=self.U.device, dtype=torch.long)
            if B and not torch.compiler.is_compiling() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_train):
                raise ValueError(f"indices must be in [0, num_train={self.num_train})")
        return u[:, : self.b_max], y, idx

    @torch.no_grad()
    def write_bank(self, u: Tensor, y: Tensor, idx: Tensor) -> None:
        """Store this batch (detached) before the loss reads the bank, as the references do."""
        self.U[idx] = u.detach().to(self.U.dtype)
        self.Y[idx] = y.to(self.Y.dtype)

    def bank(self, like: Tensor):
        return self.U.to(like.dtype), self.Y.to(like.dtype)
