"""Classic unsupervised hashing baselines for the compare table: LSH and ITQ (torch only).

- LSH (sign random projections; Charikar 2002): b Gaussian directions through the data mean.
  Its codes nest by construction: the first b_k projections are the b_k-bit code.
- ITQ (Gong & Lazebnik, CVPR 2011, "Iterative Quantization"): PCA to b dimensions V, then an
  orthogonal rotation R minimising the quantisation loss ||sgn(VR) - VR||_F^2 by alternating
  B = sgn(VR) and R = argmin_R ||B - VR||_F (orthogonal Procrustes: V^T B = U S W^T, R = U W^T),
  50 iterations, R started from a random orthogonal matrix. One model per length (ITQ's
  rotation mixes all b components, so its codes do not nest); b <= the input dimension.

Both fit on float inputs (N, D) (flattened when more dims) and encode to the engine's packed
codes (``nhl_fast.pack``: bit j set where the projection is > 0).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from nhl_fast import _checks
from nhl_fast.engine import pack


def _data(x, name: str = "x") -> Tensor:
    _checks.tensor(x, name)
    _checks.ensure(x.dim() >= 2 and x.shape[0] >= 1 and x.dtype.is_floating_point, ValueError,
                   lambda: f"{name} must be a non-empty floating (N, D) tensor, got {tuple(x.shape)} {x.dtype}")
    x = x.flatten(1)
    _checks.ensure(bool(torch.isfinite(x).all()), ValueError, lambda: f"{name} holds NaN or inf")
    return x


def _fitted_input(x, model: str, fitted: Optional[Tensor]) -> Tensor:
    """x as (N, D) for a model fit on D features (`fitted`: its (D, .) matrix, None before fit)."""
    _checks.ensure(fitted is not None, ValueError, lambda: f"{model}: call fit(x) before encode/project")
    x = _data(x)
    _checks.ensure(x.shape[1] == fitted.shape[0], ValueError,
                   lambda: f"x has {x.shape[1]} features, the model was fit on {fitted.shape[0]}")
    return x


class LSH:
    """Sign random projections: ``LSH(bits, seed).fit(x).encode(x) -> (N, ceil(bits/64))`` int64."""

    def __init__(self, bits: int, seed: int = 0):
        self.bits = _checks.positive_int(bits, "bits")
        self.seed = seed
        self.mean: Optional[Tensor] = None
        self.projection: Optional[Tensor] = None

    def fit(self, x: Tensor) -> "LSH":
        x = _data(x)
        g = torch.Generator().manual_seed(int(self.seed))
        self.mean = x.mean(0)
        # drawn direction by direction: a model of fewer bits (same seed) has the first directions
        self.projection = torch.randn(self.bits, x.shape[1], generator=g, dtype=torch.float64).T.to(x)
        return self

    def project(self, x: Tensor) -> Tensor:
        x = _fitted_input(x, "LSH", self.projection)
        return (x - self.mean.to(x)) @ self.projection.to(x)

    def encode(self, x: Tensor) -> Tensor:
        return pack(self.project(x))


class ITQ:
    """Iterative quantisation: ``ITQ(bits, iterations=50, seed=0).fit(x).encode(x)``.

    After ``fit``: ``mean``, ``pca`` (D, bits), ``rotation`` (bits, bits, orthogonal) and
    ``losses``, the quantisation loss ||B - VR||_F^2 / N after each iteration (non-increasing).
    """

    def __init__(self, bits: int, iterations: int = 50, seed: int = 0):
        self.bits = _checks.positive_int(bits, "bits")
        self.iterations = _checks.positive_int(iterations, "iterations")
        self.seed = seed
        self.mean = self.pca = self.rotation = None
        self.losses: list = []

    def fit(self, x: Tensor) -> "ITQ":
        x = _data(x).double()
        n, d = x.shape
        _checks.ensure(self.bits <= d, ValueError,
                       lambda: f"ITQ bits={self.bits} needs at most as many bits as input features ({d}): PCA "
                               "keeps `bits` components")
        self.mean = x.mean(0)
        xc = x - self.mean
        evals, evecs = torch.linalg.eigh(xc.T @ xc)             # ascending
        self.pca = evecs[:, torch.argsort(evals, descending=True)[: self.bits]]
        v = xc @ self.pca
        g = torch.Generator().manual_seed(int(self.seed))
        r, _ = torch.linalg.qr(torch.randn(self.bits, self.bits, generator=g, dtype=torch.float64))
        self.losses = []
        for _ in range(self.iterations):
            b = torch.where(v @ r > 0, 1.0, -1.0).double()
            u, _, wt = torch.linalg.svd(v.T @ b)                # Procrustes: max tr(R^T V^T B)
            r = u @ wt
            self.losses.append(float(((b - v @ r) ** 2).sum() / n))
        self.rotation = r
        return self

    def project(self, x: Tensor) -> Tensor:
        x = _fitted_input(x, "ITQ", self.pca)
        return ((x.double() - self.mean) @ self.pca @ self.rotation).to(x.dtype)

    def encode(self, x: Tensor) -> Tensor:
        return pack(self.project(x))
