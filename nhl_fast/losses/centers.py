"""Binary code centres / target vectors for the centre-based losses (CSQ, DPN, MDSH, SHCIR).

Two layouts:

* ``"per_length"`` (the references): one independent (C, b_k) centre matrix per length.
  These are NOT prefixes of each other in general, so the K lengths pull one shared head
  towards unrelated targets on their common bits (only for C <= b_1 and power-of-two
  lengths do the Sylvester-Hadamard rows happen to nest).
* ``"nested"``: one (C, b_max) matrix; length b_k uses the prefix ``centers[:, :b_k]``.
  Built greedily from a pool of signed Sylvester-Hadamard rows of size b_max (when b_max is
  a power of two) followed by random balanced vectors, each step taking the candidate that
  maximises ``min_k d_k / b_k`` (d_k = its minimum prefix Hamming distance at b_k to the
  centres already taken; ties by the sum over k, then pool order). Prefix b of row i of
  H_{b_max} is row (i mod b) of H_b, so for C <= 2 b_1 and power-of-two lengths this takes
  rows 0..b_1-1 and their negations and every length gets min distance b_k / 2, the
  Plotkin optimum (what Hadamard centres give per length).

Measured minimum pairwise prefix Hamming distance, bit_list (8, 16, 32, 64, 128), seed 0
(``min_prefix_distance``; asserted in tests/test_losses.py)::

    C    layout                      8   16   32   64  128
    10   per_length (CSQ, Hadamard)  4    8   16   32   64
    10   nested                      4    8   16   32   64
    100  per_length (CSQ)            0    2    6   32   64
    100  per_length ("optimized")    0    4   10   32   64
    100  nested                      2    3    6   18   44

(100 classes cannot be separated in 8 bits: at most 16 Hadamard prefixes exist there.)
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from torch import Tensor


def is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def hadamard(n: int) -> Tensor:
    """Sylvester Hadamard matrix (n, n) of +-1, n a power of two (same matrix as scipy.linalg.hadamard)."""
    if not is_pow2(n):
        raise ValueError(f"Sylvester Hadamard needs a power-of-two size, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def balanced_random(n: int, bit: int, ones_minus: int, gen: torch.Generator) -> Tensor:
    """n rows of +1 with `ones_minus` random positions set to -1 (the references' random.sample)."""
    order = torch.rand(n, bit, generator=gen).argsort(1)
    return torch.where(order < ones_minus, -1.0, 1.0)


def pairwise_hamming(c: Tensor) -> Tensor:
    """(C, C) Hamming distances of +-1 rows."""
    return (c.shape[1] - c @ c.T) / 2


def csq_centers(num_classes: int, bit: int, gen: torch.Generator, tries: int = 20) -> Tensor:
    """CSQ's Algorithm 1 (DeepHash-pytorch CSQ.py, NHL bit_length/CSQ.py): rows of [H; -H]; classes
    beyond 2b get random balanced rows, redrawn up to `tries` times until min distance > b/4 and
    mean >= b/2 (else the last draw is kept). Lengths without a Hadamard matrix get i.i.d. +-1
    (NHL's fallback for b not a power of two)."""
    if not is_pow2(bit):
        return torch.where(torch.rand(num_classes, bit, generator=gen) < 0.5, -1.0, 1.0)
    h = hadamard(bit)
    h2 = torch.cat([h, -h], 0)
    if num_classes <= h2.shape[0]:
        return h2[:num_classes].clone()
    extra = num_classes - h2.shape[0]
    for _ in range(tries):
        c = torch.cat([h2, balanced_random(extra, bit, bit // 2, gen)], 0)
        d = pairwise_hamming(c)
        iu = torch.triu_indices(num_classes, num_classes, 1)
        pair = d[iu[0], iu[1]]
        if pair.min() > bit / 4 and pair.mean() >= bit / 2:
            break
    return c


def dpn_targets(num_classes: int, bit: int, gen: torch.Generator, p: float = 0.5) -> Tensor:
    """DPN's random target vectors: int(b p) random -1 entries per row (DeepHash-pytorch DPN.py)."""
    return balanced_random(num_classes, bit, int(bit * p), gen)


def nested_centers(num_classes: int, bit_list: Sequence[int], gen: torch.Generator,
                   pool_random: int = 0) -> Tensor:
    """(C, b_max) centres whose prefixes stay separated at every length (greedy, see module doc)."""
    bits = list(bit_list)
    b_max = bits[-1]
    parts = []
    if is_pow2(b_max):
        h = hadamard(b_max)
        parts.append(torch.cat([h, -h], 0))
    parts.append(balanced_random(max(pool_random, 4 * num_classes, 256), b_max, b_max // 2, gen))
    pool = torch.cat(parts, 0)
    # small single-threaded numpy loop: C steps over a (P, b_max) pool
    pool_np = pool.numpy()
    ends = np.array([b - 1 for b in bits])
    scale = np.array(bits, dtype=np.float64)
    chosen = [0]
    mind = np.full((pool_np.shape[0], len(bits)), np.inf)
    taken = np.zeros(pool_np.shape[0], dtype=bool)
    taken[0] = True
    for _ in range(num_classes - 1):
        mism = np.cumsum(pool_np != pool_np[chosen[-1]], axis=1)[:, ends]  # (P, K) prefix distances
        mind = np.minimum(mind, mism)
        norm = mind / scale
        score = norm.min(1) + 1e-3 * norm.sum(1)
        score[taken] = -np.inf
        nxt = int(score.argmax())  # first maximum: ties go to pool order
        chosen.append(nxt)
        taken[nxt] = True
    return pool[chosen].clone()


def per_length_centers(num_classes: int, bit_list: Sequence[int], gen: torch.Generator,
                       method: str = "csq", p: float = 0.5) -> List[Tensor]:
    """One centre matrix per length, generated independently the reference's way."""
    if method == "csq":
        return [csq_centers(num_classes, b, gen) for b in bit_list]
    if method == "dpn":
        return [dpn_targets(num_classes, b, gen, p) for b in bit_list]
    if method == "optimized":  # distance-maximising per length (greedy on one length)
        return [nested_centers(num_classes, (b,), gen) for b in bit_list]
    raise ValueError(f"unknown centre method {method!r}; valid: csq, dpn, optimized")


def min_prefix_distance(centers, bit_list: Sequence[int]) -> List[int]:
    """Minimum pairwise Hamming distance of the centres used at each length.

    `centers`: a (C, b_max) nested matrix (prefixes are used) or a list of K (C, b_k) matrices."""
    out = []
    for k, b in enumerate(bit_list):
        c = centers[k] if isinstance(centers, (list, tuple)) else centers[:, :b]
        d = pairwise_hamming(c.float())
        d.fill_diagonal_(float("inf"))
        out.append(int(d.min().round()) if c.shape[0] > 1 else b)
    return out
