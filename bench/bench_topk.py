"""Exact Hamming top-k on CPU, side by side in one run: nhl_fast vs faiss vs torch GEMM.

    python bench/bench_topk.py            # 1,000 queries, N = 100k and 1M, 64/128 bits, k = 100/1000
    python bench/bench_topk.py --quick    # tiny smoke run

Methods (same threads for all: torch.set_num_threads and faiss.omp_set_num_threads):
  nhl_fast  nf.topk(q, db, k, bits=(b,))  exact, ties by lower index
  faiss     faiss.IndexBinaryFlat(b).search (heap top-k; search only, add() not timed)
  gemm      +-1 float codes, q @ db_chunk.T, torch.topk per chunk then merged (db unpacked per
            chunk inside the timing, so memory stays bounded)
Also: nhl_fast with 5 lengths (8, 16, 32, 64, 128) in one pass vs the 128-bit-only call, and
the throughput of nf.hamming (the full (L, Q, N) matrix). Runs of the methods are interleaved
and ratios use each method's fastest run, which is the most robust figure on a shared machine.
Results: bench/results/bench_topk.json, one row per method and size ("measure": "topk") and per
nf.hamming call ("measure": "hamming"); the ratios are computed from the rows' min_s when read.
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import nhl_fast as nf  # noqa: E402

FIVE = (8, 16, 32, 64, 128)


def random_packed(n: int, words: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**63), 2**63 - 1, (n, words), dtype=torch.int64, generator=g)


def gemm_topk(q: torch.Tensor, db: torch.Tensor, k: int, bits: int, chunk: int = 16384):
    """Baseline: Hamming = (b - <x, y>) / 2 on +-1 floats; k largest dots per chunk, merged."""
    qf = nf.unpack(q, bits)
    best_s = torch.full((q.shape[0], 0), float("-inf"))
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64)
    for n0 in range(0, db.shape[0], chunk):
        s = qf @ nf.unpack(db[n0 : n0 + chunk], bits).T
        kk = min(k, s.shape[1])
        v, i = torch.topk(s, kk, dim=1)
        best_s, pos = torch.topk(torch.cat([best_s, v], 1), min(k, best_s.shape[1] + kk), dim=1)
        best_i = torch.gather(torch.cat([best_i, i + n0], 1), 1, pos)
    return ((bits - best_s) / 2).round().to(torch.int32), best_i


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(times: list[float]) -> dict:
    s = sorted(times)
    return {"median_s": s[len(s) // 2], "min_s": s[0], "runs": len(s)}


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-gemm", action="store_true", help="skip the torch GEMM baseline")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        faiss = None
        print("faiss not installed (pip install faiss-cpu): skipping the faiss baseline")

    Q = 100 if args.quick else 1000
    sizes = [20_000, 50_000] if args.quick else [100_000, 1_000_000]
    ks = [10, 100] if args.quick else [100, 1000]
    repeat = 2 if args.quick else args.repeat
    q_all = random_packed(Q, 2, seed=1)
    db_all = random_packed(max(sizes), 2, seed=2)
    rows = []
    print(f"threads={args.threads} Q={Q} build={nf.build_info()}")
    header = f"{'bits':>4} {'N':>9} {'k':>5} | {'nhl_fast':>9} {'faiss':>9} {'gemm':>9} {'nhl 5-len':>9} | {'faiss/nhl':>9} {'gemm/nhl':>8} {'5len/1len':>9}"
    print(header + "\n" + "-" * len(header))
    for bits in (64, 128):
        words = bits // 64
        q = q_all[:, :words].contiguous()
        for n in sizes:
            db = db_all[:n, :words].contiguous()
            index = None
            if faiss is not None:
                index = faiss.IndexBinaryFlat(bits)
                index.add(db.view(torch.uint8).numpy())
                q_bytes = q.view(torch.uint8).numpy()
            for k in ks:
                methods = {"nhl_fast": lambda: nf.topk(q, db, k, bits=(bits,))}
                if bits == 128:
                    methods["nhl_fast_5len"] = lambda: nf.topk(q, db, k, bits=FIVE)
                if index is not None:
                    methods["faiss"] = lambda: index.search(q_bytes, k)
                times = {m: [] for m in methods}
                for m, fn in methods.items():  # warm-up (and a check that we agree with faiss)
                    out = fn()
                    if m == "faiss":
                        ours = nf.topk(q, db, k, bits=(bits,))[0][0]
                        assert torch.equal(torch.from_numpy(out[0]).to(torch.int32), ours), "faiss distances differ"
                runs = repeat if n >= 1_000_000 else 2 * repeat + 1  # cheap sizes: more runs, less noise
                for _ in range(runs):  # interleaved, so load drift hits every method alike
                    for m, fn in methods.items():
                        times[m].append(timed(fn))
                if not args.no_gemm:
                    times["gemm"] = [timed(lambda: gemm_topk(q, db, k, bits))]
                res = {m: summary(t) for m, t in times.items()}
                for m, r in res.items():
                    rows.append({"measure": "topk", "method": m, "bits": list(FIVE) if m == "nhl_fast_5len" else bits,
                                 "N": n, "k": k, "Q": Q, **r})
                best = {m: r["min_s"] for m, r in res.items()}
                ratio = {"bits": bits, "N": n, "k": k,
                         "faiss_over_nhl": best["faiss"] / best["nhl_fast"] if "faiss" in best else None,
                         "gemm_over_nhl": best["gemm"] / best["nhl_fast"] if "gemm" in best else None,
                         "five_over_one_length": best["nhl_fast_5len"] / best["nhl_fast"] if "nhl_fast_5len" in best else None}
                fmt = lambda m: f"{best[m]:9.3f}" if m in best else f"{'-':>9}"
                rfmt = lambda x, w: f"{x:{w}.2f}" if x is not None else f"{'-':>{w}}"
                print(f"{bits:>4} {n:>9} {k:>5} | {fmt('nhl_fast')} {fmt('faiss')} {fmt('gemm')} {fmt('nhl_fast_5len')} | "
                      f"{rfmt(ratio['faiss_over_nhl'], 9)} {rfmt(ratio['gemm_over_nhl'], 8)} {rfmt(ratio['five_over_one_length'], 9)}",
                      flush=True)

    # nf.hamming throughput: the full (L, Q, N) int32 matrix
    hq, hn = (50, 20_000) if args.quick else (200, 100_000)
    for lengths in ((128,), FIVE, (64,)):
        words = (lengths[-1] + 63) // 64
        qh, dbh = q_all[:hq, :words].contiguous(), db_all[:hn, :words].contiguous()
        r = _common.timeit(lambda: nf.hamming(qh, dbh, bits=lengths), warmup=1, repeat=repeat)
        pairs = hq * hn
        rows.append({"measure": "hamming", "method": "nhl_fast", "bits": list(lengths), "Q": hq, "N": hn, **r,
                     "pairs_per_s": pairs / r["min_s"], "out_GB_per_s": pairs * len(lengths) * 4 / r["min_s"] / 1e9})
        print(f"hamming bits={lengths}: Q={hq} N={hn}: {r['min_s'] * 1e3:.1f} ms, "
              f"{pairs / r['min_s'] / 1e9:.2f} G pairs/s, {rows[-1]['out_GB_per_s']:.2f} GB/s written")

    path = _common.write_results(args.out or "bench_topk", {
        "config": {"Q": Q, "sizes": sizes, "ks": ks, "threads": args.threads, "repeat": repeat, "quick": args.quick,
                   "ratios_from": "fastest run of each method, runs interleaved"},
        "rows": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
