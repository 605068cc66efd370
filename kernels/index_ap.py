"""Triton index_ap: per-query AP (L, Q) float64 and hits (L, Q) int64 ranked by (distance, database
index), exactly the classic loop with a stable sort. One program per query: pass 1 counts the
histograms, pass 2 re-walks the database in index order; inside a block, an item's position in
its distance bin is a cumulative sum over the block's one-hot (item, length, bin) tile."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from nhl_fast.kernels import on_tensor_device

from nhl_fast.kernels._metrics_common import (block_distances, block_relevance, launch_params, query_histograms)


@triton.jit
def _index_ap_kernel(q_ptr, db_ptr, ql_ptr, dl_ptr, bits_ptr, ap_ptr, hits_ptr, Q, N, L, K,
                     W, WP: tl.constexpr, LW: tl.constexpr, LWP: tl.constexpr, LP: tl.constexpr,
                     NB: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    qw, masks, tot, rel = query_histograms(q_ptr, bits_ptr, db_ptr, dl_ptr, ql_ptr, pid, L, N, W, WP, LW, LWP, LP, NB,
                                           BLOCK)
    bins = tl.arange(0, NB)
    # counts strictly below each bin; the walk adds the items seen so far in the bin
    seen_tot = tl.cumsum(tot, axis=1) - tot
    seen_rel = tl.cumsum(rel, axis=1) - rel
    acc = tl.zeros((LP,), dtype=tl.float64)
    hits = tl.zeros((LP,), dtype=tl.int32)
    for start in range(0, N, BLOCK):  # pass 2: exact ranks in index order
        offs = start + tl.arange(0, BLOCK)
        valid = offs < N
        d = block_distances(db_ptr, offs, valid, qw, masks, W, WP)
        r = block_relevance(dl_ptr, offs, valid, ql_ptr, pid, LW, LWP)
        ri = r.to(tl.int32)
        hot = ((d[:, :, None] == bins[None, None, :]) & valid[:, None, None]).to(tl.int32)
        hot_rel = hot * ri[:, None, None]
        rank = tl.sum(hot * (tl.cumsum(hot, axis=0) + seen_tot[None, :, :]), axis=2)          # (BLOCK, LP)
        rel_rank = tl.sum(hot * (tl.cumsum(hot_rel, axis=0) + seen_rel[None, :, :]), axis=2)  # (BLOCK, LP)
        counted = (ri[:, None] > 0) & (rank <= K) & (rank > 0)
        acc += tl.sum(tl.where(counted, rel_rank.to(tl.float64) / tl.maximum(rank, 1).to(tl.float64), 0.0), axis=0)
        hits += tl.sum(counted.to(tl.int32), axis=0)
        seen_tot += tl.sum(hot, axis=0)
        seen_rel += tl.sum(hot_rel, axis=0)
    lens = tl.arange(0, LP).to(tl.int64)
    ap = tl.where(hits > 0, acc / tl.maximum(hits, 1).to(tl.float64), 0.0)
    tl.store(ap_ptr + lens * Q + pid, ap, mask=lens < L)
    tl.store(hits_ptr + lens * Q + pid, hits.to(tl.int64), mask=lens < L)


@on_tensor_device
def index_ap_triton(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor,
                    bits: list[int], topk: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    Q, N, L = q.shape[0], db.shape[0], len(bits)
    ap = torch.zeros(L, Q, dtype=torch.float64, device=q.device)
    hits = torch.zeros(L, Q, dtype=torch.int64, device=q.device)
    if Q == 0:
        return ap, hits
    bits_t = torch.tensor(bits, dtype=torch.int64, device=q.device)
    p = launch_params(q, q_labels, bits)
    _index_ap_kernel[(Q,)](q.contiguous(), db.contiguous(), q_labels.contiguous(), db_labels.contiguous(), bits_t,
                           ap, hits, Q, N, L, N if topk is None else topk, **p)
    return ap, hits
