"""Nested centres whose every prefix is well separated at once (``centers="joint"``), and the coding
bounds that say how far apart C centres of b bits can be at best.

Why: in feature mode the NHL head is linear, so with nested centres each bit row of the projection learns
its own target column and the code at length b_k is exactly as good as the centres' prefix of b_k bits
(bench/bench_fidelity.py measures it: mAP follows the prefix minimum distance). Per-length centres give
each length its own optimum but pull the shared bits towards different targets; prefixes of one long
Hadamard code collide (prefix b of row i of H_n is row i mod b of H_b). So the centres must be chosen for
all prefixes jointly.

Construction (``joint_centers``):

1. block by block: the bits [b_{k-1}, b_k) of every length form a block, each block a good code of its own
   (signed Sylvester-Hadamard rows when its width w is a power of two and C <= 2w, else the greedy
   distance-maximising choice of ``centers.nested_centers`` for that width); blocks are stacked with an
   independent random class assignment each, so a prefix's distance is the sum of its blocks' distances.
2. search: greedy single-bit flips minimising the energy
       E = sum_k sum_{i<j} exp(-a d_k(i, j) / b_k),   d_k = Hamming distance of the b_k-bit prefixes,
   a smooth stand-in for "raise every prefix's minimum distance relative to its length" (exp of the
   normalised distance: the closest pairs dominate). Each sweep visits every row once and takes its best
   flip while any flip lowers E; everything is vectorised over the (K, C, C) prefix distance table.

Measured minimum pairwise prefix distance, bit_list (8, 16, 32, 64, 128), seed 0 (``min_distance_table``,
asserted in tests/test_joint_centers.py; the bound is ``distance_bound``: min of the Plotkin averaging bound
and the Hamming sphere-packing bound)::

    C    layout                      8   16   32   64  128
    100  per_length (CSQ, Hadamard)  0    2    6   32   64
    100  nested (greedy)             2    3    6   18   44
    100  joint                       2    4   11   26   59
    100  upper bound                 2    6   16   32   64
    10   per_length, nested, joint   4    8   16   32   64   (b/2 at every length: Hadamard rows nest)

The trade-off: the 128 words of [H_64; -H_64] meet Plotkin at 64 bits (d = 32) but have only 64 distinct
32-bit prefixes, so taking 100 of them for d = 32 on 64 bits gives d = 0 at 32; joint trades 6 of 32 at 64
bits and 5 of 64 at 128 for 11 instead of 6 at 32 bits and 4 instead of 2 at 16.
"""
from __future__ import annotations

import functools
import math
from typing import List, Sequence

import numpy as np
import torch
from torch import Tensor

from nhl_fast.losses import centers as _c


def prefix_distances(codes: np.ndarray, bit_list: Sequence[int]) -> np.ndarray:
    """(K, C, C) Hamming distances of the b_k-bit prefixes of +-1 rows (C, b_max)."""
    mism = codes[:, None, :] != codes[None, :, :]
    cum = np.cumsum(mism, axis=2, dtype=np.int64)
    return np.stack([cum[:, :, b - 1] for b in bit_list])


def distance_bound(n: int, m: int) -> int:
    """An upper bound on the minimum distance of any m >= 2 binary words of length n:
    min(Plotkin's averaging bound, the Hamming sphere-packing bound).

    Plotkin: the distances of all pairs sum to at most n floor(m/2) ceil(m/2) (per bit position at most
    that many pairs differ), so d <= that / C(m, 2). Hamming: balls of radius t = (d-1)//2 around the m
    words are disjoint, so m sum_{i<=t} C(n, i) <= 2^n."""
    if n < 1 or m < 2:
        raise ValueError(f"distance_bound needs n >= 1 and m >= 2, got n={n}, m={m}")
    plotkin = (n * (m // 2) * ((m + 1) // 2)) // (m * (m - 1) // 2)
    d = plotkin
    while d > 1 and m * sum(math.comb(n, i) for i in range((d - 1) // 2 + 1)) > 2 ** n:
        d -= 1
    return d


def block_centers(num_classes: int, bit_list: Sequence[int], gen: torch.Generator) -> Tensor:
    """(C, b_max): one block of columns [b_{k-1}, b_k) per length, each a good code of its own width,
    each with its own random assignment of code words to classes."""
    blocks, lo = [], 0
    for b in bit_list:
        w = b - lo
        if _c.is_pow2(w) and num_classes <= 2 * w:
            h = _c.hadamard(w)
            block = torch.cat([h, -h], 0)[:num_classes]
        else:
            block = _c.nested_centers(num_classes, (w,), gen)
        blocks.append(block[torch.randperm(num_classes, generator=gen)])
        lo = b
    return torch.cat(blocks, 1)


def energy_search(codes: np.ndarray, bit_list: Sequence[int], sharpness: float = 16.0,
                  sweeps: int = 200) -> np.ndarray:
    """Greedy bit flips lowering E = sum_k sum_{i<j} exp(-sharpness d_k(i,j) / b_k); returns the improved copy."""
    c = codes.astype(np.int8, copy=True)
    n, b_max = c.shape
    bits = np.asarray(bit_list, dtype=np.float64)
    d = prefix_distances(c, bit_list).astype(np.float64)
    covers = (np.arange(b_max)[None, :] < bits[:, None]).astype(np.float64)  # (K, b_max): column j in length k
    grow, shrink = np.expm1(sharpness / bits)[:, None], np.expm1(-sharpness / bits)[:, None]
    for _ in range(sweeps):
        flips = 0
        for i in range(n):
            e = np.exp(-sharpness * d[:, i, :] / bits[:, None])  # (K, C) row i's pair energies
            e[:, i] = 0
            agree = (c == c[i]).astype(np.float64)  # (C, b_max): flipping (i, j) moves these pairs apart
            # change of E per length and column if bit j of row i flips: agreeing pairs +1, the others -1
            delta = ((shrink * (e @ agree) + grow * (e @ (1 - agree))) * covers).sum(0)
            j = int(delta.argmin())
            if delta[j] >= -1e-12 * max(1.0, float(e.sum())):
                continue
            step = np.where(agree[:, j] > 0, 1.0, -1.0)
            step[i] = 0
            k = bits > j
            d[k, i, :] += step
            d[k, :, i] += step
            c[i, j] = -c[i, j]
            flips += 1
        if flips == 0:
            break
    return c


def _score(codes: np.ndarray, bit_list: Sequence[int]) -> tuple:
    """(worst, mean) of min prefix distance / its upper bound over the lengths: higher is better."""
    n = codes.shape[0]
    ratios = [d / max(distance_bound(b, n), 1) for d, b in zip(min_distances(torch.from_numpy(codes), bit_list),
                                                               bit_list)]
    return min(ratios), sum(ratios) / len(ratios)


@functools.lru_cache(maxsize=32)
def _joint(num_classes: int, bit_list: tuple, seed: int, sharpness: float, sweeps: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    starts = [block_centers(num_classes, bit_list, gen), _c.nested_centers(num_classes, bit_list, gen)]
    if num_classes < 2:
        return starts[0].numpy()
    cands = []
    for s in starts:
        s = s.numpy().astype(np.int8)
        cands += [s, energy_search(s, bit_list, sharpness, sweeps)]
    return max(cands, key=lambda c: _score(c, bit_list))  # first best: ties keep the earlier candidate


def joint_centers(num_classes: int, bit_list: Sequence[int], seed: int = 0, sharpness: float = 16.0,
                  sweeps: int = 200) -> Tensor:
    """(C, b_max) nested centres: from two starts (the block construction and the greedy ``nested_centers``),
    each as is and after the energy search, the one whose worst length is closest to its bound (then the
    best mean). Deterministic in `seed`; cached (a few seconds for C = 100)."""
    bits = tuple(int(b) for b in bit_list)
    return torch.from_numpy(_joint(int(num_classes), bits, int(seed), float(sharpness), int(sweeps))).float()


def min_distance_table(num_classes: int, bit_list: Sequence[int], seed: int = 0) -> dict:
    """{layout: [min prefix distance per length]} for per_length, nested, joint centres and the bound."""
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731  each layout from the same seed
    return {"per_length": _c.min_prefix_distance(_c.per_length_centers(num_classes, bit_list, gen()), bit_list),
            "nested": _c.min_prefix_distance(_c.nested_centers(num_classes, bit_list, gen()), bit_list),
            "joint": _c.min_prefix_distance(joint_centers(num_classes, bit_list, seed), bit_list),
            "bound": [distance_bound(b, num_classes) for b in bit_list]}


def min_distances(codes: Tensor, bit_list: Sequence[int]) -> List[int]:
    """Minimum pairwise prefix distance per length of a (C, b_max) +-1 tensor (vectorised)."""
    d = prefix_distances(codes.numpy() > 0, bit_list)
    n = codes.shape[0]
    if n < 2:
        return list(bit_list)
    d[:, np.arange(n), np.arange(n)] = np.iinfo(np.int64).max
    return [int(v) for v in d.reshape(len(bit_list), -1).min(1)]
