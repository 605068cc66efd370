"""The NHL reference code's multi-length head and distillation, written as it does them
(hly1998/NHL bit_length/model_grand_sd.py: RML_E and the per-pair similarity-preserving loss).
Not part of the library or the app: bench_train_step.py's reference-style step and the tests' literal
re-run of the reference step (tests/test_objective.py, tests/test_cascade_distill.py) share these, so both
compare against one rendition of the reference."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sp_distill(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """||N(f_s f_s^T) - N(f_t f_t^T)||_F^2 / B^2, N = row L2-normalisation, per pair of lengths."""
    batch = f_s.shape[0]
    g_s = F.normalize(f_s @ f_s.T)
    g_t = F.normalize(f_t @ f_t.T)
    return ((g_t - g_s) ** 2).sum() / (batch * batch)


class ReferenceHead(nn.Module):
    """The reference's RML_E head: one Linear, K matmuls on its weight prefixes."""

    def __init__(self, n_in: int, bits):
        super().__init__()
        self.bits = bits
        self.hash_layer = nn.Linear(n_in, bits[-1])

    def forward(self, x):
        return [torch.matmul(x, self.hash_layer.weight[:b, :].t()) + self.hash_layer.bias[:b] for b in self.bits]
