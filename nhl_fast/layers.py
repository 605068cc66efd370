"""NestedHashLayer: one projection whose output prefixes are the codes of every length.

The code of length b_k is the first b_k outputs of ONE projection ``x W^T + b``
(W: b_max x in_features), so the forward is one GEMM and the backward one GEMM pair
whatever the number of lengths K (the NHL reference code does K matmuls forward and
K backward).

Sign convention: a bit is set only where the projection is ``> 0``. ``encode`` and
``relax="sign_ste"`` map an exact 0 to bit 0 / -1, whereas the reference code's
``torch.sign`` maps 0 to 0 (a third value a binary code cannot hold).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from nhl_fast import _checks
from nhl_fast._dispatch import dispatch
from nhl_fast.reference import RELAXES

INITS = ("default", "normal")


class NestedCodes(list):
    """The list ``[u_1, ..., u_K]`` returned by :class:`NestedHashLayer`: ``u_k = full[:, :b_k]``.

    A plain list of prefix views of ONE tensor, plus what :class:`nhl_fast.NHLObjective`
    needs for the exact dominance-aware weights without K backward passes:

    - ``full``  (B, b_max) the relaxed output (every u_k is a view of it)
    - ``pre``   (B, b_max) the pre-activation z = x W^T + b
    - ``input`` (B, in_features) the layer input x
    - ``relax`` the relaxation name, ``bit_list`` the lengths
    - ``weight``, ``bias`` the projection parameters (used by the objective's faithful mode)
    """


def nested_codes(full: Tensor, pre: Tensor, x: Tensor, relax: str, bit_list: Sequence[int],
                 weight: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> NestedCodes:
    """Wrap the output of a nested projection (e.g. from your own head) for NHLObjective."""
    codes = NestedCodes([full[:, :b] for b in bit_list])
    codes.full, codes.pre, codes.input, codes.relax = full, pre, x, relax
    codes.bit_list, codes.weight, codes.bias = tuple(bit_list), weight, bias
    return codes


class NestedHashLayer(nn.Module):
    """Nested hash layer: codes of every length in ``bit_list`` from one projection.

    Args:
        in_features: width of the input features (e.g. 2048 for ResNet-50).
        bit_list: strictly increasing code lengths; any positive ints. Lengths above
            ``in_features`` are allowed (the extra bits are linear combinations of the others).
        relax: ``"none"`` (raw projection: the base losses relax it themselves, as in the
            reference code), ``"tanh"``, or ``"sign_ste"`` (+-1 forward, 0 -> -1; straight-through
            backward passing the gradient where ``|z| <= 1``).
        init: ``"default"`` (``nn.Linear``'s init) or ``"normal"`` (weight ~ N(0, 0.01), bias 0:
            the reference code's hash layer).
        backend: pin a backend (``cpp``, ``cuda``, ``triton``, ``torch``); default auto.

    ``forward(x)`` returns a :class:`NestedCodes` list of the K relaxed codes (views of one
    output); ``encode(x)`` returns the packed sign codes ``(N, ceil(b_max/64))`` int64, the
    engine's layout (``nhl_fast.pack``), without materialising float codes.
    """

    def __init__(self, in_features: int, bit_list: Sequence[int] = (8, 16, 32, 64, 128), relax: str = "none",
                 init: str = "default", backend: Optional[str] = None, device=None, dtype=None):
        super().__init__()
        self.in_features = _checks.positive_int(in_features, "in_features")
        self.bit_list = _checks.increasing_lengths(bit_list, "bit_list")
        self.relax = _checks.choice("relax", relax, RELAXES)
        self.init = _checks.choice("init", init, INITS)
        self.backend = backend

        b_max = self.bit_list[-1]
        self.weight = nn.Parameter(torch.empty(b_max, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(b_max, device=device, dtype=dtype))
        self.reset_parameters()

    @property
    def bits(self) -> int:
        return self.bit_list[-1]

    def reset_parameters(self) -> None:
        if self.init == "normal":
            nn.init.normal_(self.weight, 0.0, 0.01)
            nn.init.zeros_(self.bias)
        else:  # exactly nn.Linear.reset_parameters
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def _operands(self, x) -> tuple[Tensor, Tensor, Tensor]:
        _checks.tensor(x, "x")
        if not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (B, {self.in_features}) (in_features={self.in_features}), "
                             f"got {tuple(x.shape)}")
        if x.device != self.weight.device:
            raise ValueError(f"x is on {x.device} but the layer's parameters are on {self.weight.device}")
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(x.device.type):
            # A custom op is not covered by autocast's op lists: cast like autocast casts linear.
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        elif x.dtype != weight.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the layer's parameters are {weight.dtype}")
        return x, weight, bias

    def forward(self, x: Tensor) -> NestedCodes:
        x, weight, bias = self._operands(x)
        u, z = dispatch("nested_projection", x.device, self.backend)(x, weight, bias, self.relax)
        return nested_codes(u, z, x, self.relax, self.bit_list, weight, bias)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """(N, ceil(b_max/64)) int64 packed codes: bit j set where (x W^T + b)[:, j] > 0.

        The code of length b_k is the first b_k bits (``nhl_fast.hamming(..., bits=bit_list)``).
        Rows stream through the GEMM in chunks: no (N, b_max) float tensor is materialised.
        """
        x, weight, bias = self._operands(x)
        return dispatch("project_and_pack", x.device, self.backend)(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, bit_list={self.bit_list}, relax={self.relax!r}, init={self.init!r}"
