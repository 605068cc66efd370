"""Unsupervised nested hashing on digits: one nested head vs 5 independent heads per loss, and the
classic baselines, mAP@all per length over seeds (labels only evaluate).

    python bench/bench_unsupervised_compare.py [--quick] [--losses cibhash,greedyhash,bihalf,sortednce]
        -> bench/results/bench_unsupervised_compare.json

Rows: one per (method, loss, seed, bits): method "nested" (NestedHashLayer(8..128), the full
objective: adaptive weights + distillation 0.1), "independent" (one single-length head per length),
"itq", "lsh", "raw_pixels" (Euclidean ranking of the standardised pixels: one value, every length).
Training: the `nhl-fast train --unsupervised` loop (nhl_fast.app.train.fit), MLP 64 -> 512 -> 512,
image views (affine + crop + noise), Adam; evaluated once, after the last epoch (no model selection
on the query labels). A loss that is not registered in this checkout is skipped with a note row.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parser, write_results  # noqa: E402

import nhl_fast as nf  # noqa: E402
from nhl_fast.app.data import load_digits_data, metric_labels  # noqa: E402
from nhl_fast.app.progress import Reporter  # noqa: E402
from nhl_fast.app.train import TrainConfig, fit  # noqa: E402
from nhl_fast.app.unsupervised import baseline_maps, flat_inputs  # noqa: E402
from nhl_fast.losses import available  # noqa: E402

BITS = (8, 16, 32, 64, 128)
#: per-loss recipe for the digits split (see bench/README.md: what was tuned)
RECIPES = {
    "cibhash": {"loss_opts": {}},
    "greedyhash": {"loss_opts": {}},
    "bihalf": {"loss_opts": {}},
    "sortednce": {"loss_opts": {"sort_tau": 0.05, "tau": 0.3, "projection": 512}},  # tuned: bench/README.md
}


def raw_pixel_map(data) -> float:
    """mAP@all of ranking the database by Euclidean distance on the inputs (ties by index)."""
    q, db = flat_inputs(data.query).double(), flat_inputs(data.database).double()
    ql, dl = metric_labels(data.query.labels), metric_labels(data.database.labels)
    d = torch.cdist(q, db)
    order = torch.sort(d, dim=1, stable=True).indices
    rel = (dl[order] == ql[:, None]).double()
    hits = rel.cumsum(1)
    ranks = torch.arange(1, db.shape[0] + 1, dtype=torch.float64)
    ap = (rel * hits / ranks).sum(1) / rel.sum(1).clamp_min(1)
    return float(ap.mean())


def train_rows(loss, method, seed, bits, args, data=None):
    torch.set_num_threads(args.threads)
    data = data or load_digits_data()
    cfgs = ([TrainConfig(bits=bits, adaptive=True, distill=0.1)] if method == "nested"
            else [TrainConfig(bits=(b,), adaptive=False, distill=0.0) for b in bits])
    rows = []
    for c in cfgs:
        c.base_loss, c.unsupervised, c.seed, c.epochs = loss, True, seed, args.epochs
        c.batch_size, c.lr, c.eval_every, c.device = args.batch_size, args.lr, args.epochs, args.device
        c.loss_opts = dict(RECIPES.get(loss, {}).get("loss_opts", {}))
        if args.soft and loss == "sortednce":
            c.loss_opts["hard"] = False  # the soft SoftSort rows (no straight-through)
        res = fit(c, data, reporter=Reporter(quiet=True), final_curves=False)
        for b, m in zip(res["final"]["bits"], res["final"]["map"]):
            rows.append({"method": method, "loss": loss, "seed": seed, "bits": b, "map": m,
                         "train_time_s": res["train_time_s"] / len(res["final"]["bits"]),
                         "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr})
    return rows


def main():
    p = parser(__doc__)
    p.add_argument("--losses", default="cibhash,greedyhash,bihalf,sortednce",
                   help="comma-separated unsupervised losses (unregistered ones are skipped with a note)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--soft", action="store_true", help="sortednce with the soft SoftSort rows (hard=False)")
    p.add_argument("--epochs", type=int, default=None, help="default 20 (--quick: 1)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    p.add_argument("--methods", default="nested,independent", help="nested, independent (trained ones)")
    p.add_argument("--jobs", type=int, default=1, help="models trained in parallel processes (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.epochs = args.epochs or (1 if args.quick else 20)
    bits = (8, 16) if args.quick else BITS
    seeds = list(range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds)))
    losses = [s.strip() for s in args.losses.split(",") if s.strip()]
    data = load_digits_data()
    config = {"data": data.describe(), "bits": list(bits), "seeds": seeds, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads, "losses": losses,
              "recipes": {k: RECIPES.get(k, {}) for k in losses}, "soft_sortednce": args.soft}
    rows = [{"method": "raw_pixels", "loss": None, "seed": None, "bits": None, "map": raw_pixel_map(data)}]
    for method in ("itq", "lsh"):
        for s in seeds:
            t0 = time.perf_counter()
            maps = baseline_maps(method, data, bits, s)
            dt = time.perf_counter() - t0
            rows += [{"method": method, "loss": None, "seed": s, "bits": b, "map": m, "train_time_s": dt}
                     for b, m in maps.items() if m is not None]
    name = args.out or "bench_unsupervised_compare"
    write_results(name, {"config": config, "rows": rows})
    registered = set(available(unsupervised=True))
    tasks = []
    for loss in losses:
        if loss not in registered:
            rows.append({"method": "skipped", "loss": loss, "note": f"{loss!r} is not a registered unsupervised loss "
                                                                   f"in this checkout"})
            print(f"skipped {loss}: not registered here", flush=True)
            continue
        if args.quick and tasks:  # a smoke run trains the first registered loss only
            continue
        tasks += [(loss, m.strip(), s) for s in seeds for m in args.methods.split(",") if m.strip()]

    def done(task, new, t0):
        rows.extend(new)
        print(f"{task[0]:10s} {task[1]:11s} seed {task[2]}: " + " ".join(f"{r['bits']}:{r['map']:.3f}" for r in new)
              + f"  ({time.perf_counter() - t0:.0f} s after submission)", flush=True)
        write_results(name, {"config": config, "rows": rows})  # after every model: partial results survive

    if args.jobs <= 1:
        for task in tasks:
            t0 = time.perf_counter()
            done(task, train_rows(*task, bits, args, data), t0)
    else:
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked OpenMP state
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            started = {pool.submit(train_rows, *task, bits, args): (task, time.perf_counter()) for task in tasks}
            for fut in as_completed(started):
                done(*started[fut][:1], fut.result(), started[fut][1])
    path = write_results(name, {"config": config, "rows": rows})
    print(f"written {path}")


if __name__ == "__main__":
    main()
