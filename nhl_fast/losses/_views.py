"""Helpers of the two-view (unsupervised) losses: straight-through signs, prefix cosines, NT-Xent.

All K lengths from one call: the K prefix cosines come from prefix_gram (one product) and the
prefix squared norms from prefix_sum (one cumulative sum).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from nhl_fast.losses._code_memory import debiased_log_denominator
from nhl_fast.losses._common import prefix_gram, prefix_sum

EPS = 1e-12


def sign_ste(x: Tensor) -> Tensor:
    """+-1 forward (+1 only where x > 0, the library's bit convention), identity backward
    (GreedyHash's hash layer; CIBHash's on prob - noise)."""
    s = torch.where(x > 0, 1.0, -1.0).to(x.dtype)
    return x + (s - x).detach()


def prefix_norms(a: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(K, A): ||a[:, :b_k]|| for every k."""
    return prefix_sum(a * a, bit_list).clamp_min(EPS).sqrt().T


def prefix_cosine(a: Tensor, c: Tensor, bit_list: Sequence[int], na: Optional[Tensor] = None) -> Tensor:
    """(K, A, C): cos(a_i[:b_k], c_j[:b_k]) for every k, i, j."""
    na = prefix_norms(a, bit_list) if na is None else na
    nc = na if c is a else prefix_norms(c, bit_list)
    return prefix_gram(a, c, bit_list) / (na.unsqueeze(2) * nc.unsqueeze(1))


def nested_nt_xent(h: Tensor, h_other: Tensor, bit_list: Sequence[int], tau: float,
                   memory: Optional[Tensor] = None, prior: float = 0.0) -> Tensor:
    """(K,) NT-Xent (SimCLR, Chen et al. 2020) of the prefixes of two views' codes.

    Anchors are the 2B rows of [h; h_other]; row i's positive is its other view, its negatives the
    2B - 2 other rows plus the rows of `memory` (M, b_max) when given. With s the cosine,
        L_k = mean_i -log( e(s_ip) / (e(s_ip) + N_g) ),   e(s) = exp(s / tau),
    N_g = sum_j e(s_ij) (prior = 0) or the debiased estimate of Chuang et al. 2020 (prior = pi+).
    """
    B = h.shape[0]
    H = torch.cat([h, h_other])
    n2 = 2 * B
    cos = prefix_cosine(H, H, bit_list)                                  # (K, 2B, 2B)
    rows = torch.arange(n2, device=H.device)
    pos = cos[:, rows, (rows + B) % n2]                                  # (K, 2B)
    # every column but the anchor itself: the positive and the 2B - 2 negatives (+ the memory)
    logits = cos.masked_fill(torch.eye(n2, dtype=torch.bool, device=H.device), float("-inf")) / tau
    if memory is not None and memory.shape[0] > 0:
        logits = torch.cat([logits, prefix_cosine(H, memory.to(H.dtype), bit_list) / tau], dim=2)
    if prior == 0:
        return (torch.logsumexp(logits, 2) - pos / tau).mean(1)
    neg_exp = torch.exp(logits - 1 / tau).sum(2) - torch.exp((pos - 1) / tau)
    log_den = debiased_log_denominator(pos, neg_exp, logits.shape[2] - 2, tau, prior)
    return (log_den - pos / tau).mean(1)
