"""Retrieval evaluation for packed binary codes: mAP (and mAP@k), precision@radius, PR curves,
precision@k and recall@k, every code length from one streamed pass over the database.

Nothing Q x N is ever built and the database is never sorted. Two kernels do the work:

* ``distance_histogram`` -> ``tot[l, q, d]``, ``rel[l, q, d]``: how many database items (all /
  relevant) lie at Hamming distance ``d`` from query ``q`` at length ``bits[l]``. Tie-aware AP,
  precision@radius, PR curves and tie-aware P@k / R@k are closed forms of these counts.
* ``index_ap`` (``ties="index"``): ranks are by (distance, database index), i.e. the classic
  DeepHash ``CalcTopMap`` loop with a *stable* sort. Within a distance bin the rank of an item
  depends on how relevant and irrelevant items interleave in index order, which no histogram
  holds; so after the histogram pass a second pass in index order gives every relevant item its
  exact rank ``N_<d + p`` and relevant-rank ``R_<d + j``. Exact, not an approximation. For AP@k
  with ``k <= N / 64`` the C++ op instead runs the exact top-k scan (each length's best k by
  (distance, index) are all AP@k depends on) and scores those k items' labels.

Working set of the C++ kernel, per thread: a block of <= 8 queries times ``sum_l (bits[l] + 1)``
64-bit bins (2 KiB per query for 8..128 bits; the block shrinks to keep this <= 16 KiB), a
512-item tile of the database, and for ``index_ap`` a log of at most 2^20 relevant-item records
(8 MiB; a block that would overflow it re-walks the database instead). Outputs are
(L, Q[, max(bits) + 1]); nothing grows with Q x N. CUDA: one warp per query, its histograms in
shared memory (or a (Q, bins) global scratch when they exceed 24 KiB per query). The torch reference bounds its (L, chunk, N) distance tensors to 4M
elements; tie-aware AP@k bounds its (rows, k) hypergeometric tensors the same way.

Relevance: class indices (1-D integer tensors: equal labels are relevant) or multi-hot matrices
(2-D, 0/1: relevant when two items share a label), packed to bitmasks so a test is one AND.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from nhl_fast import _checks
from nhl_fast._dispatch import dispatch

TIES = ("index", "average")
REDUCTIONS = ("mean", "none")
_CHUNK = 1 << 22  # elements per temporary tensor (label packing)


# ---------------------------------------------------------------- argument checks


def _labels_of(labels, name: str, rows: int, codes_name: str, device: torch.device) -> torch.Tensor:
    """The ops' form of checked labels: int64 class indices (N,), or multi-hot packed to (N, ceil(C/64)) words."""
    labels = _checks.labels(labels, name, rows=rows, of=codes_name, device=device)
    return labels.to(torch.int64).contiguous() if labels.dim() == 1 else _pack_rows(labels != 0)


def _pack_rows(on: torch.Tensor) -> torch.Tensor:
    """(N, C) bool -> (N, ceil(C/64)) int64 bitmasks, LSB-first like packed codes; 4M elements at a time."""
    n, c = on.shape
    words = (c + 63) // 64
    weights = torch.ones(64, dtype=torch.int64, device=on.device) << torch.arange(64, device=on.device)
    out = torch.empty(n, words, dtype=torch.int64, device=on.device)
    step = max(1, _CHUNK // (words * 64))
    for s in range(0, n, step):
        part = torch.nn.functional.pad(on[s:s + step].to(torch.int64), (0, words * 64 - c))
        out[s:s + step] = (part.view(-1, words, 64) * weights).sum(-1)  # distinct powers of two: sum == OR
    return out


def _prepare(q, db, q_labels, db_labels, bits):
    q, db = _checks.query_and_database(q, db)
    bits = _checks.bit_lengths(bits, q.shape[1])
    _checks.metric_limits(db, bits)
    ql, dl = prepare_labels(q, db, q_labels, db_labels)
    return q.contiguous(), db.contiguous(), ql, dl, list(bits)


def prepare_labels(q, db, q_labels, db_labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked labels of one kind, in the ops' form (class indices, or multi-hot packed to words)."""
    ql = _labels_of(q_labels, "q_labels", q.shape[0], "q", q.device)
    dl = _labels_of(db_labels, "db_labels", db.shape[0], "db", db.device)
    if ql.dim() != dl.dim():
        raise ValueError("q_labels and db_labels must be of one kind: both 1-D class indices or both 2-D multi-hot, "
                         f"got shapes {tuple(q_labels.shape)} and {tuple(db_labels.shape)}")
    if ql.dim() == 2 and q_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(f"q_labels and db_labels must have the same number of classes, got {q_labels.shape[1]} and {db_labels.shape[1]}")
    return ql, dl


def _topk(topk, n: int, name: str = "topk") -> Optional[int]:
    return None if topk is None else _checks.positive_k(topk, n, name)


def _reduce(per_query: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_query.mean(1) if reduction == "mean" else per_query


def _histograms(q, db, ql, dl, bits, backend):
    return dispatch("distance_histogram", q.device, backend)(q, db, ql, dl, bits)


# ---------------------------------------------------------------- closed forms on the histograms


def tie_aware_ap(tot: torch.Tensor, rel: torch.Tensor, topk: Optional[int] = None, *,
                 backend: Optional[str] = None) -> torch.Tensor:
    """Tie-aware AP (L, Q) float64 from the histograms of ``distance_histogram`` (see
    ``reference.tie_ap`` for the closed forms). The C++ op does one row per (length, query); the other
    backends have no tie_ap kernel and run the reference's O(L Q B) tensor ops on the histograms' device."""
    return dispatch("tie_ap", tot.device, backend)(tot, rel, topk)


def _expected_hits(tot: torch.Tensor, rel: torch.Tensor, k: int) -> torch.Tensor:
    """E[relevant items within the top k] (L, Q) over random tie orders: R_<d* + m r / n."""
    tot, rel = tot.double(), rel.double()
    n_le = tot.cumsum(-1)
    dstar = (n_le < k).sum(-1, keepdim=True)
    take = lambda t: t.gather(-1, dstar).squeeze(-1)  # noqa: E731
    n, r = take(tot), take(rel)
    m = k - (take(n_le) - n)
    return take(rel.cumsum(-1)) - r + m * r / n


# ---------------------------------------------------------------- public API


def mean_average_precision(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor,
                           bits: Optional[Iterable[int]] = None, topk: Optional[int] = None, ties: str = "index",
                           reduction: str = "mean", *, backend: Optional[str] = None) -> torch.Tensor:
    """mAP (or mAP@topk) of every code length: (L,) float64, or (L, Q) per-query AP with reduction="none".

    q, db: packed codes (Q, W), (N, W) int64; q_labels, db_labels: class indices (Q,), (N,) or
    multi-hot (Q, C), (N, C). bits: strictly increasing lengths (default 8, 16, ... up to 64*W).
    topk: AP over the first topk retrieved, normalised by the relevant items found there (0 when
    none), as DeepHash-pytorch's CalcTopMap; None ranks the whole database.
    ties="index": rank by (distance, database index), equal to CalcTopMap with a stable sort;
    ties="average": tie-aware AP, the exact expectation over random orders of equidistant items.
    """
    q, db, ql, dl, bits = _prepare(q, db, q_labels, db_labels, bits)
    topk = _topk(topk, db.shape[0])
    _checks.choice("ties", ties, TIES)
    _checks.choice("reduction", reduction, REDUCTIONS)
    if ties == "index":
        ap, _ = dispatch("index_ap", q.device, backend)(q, db, ql, dl, bits, topk)
    else:
        ap = tie_aware_ap(*_histograms(q, db, ql, dl, bits, backend), topk, backend=backend)
    return _reduce(ap, reduction)


def precision_at_radius(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor,
                        bits: Optional[Iterable[int]] = None, radius: int = 2, reduction: str = "mean", *,
                        backend: Optional[str] = None) -> torch.Tensor:
    """Hash-lookup precision: relevant / retrieved among the items within Hamming `radius` (<=),
    0 for a query that retrieves nothing (the usual P@H<=2 convention). (L,) or (L, Q) float64."""
    q, db, ql, dl, bits = _prepare(q, db, q_labels, db_labels, bits)
    check_radius(radius)
    _checks.choice("reduction", reduction, REDUCTIONS)
    return _reduce(radius_precision(*_histograms(q, db, ql, dl, bits, backend), radius), reduction)


def check_radius(radius) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int):
        raise TypeError(f"radius must be an int, got {type(radius).__name__}")
    if radius < 0:
        raise ValueError(f"radius={radius} must be >= 0")
    return radius


def radius_precision(tot: torch.Tensor, rel: torch.Tensor, radius: int) -> torch.Tensor:
    """(L, Q) precision within Hamming `radius` from the histograms (0 when nothing is retrieved)."""
    r = min(radius, tot.shape[-1] - 1)
    got, good = tot[..., : r + 1].sum(-1).double(), rel[..., : r + 1].sum(-1).double()
    return torch.where(got > 0, good / got.clamp(min=1), 0.0)


def precision_recall_curve(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor,
                           bits: Optional[Iterable[int]] = None, reduction: str = "mean", *,
                           backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall of Hamming-ball retrieval at every radius 0..max(bits).

    Returns (precision, recall), each (L, max(bits) + 1) float64 (or (L, Q, max(bits) + 1) with
    reduction="none"); entry [l, r] retrieves the items within distance <= r at length bits[l].
    Per query: precision = relevant / retrieved (0 when nothing is retrieved), recall = relevant
    retrieved / all relevant (0 when the query has no relevant item).
    """
    q, db, ql, dl, bits = _prepare(q, db, q_labels, db_labels, bits)
    _checks.choice("reduction", reduction, REDUCTIONS)
    precision, recall = radius_curves(*_histograms(q, db, ql, dl, bits, backend))
    return _reduce(precision, reduction), _reduce(recall, reduction)


def radius_curves(tot: torch.Tensor, rel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, Q, B) precision and recall of Hamming-ball retrieval at every radius, from the histograms."""
    got, good = tot.cumsum(-1).double(), rel.cumsum(-1).double()
    every = good[..., -1:]
    precision = torch.where(got > 0, good / got.clamp(min=1), 0.0)
    recall = torch.where(every > 0, good / every.clamp(min=1), 0.0)
    return precision, recall


def _hits_at_k(q, db, q_labels, db_labels, k, bits, ties, backend, want_total: bool):
    q, db, ql, dl, bits = _prepare(q, db, q_labels, db_labels, bits)
    k = _topk(k, db.shape[0], "k")
    if k is None:
        raise TypeError("k must be an int, got None")
    _checks.choice("ties", ties, TIES)
    hist = _histograms(q, db, ql, dl, bits, backend) if (want_total or ties == "average") else None
    if ties == "index":
        _, hits = dispatch("index_ap", q.device, backend)(q, db, ql, dl, bits, k)
        hits = hits.double()
    else:
        hits = _expected_hits(*hist, k)
    total = hist[1].sum(-1).double() if want_total else None
    return hits, k, total


def precision_at_k(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor, k: int,
                   bits: Optional[Iterable[int]] = None, ties: str = "index", reduction: str = "mean", *,
                   backend: Optional[str] = None) -> torch.Tensor:
    """Fraction of relevant items among the first k retrieved: (L,) or (L, Q) float64.
    ties="index": ranked by (distance, index); "average": expectation over random tie orders."""
    _checks.choice("reduction", reduction, REDUCTIONS)
    hits, k, _ = _hits_at_k(q, db, q_labels, db_labels, k, bits, ties, backend, want_total=False)
    return _reduce(hits / k, reduction)


def recall_at_k(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor, k: int,
                bits: Optional[Iterable[int]] = None, ties: str = "index", reduction: str = "mean", *,
                backend: Optional[str] = None) -> torch.Tensor:
    """Fraction of all relevant items found among the first k retrieved (0 for a query with no
    relevant item): (L,) or (L, Q) float64. ties as in precision_at_k."""
    _checks.choice("reduction", reduction, REDUCTIONS)
    hits, _, total = _hits_at_k(q, db, q_labels, db_labels, k, bits, ties, backend, want_total=True)
    return _reduce(torch.where(total > 0, hits / total.clamp(min=1), 0.0), reduction)
