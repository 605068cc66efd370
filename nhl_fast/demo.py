"""A short tour of the multi-length Hamming engine: `python -m nhl_fast.demo`.

Packs random 128-bit codes, prints the distances of all nested lengths (8..128 bits) from one
pass, exact top-k per length, and timings of the one-pass engine on a 200k-code database.
"""
from __future__ import annotations

import argparse
import time

import torch

import nhl_fast as nf

LENGTHS = (8, 16, 32, 64, 128)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000, help="database codes for the timing part")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--backend", default=None, help="auto (default), cpp, cuda, triton or torch")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"nhl_fast {nf.__version__}: {nf.build_info()}")

    # 1. pack real-valued codes (e.g. a hashing head's tanh outputs) into int64 words
    real = torch.randn(6, 128)
    packed = nf.pack(real.to(device), backend=args.backend)
    print(f"\npacked {tuple(real.shape)} float codes -> {tuple(packed.shape)} {packed.dtype} "
          f"(bit j = word j//64, bit j%64; as bytes it is faiss's binary layout)")
    assert torch.equal(nf.unpack(packed, 128).cpu(), torch.where(real > 0, 1.0, -1.0))

    # 2. every nested length's distances from one pass over the words
    q, db = packed[:2], packed[2:]
    D = nf.hamming(q, db, bits=LENGTHS, backend=args.backend).cpu()
    print(f"\nHamming distances, query 0 vs 4 codes, for lengths {LENGTHS} (one pass):")
    for b, row in zip(LENGTHS, D[:, 0]):
        print(f"  {b:>3} bits: {row.tolist()}")

    # 3. exact top-k per length on a larger random database
    dbig = nf.pack(torch.randn(args.n, 128).to(device), backend=args.backend)
    qbig = nf.pack(torch.randn(args.queries, 128).to(device), backend=args.backend)
    dist, idx = nf.topk(qbig, dbig, args.k, bits=LENGTHS, backend=args.backend)
    print(f"\ntop-{args.k} of query 0 among {args.n:,} codes (ascending distance, ties by lower index):")
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

    t1 = best_of(lambda: nf.topk(qbig, dbig, args.k, bits=(128,), backend=args.backend))
    t5 = best_of(lambda: nf.topk(qbig, dbig, args.k, bits=LENGTHS, backend=args.backend))
    th = best_of(lambda: nf.hamming(qbig[:20], dbig, bits=LENGTHS, backend=args.backend))
    pairs = args.queries * args.n
    print(f"\ntimings on {device} ({args.queries} queries x {args.n:,} codes, k={args.k}):")
    print(f"  topk, 128 bits only     : {t1 * 1e3:8.1f} ms  ({pairs / t1 / 1e9:.2f} G pairs/s)")
    print(f"  topk, 5 lengths, 1 pass : {t5 * 1e3:8.1f} ms  ({t5 / t1:.2f}x the single length)")
    print(f"  hamming, 5 lengths      : {th * 1e3:8.1f} ms  for the (5, 20, {args.n:,}) int32 matrix")


if __name__ == "__main__":
    main()
