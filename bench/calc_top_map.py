"""The classic deep-hashing evaluation loop, kept as the benchmark baseline.

A re-statement of DeepHash-pytorch's ``CalcTopMap`` (utils/tools.py), the code most deep-hashing
papers (and the NHL reference) report mAP@k with: for every query, a float Hamming distance row
from +-1 codes, a full argsort of the database, and AP over the relevant items of the first
``topk``. ``stable=False`` is the original (numpy's default, unstable quicksort, so tied items
come out in an arbitrary order); ``stable=True`` breaks ties by database index, which is what
``nhl_fast.mean_average_precision(..., ties="index")`` computes without sorting.
"""
from __future__ import annotations

import numpy as np


def hamming_row(query_code: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """Hamming distances of one +-1 code to every +-1 database code: (b - <q, x>) / 2."""
    return 0.5 * (db_codes.shape[1] - db_codes @ query_code)


def average_precision_row(relevant_sorted: np.ndarray, topk: int) -> float:
    """AP of one ranked 0/1 relevance row over its first topk entries (0 when none is relevant)."""
    kept = relevant_sorted[:topk]
    found = int(kept.sum())
    if found == 0:
        return 0.0
    ranks = np.flatnonzero(kept) + 1.0
    return float(np.mean(np.arange(1, found + 1) / ranks))


def calc_top_map(db_codes: np.ndarray, q_codes: np.ndarray, db_labels: np.ndarray, q_labels: np.ndarray,
                 topk: int, stable: bool = False, per_query: bool = False):
    """mAP@topk of +-1 codes (Q, b), (N, b) with one-hot / multi-hot labels (Q, C), (N, C)."""
    kind = "stable" if stable else None
    aps = np.zeros(len(q_codes))
    for i in range(len(q_codes)):
        relevant = (db_labels @ q_labels[i] > 0).astype(np.float32)
        order = np.argsort(hamming_row(q_codes[i], db_codes), kind=kind)
        aps[i] = average_precision_row(relevant[order], topk)
    return aps if per_query else float(aps.mean())
