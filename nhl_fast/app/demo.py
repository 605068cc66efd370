"""`nhl-fast demo`: a short tour of the multi-length Hamming engine.

Packs random 128-bit codes, prints the distances of all nested lengths (8..128 bits) from one
pass, exact top-k per length, and timings of the one-pass engine on a 200k-code database.
Uses the library alone (torch and numpy): no data set, no app extra.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

import nhl_fast as nf

LENGTHS = (8, 16, 32, 64, 128)


def run(n: int = 200_000, queries: int = 100, k: int = 10, backend: Optional[str] = None) -> None:
    """Print the tour: n database codes, `queries` queries, top-k per length, on `backend` (None: auto)."""
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and backend != "cpp" else "cpu"
    print(f"nhl_fast {nf.__version__}: {nf.build_info()}")

    # 1. pack real-valued codes (e.g. a hashing head's tanh outputs) into int64 words
    real = torch.randn(6, 128)
    packed = nf.pack(real.to(device), backend=backend)
    print(f"\npacked {tuple(real.shape)} float codes -> {tuple(packed.shape)} {packed.dtype} "
          f"(bit j = word j//64, bit j%64; as bytes it is faiss's binary layout)")
    assert torch.equal(nf.unpack(packed, 128).cpu(), torch.where(real > 0, 1.0, -1.0))

    # 2. every nested length's distances from one pass over the words
    q, db = packed[:2], packed[2:]
    D = nf.hamming(q, db, bits=LENGTHS, backend=backend).cpu()
    print(f"\nHamming distances, query 0 vs 4 codes, for lengths {LENGTHS} (one pass):")
    for b, row in zip(LENGTHS, D[:, 0]):
        print(f"  {b:>3} bits: {row.tolist()}")

    # 3. exact top-k per length on a larger random database
    dbig = nf.pack(torch.randn(n, 128).to(device), backend=backend)
    qbig = nf.pack(torch.randn(queries, 128).to(device), backend=backend)
    dist, idx = nf.topk(qbig, dbig, k, bits=LENGTHS, backend=backend)
    print(f"\ntop-{k} of query 0 among {n:,} codes (ascending distance, ties by lower index):")
    for li, b in enumerate(LENGTHS):
        print(f"  {b:>3} bits: dist {dist[li, 0, :6].tolist()} idx {idx[li, 0, :6].tolist()} ...")

    # 4. timings: 5 lengths in one pass vs the 128-bit length alone
    def best_of(fn, runs=3):
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        t = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            t = min(t, time.perf_counter() - t0)
        return t

    t1 = best_of(lambda: nf.topk(qbig, dbig, k, bits=(128,), backend=backend))
    t5 = best_of(lambda: nf.topk(qbig, dbig, k, bits=LENGTHS, backend=backend))
    hq = qbig[:20]  # the full (L, Q, N) matrix: a few queries keep it small
    th = best_of(lambda: nf.hamming(hq, dbig, bits=LENGTHS, backend=backend))
    pairs = queries * n
    print(f"\ntimings on {device} ({queries} queries x {n:,} codes, k={k}):")
    print(f"  topk, 128 bits only     : {t1 * 1e3:8.1f} ms  ({pairs / t1 / 1e9:.2f} G pairs/s)")
    print(f"  topk, 5 lengths, 1 pass : {t5 * 1e3:8.1f} ms  ({t5 / t1:.2f}x the single length)")
    print(f"  hamming, 5 lengths      : {th * 1e3:8.1f} ms  for the (5, {hq.shape[0]}, {n:,}) int32 matrix")

