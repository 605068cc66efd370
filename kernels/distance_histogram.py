"""Triton distance_histogram: (L, Q, max(bits)+1) counts of all / relevant database items at each
Hamming distance; one program per query, every length from one pass over the database."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device

from nhl_fast.kernels._metrics_common import launch_params, query_histograms


@triton.jit
def _distance_histogram_kernel(q_ptr, db_ptr, ql_ptr, dl_ptr, bits_ptr, tot_ptr, rel_ptr, Q, N, L, B1,
                               W, WP: tl.constexpr, LW: tl.constexpr, LWP: tl.constexpr, LP: tl.constexpr,
                               NB: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    qw, masks, tot, rel = query_histograms(q_ptr, bits_ptr, db_ptr, dl_ptr, ql_ptr, pid, L, N, W, WP, LW, LWP, LP, NB,
                                           BLOCK)
    bins = tl.arange(0, NB)
    lens = tl.arange(0, LP).to(tl.int64)  # L * Q * B1 can pass 2^31
    out = (lens[:, None] * Q + pid) * B1 + bins[None, :]
    keep = (lens[:, None] < L) & (bins[None, :] < B1)
    tl.store(tot_ptr + out, tot.to(tl.int64), mask=keep)
    tl.store(rel_ptr + out, rel.to(tl.int64), mask=keep)


@on_tensor_device
def distance_histogram_triton(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor,
                              bits: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    Q, N, L, B1 = q.shape[0], db.shape[0], len(bits), max(bits) + 1
    tot = torch.zeros(L, Q, B1, dtype=torch.int64, device=q.device)
    rel = torch.zeros_like(tot)
    if Q == 0:
        return tot, rel
    bits_t = torch.tensor(bits, dtype=torch.int64, device=q.device)
    p = launch_params(q, q_labels, bits)
    _distance_histogram_kernel[(Q,)](q.contiguous(), db.contiguous(), q_labels.contiguous(), db_labels.contiguous(),
                                     bits_t, tot, rel, Q, N, L, B1, **p)
    return tot, rel
