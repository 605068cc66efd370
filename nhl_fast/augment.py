"""Random views for unsupervised (two-view) hashing, batched on the tensor's device.

Every function draws one independent transform per sample with torch's RNG on ``x.device``
(``generator=`` for reproducible draws) and never leaves the device: one affine grid + one
``grid_sample`` for a whole batch of images, elementwise masks for features.

- ``image_view``: random affine (rotation, scale, translation) + random crop (a zoom-in on a
  random window, resampled back to the input size) + Gaussian pixel noise. The defaults suit
  small images such as scikit-learn's 8x8 digits.
- ``feature_view``: Gaussian noise + feature dropout, the usual recipe when the inputs are
  pre-extracted CNN/ViT features.
- ``TwoViews``: a callable returning two independent views of a batch, chosen by input kind.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nhl_fast import _checks


def _uniform(n: int, low: float, high: float, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return low + (high - low) * torch.rand(n, device=x.device, dtype=x.dtype, generator=generator)


def _nonneg(name: str, value) -> float:
    _checks.ensure(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, ValueError,
                   lambda: f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def image_view(x: Tensor, *, degrees: float = 12.0, translate: float = 0.1, scale: tuple = (0.9, 1.1),
               crop: float = 0.85, noise: float = 0.1, generator: Optional[torch.Generator] = None) -> Tensor:
    """(N, C, H, W) -> a random view of each image, same shape, on x's device.

    degrees: rotation drawn from U(-degrees, degrees); translate: shift drawn from U(-t, t) as a
    fraction of the image side; scale: zoom factor drawn from U(scale); crop: the side of a random
    square window as a fraction of the image, drawn from U(crop, 1) and resampled to the full size
    (1 = no crop); noise: std of additive Gaussian noise (in the input's units). Pixels sampled
    outside the image repeat the border (the background of centred digits).
    """
    _checks.tensor(x, "x")
    _checks.ensure(x.dim() == 4 and x.dtype.is_floating_point, ValueError,
                   lambda: f"x must be a floating (N, C, H, W) batch of images, got {tuple(x.shape)} {x.dtype}")
    degrees, translate, noise = _nonneg("degrees", degrees), _nonneg("translate", translate), _nonneg("noise", noise)
    _checks.ensure(isinstance(scale, (tuple, list)) and len(scale) == 2 and 0 < scale[0] <= scale[1], ValueError,
                   lambda: f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
    _checks.ensure(isinstance(crop, (int, float)) and 0 < crop <= 1, ValueError,
                   lambda: f"crop must be in (0, 1], got {crop!r}")
    n = x.shape[0]
    if n == 0:
        return x.clone()
    angle = _uniform(n, -degrees, degrees, x, generator) * (math.pi / 180)
    # grid_sample maps output coords to input coords: sampling a window of side w (in [-1, 1]
    # units: 2w) zooms in by 1/w; a zoom-out by s samples a window of side 1/s.
    side = _uniform(n, float(crop), 1.0, x, generator) / _uniform(n, float(scale[0]), float(scale[1]), x, generator)
    room = (1 - side).clamp_min(0)  # a cropped window moves inside the image
    tx = _uniform(n, -1, 1, x, generator) * room + _uniform(n, -2 * translate, 2 * translate, x, generator)
    ty = _uniform(n, -1, 1, x, generator) * room + _uniform(n, -2 * translate, 2 * translate, x, generator)
    cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if noise:
        out = out + noise * torch.randn(out.shape, device=x.device, dtype=x.dtype, generator=generator)
    return out


def feature_view(x: Tensor, *, noise: float = 0.1, dropout: float = 0.1,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """(N, D) -> x + noise * std_d * eps, then each feature zeroed with probability `dropout`
    (no rescaling). std_d is the batch's per-feature standard deviation, so `noise` is relative
    to each feature's spread whatever the features' units."""
    _checks.tensor(x, "x")
    _checks.ensure(x.dim() >= 2 and x.dtype.is_floating_point, ValueError,
                   lambda: f"x must be a floating (N, D) batch of features, got {tuple(x.shape)} {x.dtype}")
    noise, dropout = _nonneg("noise", noise), _nonneg("dropout", dropout)
    _checks.ensure(dropout < 1, ValueError, lambda: f"dropout must be in [0, 1), got {dropout!r}")
    out = x
    if noise and x.shape[0] > 1:
        std = x.std(0, keepdim=True)
        out = out + noise * std * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    if dropout:
        keep = torch.rand(x.shape, device=x.device, generator=generator) >= dropout
        out = out * keep.to(x.dtype)
    return out


class TwoViews:
    """views(x) -> (view_1, view_2), independent random views of one batch.

    kind: ``"image"`` (image_view: (N, C, H, W) inputs) or ``"features"`` (feature_view), with that
    function's keyword options; ``"none"`` returns the batch twice (no augmentation).
    """

    KINDS = ("image", "features", "none")

    def __init__(self, kind: str, generator: Optional[torch.Generator] = None, **options):
        self.kind = _checks.choice("kind", kind, self.KINDS)
        self.generator, self.options = generator, options
        if kind != "none":  # validate the options now, not at the first batch
            probe = torch.zeros((2, 1, 4, 4) if kind == "image" else (2, 3))
            self._one(probe)

    def _one(self, x: Tensor) -> Tensor:
        if self.kind == "image":
            return image_view(x, generator=self.generator, **self.options)
        if self.kind == "features":
            return feature_view(x, generator=self.generator, **self.options)
        return x

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._one(x), self._one(x)

    def __repr__(self) -> str:
        return f"TwoViews({self.kind!r}, {self.options})"
