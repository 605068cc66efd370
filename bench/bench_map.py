"""mAP evaluation: nhl_fast (all 5 code lengths at once) vs the classic numpy CalcTopMap loop
(one length at a time) and torchmetrics' RetrievalMAP, side by side in one run.

Protocols (synthetic class-clustered 128-bit codes: each class has a random centre, each item
flips every bit of its class centre with probability --flip; labels one-hot):
  cifar10:     1,000 queries x 54,000 database, 10 classes, full ranking (topk = N)
  imagenet100: 5,000 queries x 128,000 database, 100 classes, topk = 1000
The numpy loop runs on --baseline-queries queries per protocol when that is fewer than Q and is
extrapolated linearly to Q (it is a per-query loop); the JSON says which. torchmetrics needs the
flattened (Q*N) score/target/index tensors, so it runs on --tm-queries queries and is
extrapolated the same way. Values: ties="index" must equal the numpy loop with a stable sort.

    python bench/bench_map.py            # both protocols (a few minutes on 2 cores)
    python bench/bench_map.py --quick    # smoke test
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nhl_fast as nf  # noqa: E402
from _common import flatten, parser, timeit, write_results  # noqa: E402
from calc_top_map import calc_top_map  # noqa: E402


class cpu_clock:
    """Wall and process-CPU seconds of a block (CPU time counts every thread, not the waiting)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def blas_threads(n: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # keep the default threads
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(n)

BITS = (8, 16, 32, 64, 128)
PROTOCOLS = {
    "cifar10": dict(queries=1000, database=54000, classes=10, topk=None),
    "imagenet100": dict(queries=5000, database=128000, classes=100, topk=1000),
}
QUICK = {
    "cifar10": dict(queries=100, database=3000, classes=10, topk=None),
    "imagenet100": dict(queries=200, database=6000, classes=100, topk=100),
}


def synthetic(n: int, centres: torch.Tensor, flip: float, gen: torch.Generator):
    labels = torch.randint(0, centres.shape[0], (n,), generator=gen)
    signs = torch.where(torch.rand(n, centres.shape[1], generator=gen) < flip, -1.0, 1.0)
    return centres[labels] * signs, labels


def run_protocol(name, cfg, args, gen):
    Q, N, C, topk = cfg["queries"], cfg["database"], cfg["classes"], cfg["topk"]
    k = topk or N
    centres = torch.where(torch.rand(C, max(BITS), generator=gen) < 0.5, -1.0, 1.0)
    q_codes, q_labels = synthetic(Q, centres, args.flip, gen)
    db_codes, db_labels = synthetic(N, centres, args.flip, gen)
    q, db = nf.pack(q_codes), nf.pack(db_codes)
    row = {"queries": Q, "database": N, "classes": C, "topk": k, "bits": list(BITS)}

    # ours: every length in one call
    ours = lambda ties: nf.mean_average_precision(q, db, q_labels, db_labels, BITS, topk=topk, ties=ties,  # noqa: E731
                                                  reduction="none")
    t_index = timeit(lambda: ours("index"), repeat=args.repeat)
    t_avg = timeit(lambda: ours("average"), repeat=args.repeat)
    with cpu_clock() as c_index:
        ap_index = ours("index")
    ap_avg = ours("average")
    row["nhl_fast"] = {"index_s": t_index["median_s"], "average_s": t_avg["median_s"],
                       "index_min_s": t_index["min_s"], "average_min_s": t_avg["min_s"],
                       "index_process_cpu_s": c_index.cpu,
                       "map_index": ap_index.mean(1).tolist(), "map_average": ap_avg.mean(1).tolist()}

    # numpy CalcTopMap, one length at a time: the original (unstable sort) timed on nb queries; the
    # stable-sort variant on ns <= nb queries checks that ties="index" gives the same numbers.
    nb = min(Q, args.baseline_queries)
    ns = min(nb, args.stable_queries)
    onehot_q = torch.nn.functional.one_hot(q_labels, C).float().numpy()
    onehot_db = torch.nn.functional.one_hot(db_labels, C).float().numpy()
    classic_s, classic_1t_s, classic_1t_cpu, stable_s, max_diff, map_gap = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    for li, b in enumerate(BITS):
        qb = np.ascontiguousarray(q_codes[:nb, :b].numpy())
        dbb = np.ascontiguousarray(db_codes[:, :b].numpy())
        t0 = time.perf_counter()
        unstable = calc_top_map(dbb, qb, onehot_db, onehot_q[:nb], k, stable=False, per_query=True)
        classic_s += time.perf_counter() - t0
        with blas_threads(1), cpu_clock() as c:  # the same loop with single-threaded BLAS: faster on a busy 2-core box
            calc_top_map(dbb, qb, onehot_db, onehot_q[:nb], k, stable=False, per_query=True)
        classic_1t_s += c.wall
        classic_1t_cpu += c.cpu
        t0 = time.perf_counter()
        stable = calc_top_map(dbb, qb[:ns], onehot_db, onehot_q[:ns], k, stable=True, per_query=True)
        stable_s += time.perf_counter() - t0
        max_diff = max(max_diff, float(np.abs(stable - ap_index[li, :ns].numpy()).max()))
        map_gap = max(map_gap, abs(float(unstable.mean()) - float(ap_index[li, :nb].mean())))
    row["numpy_calc_top_map"] = {
        "queries_timed": nb, "extrapolated": nb < Q, "seconds_5_lengths": classic_s * Q / nb,
        "blas_1_thread_seconds_5_lengths": classic_1t_s * Q / nb,
        "blas_1_thread_process_cpu_s_5_lengths": classic_1t_cpu * Q / nb,
        "stable_sort_queries_timed": ns, "stable_sort_seconds_5_lengths": stable_s * Q / ns,
        "max_abs_diff_per_query_ap_stable_loop_vs_ties_index": max_diff,
        "max_abs_diff_map_unstable_loop_vs_ties_index": map_gap,
    }
    row["speedup_vs_numpy"] = classic_s * Q / nb / t_index["median_s"]
    row["speedup_vs_numpy_blas_1_thread"] = classic_1t_s * Q / nb / t_index["median_s"]
    # load-independent: CPU seconds of the 1-thread loop / CPU seconds of ours (all threads)
    row["cpu_time_ratio_vs_numpy_blas_1_thread"] = classic_1t_cpu * Q / nb / c_index.cpu
    row["speedup_vs_numpy_stable"] = stable_s * Q / ns / t_index["median_s"]

    row["torchmetrics"] = torchmetrics_row(q_codes, db_codes, q_labels, db_labels, k, args, t_index["median_s"], ap_index)
    return row


def torchmetrics_row(q_codes, db_codes, q_labels, db_labels, k, args, ours_s, ap_index):
    try:
        from torchmetrics.retrieval import RetrievalMAP
    except ImportError as e:
        return {"skipped": f"torchmetrics not importable: {e}"}
    Q, N = q_codes.shape[0], db_codes.shape[0]
    nt = min(Q, args.tm_queries)
    full_bytes = Q * N * (4 + 1 + 8)  # float32 scores + bool targets + int64 query indexes, per length
    total = 0.0
    maps = []
    for b in BITS:
        scores = (b + q_codes[:nt, :b] @ db_codes[:, :b].T) / 2  # b - distance: higher = closer (must be >= 0 for RetrievalMAP)
        target = q_labels[:nt, None] == db_labels[None, :]
        indexes = torch.arange(nt)[:, None].expand(nt, N)
        metric = RetrievalMAP(top_k=k)
        t0 = time.perf_counter()
        maps.append(float(metric(scores.reshape(-1), target.reshape(-1), indexes.reshape(-1))))
        total += time.perf_counter() - t0
    scale = Q / nt
    return {"queries_timed": nt, "extrapolated": nt < Q, "seconds_5_lengths": total * scale,
            "speedup_vs_torchmetrics": total * scale / ours_s,
            "why_subset": f"RetrievalMAP takes flat (Q*N,) preds/target/indexes: {full_bytes / 2**30:.1f} GiB per length at full size",
            "map_subset": maps,
            "max_abs_diff_of_map_vs_ties_index_subset": max(abs(m - float(ap_index[i, :nt].mean())) for i, m in enumerate(maps))}


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--flip", type=float, default=0.25, help="bit flip probability around the class centre")
    p.add_argument("--baseline-queries", type=int, default=None, help="numpy queries timed per protocol (default: 1000 / 100)")
    p.add_argument("--stable-queries", type=int, default=200, help="queries of the stable-sort numpy loop (value check)")
    p.add_argument("--tm-queries", type=int, default=10, help="torchmetrics queries timed per protocol")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--protocols", default="cifar10,imagenet100")
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    configs = QUICK if args.quick else PROTOCOLS
    load_start = os.getloadavg()  # the machine is shared: record how busy it was
    results = {}
    for name in args.protocols.split(","):
        cfg = configs[name]
        if args.baseline_queries is None:
            args_nb = 1000 if name == "cifar10" else 100
        else:
            args_nb = args.baseline_queries
        args.baseline_queries, saved = args_nb, args.baseline_queries
        results[name] = run_protocol(name, cfg, args, gen)
        args.baseline_queries = saved
        r = results[name]
        print(f"{name}: nhl_fast index {r['nhl_fast']['index_s'] * 1e3:.1f} ms, average {r['nhl_fast']['average_s'] * 1e3:.1f} ms | "
              f"numpy CalcTopMap {r['numpy_calc_top_map']['seconds_5_lengths']:.1f} s "
              f"({'extrapolated from ' + str(r['numpy_calc_top_map']['queries_timed']) + ' queries' if r['numpy_calc_top_map']['extrapolated'] else 'all queries'}) "
              f"-> {r['speedup_vs_numpy']:.0f}x (1-thread BLAS: {r['numpy_calc_top_map']['blas_1_thread_seconds_5_lengths']:.1f} s -> {r['speedup_vs_numpy_blas_1_thread']:.0f}x, "
              f"CPU-time ratio {r['cpu_time_ratio_vs_numpy_blas_1_thread']:.0f}x; stable-sort loop: {r['speedup_vs_numpy_stable']:.0f}x) | "
              f"max |AP - stable loop| {r['numpy_calc_top_map']['max_abs_diff_per_query_ap_stable_loop_vs_ties_index']:.2e} | "
              f"torchmetrics {r['torchmetrics'].get('seconds_5_lengths', float('nan')):.1f} s "
              f"-> {r['torchmetrics'].get('speedup_vs_torchmetrics', float('nan')):.0f}x", flush=True)
    # one row per protocol; each method's figures as <method>_<figure> columns
    rows = [flatten({"protocol": name, **r}) for name, r in results.items()]
    path = write_results(args.out or ("bench_map_quick" if args.quick else "bench_map"), {
        "config": {"flip": args.flip, "threads": torch.get_num_threads(), "repeat": args.repeat, "quick": args.quick,
                   "load_average_at_start": list(load_start), "load_average_at_end": list(os.getloadavg()),
                   "note": "numpy/torchmetrics times are extrapolated linearly from the queries timed where "
                           "'extrapolated' is true"},
        "rows": rows})
    print("wrote", path)


if __name__ == "__main__":
    main()
