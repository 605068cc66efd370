"""Two builds of nhl_fast side by side in one run: the nhl_fast side of bench_topk, bench_map and
bench_train_step, timed in alternating worker processes, one per build and round.

Each --python is an interpreter whose `import nhl_fast` loads one build (a virtual environment with that
checkout installed, e.g. the commit before a change and after it). Every round runs one worker per build, in
alternating order, so load drift on a shared machine hits both alike. A worker times, with the same data,
sizes as the benchmark scripts (--query-fraction scales the query counts, not the databases):
  topk      nf.topk, Q 1,000 x N 100k / 1M, k 100 / 1,000, 64 and 128 bits, and 5 lengths at 128 bits
            (bench_topk.py), and nf.hamming, Q 200 x N 100k (128 bits, 5 lengths, 64 bits)
  map       nf.mean_average_precision, ties index / average, the CIFAR-10 and ImageNet-100 protocols of
            bench_map.py (5 lengths)
  train     bench_train_step.bench_step (thread CPU time, one thread, B 64 / 128) and bench_encode
Clock: thread CPU time with one thread by default (--threads 1): on a shared, oversubscribed machine a
wall clock mostly measures the other tenants; the wall-clock minimum is kept too (wall_min_s).
Rows: one per workload, build and round (min and median over the worker's runs); compare the builds'
fastest runs (min over rounds), and the spread of per-round ratios says how much is noise.

    python bench/side_by_side.py --python OLD/bin/python --python NEW/bin/python [--rounds 5] [--out NAME]
                                 [--query-fraction 0.2] [--threads 1]
    python bench/side_by_side.py --quick     # this interpreter against itself, tiny sizes
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common  # noqa: E402

MARK = "SIDE_BY_SIDE_RESULT "


# ------------------------------------------------------------------ worker (one build, one round)


def clock(fn, repeat: int) -> dict:
    """Thread CPU seconds of fn() (min, median) and the wall-clock minimum, after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"min_s": min(cpu), "median_s": sorted(cpu)[len(cpu) // 2], "wall_min_s": min(wall), "runs": repeat}


def worker(quick: bool, threads: int, sections: list[str], fraction: float) -> dict:
    import torch

    import nhl_fast as nf

    out = {"nhl_fast_file": nf.__file__, "commit": _common.git_commit(os.path.dirname(nf.__file__)), "rows": []}

    def add(workload: str, params: dict, r: dict):
        out["rows"].append({"workload": workload, **params, **r})

    def scaled(n: int) -> int:
        return max(1, round(n * fraction))

    if "topk" in sections:
        from bench_topk import FIVE, random_packed

        torch.set_num_threads(threads)
        Q, sizes, ks = (100, [20_000], [10, 100]) if quick else (scaled(1000), [100_000, 1_000_000], [100, 1000])
        q_all, db_all = random_packed(Q, 2, seed=1), random_packed(max(sizes), 2, seed=2)
        for bits in (64, 128):
            q = q_all[:, : bits // 64].contiguous()
            for n in sizes:
                db = db_all[:n, : bits // 64].contiguous()
                repeat = 3 if n >= 1_000_000 else 7
                for k in ks:
                    for lengths in [(bits,)] + ([FIVE] if bits == 128 else []):
                        r = clock(lambda: nf.topk(q, db, k, bits=lengths), repeat)
                        add("topk", {"bits": list(lengths), "N": n, "k": k, "Q": Q}, r)
        hq, hn = (50, 20_000) if quick else (scaled(200), 100_000)
        for lengths in ((128,), FIVE, (64,)):
            words = (lengths[-1] + 63) // 64
            qh, dbh = q_all[:hq, :words].contiguous(), db_all[:hn, :words].contiguous()
            add("hamming", {"bits": list(lengths), "N": hn, "Q": hq},
                clock(lambda: nf.hamming(qh, dbh, bits=lengths), 5))

    if "map" in sections:
        from bench_map import BITS, PROTOCOLS, QUICK, synthetic

        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(0)
        for name, cfg in (QUICK if quick else PROTOCOLS).items():
            cfg = dict(cfg, queries=cfg["queries"] if quick else scaled(cfg["queries"]))
            centres = torch.where(torch.rand(cfg["classes"], max(BITS), generator=gen) < 0.5, -1.0, 1.0)
            q_codes, q_labels = synthetic(cfg["queries"], centres, 0.25, gen)
            db_codes, db_labels = synthetic(cfg["database"], centres, 0.25, gen)
            q, db = nf.pack(q_codes), nf.pack(db_codes)
            for ties in ("index", "average"):
                r = clock(lambda: nf.mean_average_precision(q, db, q_labels, db_labels, BITS, topk=cfg["topk"],
                                                            ties=ties), 3)
                add("map", {"protocol": name, "ties": ties, "Q": cfg["queries"], "N": cfg["database"]}, r)

    if "train" in sections:
        from bench_train_step import bench_step

        torch.set_num_threads(1)  # as bench_train_step.py: thread CPU time of a one-thread step
        cpu = torch.device("cpu")
        n_in = 256 if quick else 2048
        for batch in ((16,) if quick else (64, 128)):
            row = bench_step(batch, n_in, (8, 16, 32, 64, 128), 10, cpu, 3 if quick else 30)
            for variant in ("ours", "single_128", "ours_no_adaptive", "ours_no_adaptive_no_distill", "reference"):
                add("train_step", {"variant": variant, "batch": batch, "in_features": n_in},
                    {"min_s": row[f"{variant}_ms"] / 1e3, "wall_min_s": row[f"{variant}_wall_ms"] / 1e3,
                     "runs": 3 if quick else 30})
        rows = 4096 if quick else scaled(50_000)
        layer = nf.NestedHashLayer(n_in, (8, 16, 32, 64, 128))
        x = torch.randn(rows, n_in, generator=torch.Generator().manual_seed(0))
        add("encode", {"rows": rows, "in_features": n_in}, clock(lambda: layer.encode(x), 2 if quick else 5))
    return out


# ------------------------------------------------------------------ parent (rounds of workers)


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--python", action="append", default=None,
                   help="an interpreter whose `import nhl_fast` loads one build (repeat; default: this one twice)")
    p.add_argument("--label", action="append", default=None,
                   help="a name per --python, in order (default: its position and commit)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="threads of topk and map (train: 1); more than 1 makes the thread CPU clock miss work")
    p.add_argument("--query-fraction", type=float, default=1.0,
                   help="scale the query counts (topk, hamming, map protocols, encode rows) on a slow machine")
    p.add_argument("--sections", default="topk,map,train")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one build, one round: JSON out
    args = p.parse_args()
    sections = args.sections.split(",")
    if args.worker:
        print(MARK + json.dumps(worker(args.quick, args.threads, sections, args.query_fraction)), flush=True)
        return
    pythons = args.python or [sys.executable, sys.executable]
    rounds = 1 if args.quick else args.rounds
    rows, builds = [], {}
    for rnd in range(rounds):
        order = list(enumerate(pythons))
        if rnd % 2:
            order.reverse()  # alternate which build runs first
        for i, py in order:
            cmd = [py, os.path.abspath(__file__), "--worker", "--threads", str(args.threads), "--sections", args.sections,
                   "--query-fraction", str(args.query_fraction)]
            t0 = time.perf_counter()
            res = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True, cwd=HERE)
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith(MARK)), None)
            if res.returncode != 0 or line is None:
                sys.exit(f"worker {py} failed (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
            got = json.loads(line[len(MARK):])
            label = args.label[i] if args.label else f"{i}:{got['commit']}"
            builds[label] = got["commit"]
            rows += [{"build": label, "commit": got["commit"], "round": rnd, **r} for r in got["rows"]]
            print(f"round {rnd} {label}: {len(got['rows'])} timings in {time.perf_counter() - t0:.0f} s", flush=True)
    path = _common.write_results(args.out or "side_by_side", {
        "config": {"builds": list(builds), "rounds": rounds, "threads": args.threads, "sections": sections,
                   "query_fraction": args.query_fraction, "quick": args.quick, "order": "alternating per round",
                   "clock": "min_s / median_s: thread CPU time; wall_min_s: wall clock"},
        "rows": rows})
    print("wrote", path)


if __name__ == "__main__":
    main()
