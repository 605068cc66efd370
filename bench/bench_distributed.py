"""Sharded search and evaluation (nhl_fast.distributed, gloo on CPU): 1 process vs 2 ranks on one machine.

    python bench/bench_distributed.py            # N = 1M x 128-bit codes, Q = 1,000, 5 lengths, 100 classes
    python bench/bench_distributed.py --quick    # tiny smoke run

Rows "merge": the best k of R sorted runs of k keys (torch.topk, one thread) for R up to 64, the merge
each rank runs, measured alone for the projection in bench/README.md. Rows, per operation (topk k=100; mAP tie-aware over the whole ranking; index-ordered mAP@1000 from the
merged top-k; index-ordered mAP over the whole ranking, the rank scan, on a slice of the queries):
  ranks=1  the single-process function (nf.topk, nf.mean_average_precision) with 1 and with 2 threads
  ranks=2  nf.distributed.* with 2 spawned ranks of 1 thread each (the machine's 2 cores), each holding
           N/2 codes: wall time (the slower rank), and the same rank's local compute alone (the
           single-process function on its shard), so that total - local = communication + merge;
           bytes_per_query: what one rank receives per query in that call's collectives (from the sizes).
The two ranks talk through loopback TCP: communication costs CPU here, not a network. Runs are
interleaved with the single-process rows in one invocation; the machine is shared, so the figures are
ratios of one run. Results: bench/results/bench_distributed.json.
"""
from __future__ import annotations

import datetime
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import nhl_fast as nf  # noqa: E402

FIVE = (8, 16, 32, 64, 128)


def make_data(n: int, q: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    db = torch.randint(-(2**63), 2**63 - 1, (n, 2), dtype=torch.int64, generator=g)
    qc = torch.randint(-(2**63), 2**63 - 1, (q, 2), dtype=torch.int64, generator=g)
    return qc, db, torch.randint(0, classes, (q,), generator=g), torch.randint(0, classes, (n,), generator=g)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def operations(cfg):
    """(name, single-process fn(q, db, ql, dl), sharded fn, queries used, bytes one rank receives per query)."""
    L, k, B, w = len(FIVE), cfg["k"], max(FIVE) + 1, 2
    kmap = cfg["map_topk"]
    return [
        ("topk", lambda q, db, ql, dl: nf.topk(q, db, k, FIVE),
         lambda q, db, ql, dl: nf.distributed.topk(q, db, k, FIVE), cfg["q"], (w - 1) * L * k * 8),
        ("map_average", lambda q, db, ql, dl: nf.mean_average_precision(q, db, ql, dl, FIVE, ties="average"),
         lambda q, db, ql, dl: nf.distributed.mean_average_precision(q, db, ql, dl, FIVE, ties="average"),
         cfg["q"], 2 * L * B * 8),  # all_reduce of (all, relevant) histograms: payload per query
        (f"map_index_at_{kmap}", lambda q, db, ql, dl: nf.mean_average_precision(q, db, ql, dl, FIVE, topk=kmap),
         lambda q, db, ql, dl: nf.distributed.mean_average_precision(q, db, ql, dl, FIVE, topk=kmap),
         cfg["q"], (w - 1) * L * kmap * 8),
        ("map_index_all", lambda q, db, ql, dl: nf.mean_average_precision(q, db, ql, dl, FIVE),
         lambda q, db, ql, dl: nf.distributed.mean_average_precision(q, db, ql, dl, FIVE),
         cfg["q_rank_scan"], (w - 1) * 2 * L * B * 8 + 2 * L * 16),  # all_gather of histograms + sums
    ]


def _rank(rank, world, port, cfg, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    q, db, ql, dl = make_data(cfg["n"], cfg["q"], cfg["classes"])
    lo, hi = cfg["n"] * rank // world, cfg["n"] * (rank + 1) // world
    shard, shard_l = db[lo:hi], dl[lo:hi]
    rows = []
    for name, single, sharded, nq, _ in operations(cfg):
        qq, qql = q[:nq], ql[:nq]
        totals, locals_ = [], []
        for _ in range(cfg["repeat"] + 1):  # the first run warms up
            dist.barrier()
            t0 = time.perf_counter()
            sharded(qq, shard, qql, shard_l)
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the call ends for the user when the slower rank is done
            totals.append(float(t))
            dist.barrier()
            t0 = time.perf_counter()
            single(qq, shard, qql, shard_l)  # this rank's local compute alone
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            locals_.append(float(t))
        rows.append({"op": name, "totals": totals[1:], "locals": locals_[1:]})
    if rank == 0:
        torch.save(rows, out)
    dist.destroy_process_group()


def main():
    p = _common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    quick = args.quick
    cfg = {"n": 20_000 if quick else 1_000_000, "q": 50 if quick else 1_000, "k": 100, "map_topk": 100 if quick else 1000,
           "q_rank_scan": 5 if quick else 20, "q_merge": 10 if quick else 100, "classes": 100, "repeat": 1 if quick else 3, "bits": list(FIVE)}
    q, db, ql, dl = make_data(cfg["n"], cfg["q"], cfg["classes"])
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, single, _, nq, bpq in operations(cfg):
            t = _common.timeit(lambda: single(q[:nq], db, ql[:nq], dl), repeat=cfg["repeat"])
            rows.append({"op": name, "ranks": 1, "threads_per_rank": threads, "n": cfg["n"], "queries": nq,
                         "median_s": t["median_s"], "min_s": t["min_s"], "bytes_per_query": 0})
            print(f"1 rank x {threads} thread(s)  {name:18s} {t['min_s']:.3f} s", flush=True)
    del q, db, ql, dl
    # the merge alone, for the projection: select the best k of R sorted runs of k keys, one thread
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    for k in (cfg["k"], cfg["map_topk"]):
        for R in (2, 8, 32, 64):
            keys = torch.sort(torch.randint(0, 2**62, (len(FIVE), cfg["q_merge"], R, k), generator=g), -1).values
            keys = keys.view(len(FIVE), cfg["q_merge"], R * k)
            t = _common.timeit(lambda: torch.topk(keys, k, dim=-1, largest=False, sorted=True), repeat=cfg["repeat"])
            rows.append({"op": "merge", "ranks": R, "k": k, "queries": cfg["q_merge"], "median_s": t["median_s"],
                         "min_s": t["min_s"]})
            print(f"merge of {R} x {k} keys, {cfg['q_merge']} queries: {t['min_s']:.4f} s", flush=True)
            del keys

    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.pt")
        mp.start_processes(_rank, args=(2, free_port(), cfg, out), nprocs=2, join=True, start_method="spawn")
        sharded_rows = torch.load(out)
    for r, (name, _, _, nq, bpq) in zip(sharded_rows, operations(cfg)):
        rows.append({"op": name, "ranks": 2, "threads_per_rank": 1, "n": cfg["n"], "queries": nq,
                     "median_s": sorted(r["totals"])[len(r["totals"]) // 2], "min_s": min(r["totals"]),
                     "local_compute_min_s": min(r["locals"]), "bytes_per_query": bpq})
        print(f"2 ranks x 1 thread    {name:18s} {min(r['totals']):.3f} s (local compute {min(r['locals']):.3f} s, "
              f"{bpq} B/query received)", flush=True)
    path = _common.write_results(args.out or "bench_distributed", {"config": cfg, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
