"""NHLObjective with an unsupervised (two-view) base loss: the two views as one batch of 2B rows.

The head maps both views with the same W, so the gradient of any O_k w.r.t. W is the sum over
the 2B rows of both views: g_k = G_k^T X + G'_k^T X' = [G_k; G'_k]^T [X; X']. Stacking the two
views' codes, pre-activations and inputs row-wise therefore gives the objective's exact
adaptive weights with no new machinery (one 2B x 2B Gram), and the per-length gradients are
taken w.r.t. both views' codes at once (they are two row blocks of one tensor). Cascade
distillation runs on the stacked codes: S_k is the 2B x 2B Gram of both views' prefixes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from nhl_fast.layers import NestedCodes, nested_codes


class Views:
    """What the base loss needs besides the stacked codes: the batch size and the latents."""

    def __init__(self, batch: int, z: Optional[Tensor], z_other: Optional[Tensor]):
        self.batch, self.z, self.z_other = batch, z, z_other

    def losses(self, base, u: Tensor, indices: Optional[Tensor]) -> Tensor:
        return base(u[: self.batch], u[self.batch:], indices, z=self.z, z_other=self.z_other)


def join_views(u_list, labels, u_other, x: Optional[Tensor], x_other: Optional[Tensor],
               z: Optional[Tensor], z_other: Optional[Tensor], bit_list, full_codes):
    """(codes of the 2B stacked rows, stacked x or None, Views) for an unsupervised base loss; full_codes(codes, name)
    is the objective's check of one view's code list, returning its full (B, b_max) codes."""
    if labels is not None:
        raise TypeError("this objective's base loss is unsupervised: it takes no labels (pass labels=None and "
                        "the second view's codes as u_other=)")
    if u_other is None:
        raise TypeError("an unsupervised base loss needs the second view: obj(u_list, u_other=u_list_of_view_2, "
                        "z=..., z_other=...)")
    if not isinstance(u_other, (list, tuple)) or len(u_other) != len(bit_list):
        raise TypeError(f"u_other must be the list of {len(bit_list)} codes of the second view, "
                        f"got {type(u_other).__name__}")
    a, b = full_codes(u_list, "u_list"), full_codes(u_other, "u_other")
    if a.shape != b.shape:
        raise ValueError(f"the two views must have one shape, got u_list {tuple(a.shape)} and u_other "
                         f"{tuple(b.shape)}")
    views = Views(a.shape[0], z, z_other)
    if isinstance(u_list, NestedCodes) != isinstance(u_other, NestedCodes):
        raise TypeError("u_list and u_other must both be NestedCodes from the layer, or both plain lists")
    if isinstance(u_list, NestedCodes):
        if u_list.weight is not u_other.weight or u_list.relax != u_other.relax:
            raise ValueError("u_list and u_other must come from the same NestedHashLayer (the adaptive weights "
                             "are gradients w.r.t. its one projection)")
        joined = nested_codes(torch.cat([a, b]), torch.cat([u_list.pre, u_other.pre]),
                              torch.cat([u_list.input, u_other.input]), u_list.relax, bit_list,
                              u_list.weight, u_list.bias)
        return joined, x, views
    if (x is None) != (x_other is None):
        raise ValueError("give the head inputs of both views, x= and x_other=, or neither")
    full = torch.cat([a, b])
    return [full[:, :k] for k in bit_list], (None if x is None else torch.cat([x, x_other])), views
