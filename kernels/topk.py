"""Triton topk: (L, Q, k) smallest Hamming distances and their indices, ties by lower index.

The database is streamed in chunks: a Triton tile kernel writes, for every length at once,
unique int64 keys dist * N + index for the chunk (one pass over the words), and the running
best k keys are merged with the chunk's by torch.topk. Keys are unique and ordered exactly
like (distance, index), so the selection and its order are exact and deterministic whatever
the selection algorithm. Working set: L x Q_batch x (k + chunk) keys.
"""
from __future__ import annotations

from typing import Sequence

import torch

from nhl_fast.kernels import on_tensor_device
from nhl_fast.kernels.hamming import MAX_QUERY_TILES, launch_tile, length_table

MIN_CHUNK = 8192  # database rows per step (at least k, so each merge is O(k + chunk))


def max_keys(device: torch.device) -> int:
    """Keys per step: 256 MiB on the CPU (the interpreter); on a GPU an eighth of its free memory,
    at most 2 GiB, so that large databases take few, large steps (a fixed 8,192-row chunk meant
    thousands of launches at N = 10^8)."""
    if device.type != "cuda":
        return 1 << 25
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1 << 25, min(1 << 28, free // 64)))


@on_tensor_device
def topk_triton(q: torch.Tensor, db: torch.Tensor, k: int, bits: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    q, db = q.contiguous(), db.contiguous()
    bits = list(bits)
    nq, n, nl = q.shape[0], db.shape[0], len(bits)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, N] with N={n} database codes")
    if (64 * q.shape[1] + 1) * n >= 1 << 63:
        raise ValueError(f"N={n} is too large for int64 (distance, index) keys")
    dist = torch.empty((nl, nq, k), dtype=torch.int32, device=q.device)
    idx = torch.empty((nl, nq, k), dtype=torch.int64, device=q.device)
    if nq == 0:
        return dist, idx
    table, words_used = length_table(bits, q.device)
    keys_budget = max_keys(q.device)
    q_batch = max(1, min(nq, keys_budget // (nl * (k + max(MIN_CHUNK, k))), 16 * MAX_QUERY_TILES))
    # the rest of the budget goes to longer chunks: fewer launches and merges per query batch
    chunk = min(n, max(MIN_CHUNK, k, keys_budget // (nl * q_batch) - k))
    for q0 in range(0, nq, q_batch):
        qb = q[q0:q0 + q_batch]
        best = None
        for c0 in range(0, n, chunk):
            part = db[c0:c0 + chunk]
            keys = torch.empty((nl, qb.shape[0], part.shape[0]), dtype=torch.int64, device=q.device)
            launch_tile(qb, part, keys, table, words_used, keys=True, key_n=n, key_base=c0)
            if best is not None:
                keys = torch.cat([best, keys], dim=-1)
            best = torch.topk(keys, k, dim=-1, largest=False, sorted=False).values if keys.shape[-1] > k else keys
        best = torch.sort(best, dim=-1).values  # unique keys: the order is fully determined
        dist[:, q0:q0 + q_batch] = torch.div(best, n, rounding_mode="floor").to(torch.int32)
        idx[:, q0:q0 + q_batch] = best % n
    return dist, idx
