"""The similarity-preserving term shared by the unsupervised GreedyHash and BiHalf losses."""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn.functional as F
from torch import Tensor

from nhl_fast import _checks
from nhl_fast.losses._views import prefix_cosine


def latent_target(z: Optional[Tensor], z_other: Optional[Tensor], name: str) -> Tensor:
    """(B, B) cos(z_i, z_other_j), detached: the frozen-feature similarity the codes must keep."""
    _checks.ensure(z is not None, ValueError,
                   lambda: f"{name} needs the latents z= and z_other= (the features feeding the hash layer)")
    return F.normalize(z.detach(), dim=1) @ F.normalize(z_other.detach(), dim=1).T


def similarity_mse(b: Tensor, b_other: Tensor, target: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(K,) mean over the B x B cross-view pairs of (cos(b_i[:b_k], b'_j[:b_k]) - target_ij)^2."""
    cos = prefix_cosine(b, b_other, bit_list)
    return ((cos - target.to(cos.dtype).unsqueeze(0)) ** 2).mean((1, 2))


def check_scalar(name: str, value, low: float = 0.0) -> float:
    _checks.ensure(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low, ValueError,
                   lambda: f"{name} must be a number >= {low}, got {value!r}")
    return float(value)
