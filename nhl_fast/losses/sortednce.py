"""SortedNCE: the contrastive loss of NSH, Naturally-Sorted Hashing, every code length in one fused call."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from nhl_fast import _checks
from nhl_fast._dispatch import dispatch
from nhl_fast.losses import register
from nhl_fast.losses.base import UnsupervisedNestedLoss


@register("sortednce")
class SortedNCE(UnsupervisedNestedLoss):
    """L_k = (1/B) sum_i (1/m) sum_{r<m} -log( exp(c_ir/tau) / (exp(c_ir/tau) + sum_{r'>=m} exp(c_ir'/tau)) ).

    Source: Yu, Shen, Wang, Zhang & Torr, "Learning to Hash Naturally Sorts", IJCAI 2022 (arXiv 2201.13322),
    Algorithm 1, with SoftSort (Prillo & Eisenschlos, ICML 2020) as the sorter. For anchor i and length b:
      s_ij = (b - <u_i, v_j>_b) / (2b)           relaxed Hamming distance (1 - the paper's code similarity S)
      Pt_i = softmax_j(-|sort(s_i)_r - s_ij| / tau_s)   the SoftSort rows, ascending distance;
      P_i  = Pt_i (soft) or onehot(argmax_j) + Pt_i - sg(Pt_i) (hard: straight-through, the default)
      E_i  = P_i z                               z's rows in the order of their codes' distance to u_i
      c_ir = cos(E_ir, z_other_i)                against the anchor's other-view latent
    and the first m ranks of each sorted list are its positives, the rest negatives (a one-hot over n - m + 1
    logits per positive, the paper's pseudo-code). As there: distances between u (view 1) and u_other (view 2),
    the gathered latents z (view 1), the anchor latent z_other (view 2); ``symmetric=True`` averages this with
    the views swapped (not in the paper). A tie between distances gives the hard rows the lower index
    (argmax's first maximum), so tied candidates repeat, as in SoftSort's reference code.

    Defaults (the paper's text was not reachable here; these are the public NSH training script's):
    m = 2 positives, tau = 0.1, hard (straight-through) SoftSort with tau_s = the code length
    (``sort_tau="bits"``: SoftSort(bit) on similarities in [0, 1]); the script's extra term
    ||B - P B||^2 is not part of SortedNCE and is left out. A float ``sort_tau`` uses one temperature for all lengths.

    Needs the latents: ``forward(u, u_other, z=..., z_other=...)`` with z, z_other (B, d) the backbone features
    that feed the hash layer. The op (``sorted_nce``: C++ on CPU, Triton on GPU, the materialised reference
    otherwise) never builds the (B, B, B) permutations or the (B, B, d) sorted latents; one call serves all K
    lengths (distances from cumulative prefix Grams).
    """

    def __init__(self, bit_list: Sequence[int], num_classes: Optional[int] = None, num_train: Optional[int] = None,
                 *, m: int = 2, tau: float = 0.1, sort_tau: Union[str, float] = "bits", hard: bool = True,
                 symmetric: bool = False, backend: Optional[str] = None):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        self.m = _checks.positive_int(m, "m")
        if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 0):
            raise ValueError(f"tau must be a number > 0, got {tau!r}")
        self.tau = float(tau)
        if sort_tau == "bits":
            self.sort_tau = [float(b) for b in self.bit_list]
        elif isinstance(sort_tau, (int, float)) and not isinstance(sort_tau, bool) and sort_tau > 0:
            self.sort_tau = [float(sort_tau)] * len(self.bit_list)
        else:
            raise ValueError(f"sort_tau must be 'bits' or a number > 0, got {sort_tau!r}")
        if not isinstance(hard, bool) or not isinstance(symmetric, bool):
            raise TypeError("hard and symmetric must be bools")
        self.hard, self.symmetric, self.backend = hard, symmetric, backend

    def forward(self, u: Tensor, u_other: Tensor, indices: Optional[Tensor] = None, *,
                z: Optional[Tensor] = None, z_other: Optional[Tensor] = None) -> Tensor:
        if z is None or z_other is None:
            raise ValueError("sortednce contrasts latent features: pass z= and z_other=, the (B, d) backbone "
                             "features of the two views")
        self.check_views(u, u_other, z, z_other)
        if self.m >= u.shape[0]:
            raise ValueError(f"sortednce: m={self.m} positives need a batch of B > m samples, got B={u.shape[0]}")
        b_max = self.bit_list[-1]
        dtype = torch.promote_types(u.dtype, z.dtype)
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32
        u, u_other = u[:, :b_max].to(dtype), u_other[:, :b_max].to(dtype)
        z, z_other = z.to(dtype), z_other.to(dtype)
        op = dispatch("sorted_nce", u.device, self.backend)
        args = (list(self.bit_list), self.m, self.tau, self.sort_tau, self.hard)
        loss = op(u, u_other, z, z_other, *args)
        if self.symmetric:
            loss = (loss + op(u_other, u, z_other, z, *args)) / 2
        return loss
