"""`nhl-fast compare`: K independent single-length models vs one nested (NHL) head.

Each method trains from the same data, backbone, loss, epochs and seeds:
  independent            K models, one per length (the usual way to get K code lengths)
  nhl                    one nested head, equal weights, no distillation
  nhl+adaptive           + dominance-aware adaptive weights
  nhl+distill            + long-short cascade self-distillation
  nhl+adaptive+distill   the full NHL objective
With --unsupervised (two views, no labels in training) the same methods train an unsupervised
loss, and the classic baselines join: lsh (random projections, one nested model) and itq
(one model per length, lengths <= the input dimension).
Reported: mAP per length and total training time (mean ± std over seeds).
"""
from __future__ import annotations

import os
import statistics
import time

from nhl_fast.app import plots
from nhl_fast.app.checkpoint import atomic_write_bytes, atomic_write_json
from nhl_fast.app.evaluate import table
from nhl_fast.app.progress import Reporter
from nhl_fast.app.train import TrainConfig, fit, load_training_data
from nhl_fast.app.unsupervised import BASELINES, baseline_maps

METHODS = ("independent", "nhl", "nhl+adaptive", "nhl+distill", "nhl+adaptive+distill")
UNSUPERVISED_METHODS = METHODS + ("lsh", "itq")


def _mean_std(xs):
    if any(x is None for x in xs):  # a length a baseline cannot produce (ITQ past the input dimension)
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def method_runs(method: str, base: TrainConfig, distill: float) -> list:
    """The TrainConfigs one seed of `method` trains (K of them for `independent`)."""
    if method == "independent":
        return [TrainConfig.from_dict({**base.__dict__, "bits": (b,), "adaptive": False, "distill": 0.0})
                for b in base.bits]
    return [TrainConfig.from_dict({**base.__dict__, "adaptive": "adaptive" in method,
                                   "distill": distill if "distill" in method else 0.0})]


def run_compare(args, methods, reporter: Reporter) -> str:
    from nhl_fast.app.commands import unsupervised_options

    base = TrainConfig(data=args.data, split=args.split, image_root=args.image_root, resize=args.resize,
                       crop=args.crop, backbone=args.backbone, weights=args.weights, base_loss=args.base_loss,
                       bits=tuple(args.bits), epochs=args.epochs or 20, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, eval_every=args.epochs or 20, topk=args.topk, ties=args.ties,
                       device=args.device, workers=args.workers, out=None, **unsupervised_options(args))
    data = load_training_data(base)
    reporter.info(data.describe())
    seeds = [args.seed + i for i in range(args.seeds)]
    plan = [(m, s, c) for s in seeds for m in methods
            for c in ([None] if m in BASELINES else method_runs(m, base, args.distill))]
    maps = {m: {s: {} for s in seeds} for m in methods}   # method -> seed -> bits -> mAP
    times = {m: {s: 0.0 for s in seeds} for m in methods}
    quiet = Reporter(quiet=True)
    bar = reporter.bar(total=len(plan), desc="compare", unit="run", leave=True)
    for m, s, c in plan:
        if c is None:  # lsh / itq: fit on the training inputs, no labels
            bar.set_postfix(method=m, seed=s)
            t0 = time.perf_counter()
            maps[m][s] = baseline_maps(m, data, base.bits, s, topk=base.topk, ties=base.ties)
            times[m][s] += time.perf_counter() - t0
            bar.update(1)
            continue
        c.seed = s
        bar.set_postfix(method=m, seed=s, bits=",".join(map(str, c.bits)))
        res = fit(c, data, reporter=quiet, final_curves=False)
        for b, v in zip(res["final"]["bits"], res["final"]["map"]):
            maps[m][s][b] = v
        times[m][s] += res["train_time_s"]
        bar.update(1)
    bar.close()

    bits = list(base.bits)
    summary = {}
    for m in methods:
        per_bits = {b: _mean_std([maps[m][s][b] for s in seeds]) for b in bits}
        summary[m] = {"map_mean": [per_bits[b][0] for b in bits], "map_std": [per_bits[b][1] for b in bits],
                      "time_mean_s": _mean_std([times[m][s] for s in seeds])[0],
                      "time_std_s": _mean_std([times[m][s] for s in seeds])[1],
                      "per_seed": {str(s): {"map": [maps[m][s][b] for b in bits], "time_s": times[m][s]}
                                   for s in seeds}}
    rows = {m: [("—" if mu is None else f"{mu:.4f} ± {sd:.4f}") for mu, sd in zip(summary[m]["map_mean"], summary[m]["map_std"])]
            + [f"{summary[m]['time_mean_s']:.1f} ± {summary[m]['time_std_s']:.1f}"] for m in methods}
    k = "all" if base.topk is None else base.topk
    md = table(bits + ["train time (s)"], rows, first="method")
    header = (f"mAP@{k} per code length on {data.describe()}; {base.base_loss} loss"
              f"{' (unsupervised: two views, labels only evaluate)' if base.unsupervised else ''}, {base.epochs} epochs, "
              f"mean ± std over seeds {seeds}; train time = total over the models the method needs.\n\n")
    out = args.out
    os.makedirs(out, exist_ok=True)
    atomic_write_bytes(os.path.join(out, "compare.md"), (header + md + "\n").encode())
    atomic_write_json(os.path.join(out, "compare.json"), {"data": data.describe(), "bits": bits, "seeds": seeds,
                                                         "config": base.__dict__, "methods": summary})
    plots.map_vs_bits(os.path.join(out, "compare_map.png"),
                      {m: tuple(zip(*[(b, mu, sd) for b, mu, sd in zip(bits, summary[m]["map_mean"],
                                                                        summary[m]["map_std"]) if mu is not None]))
                       for m in methods if any(mu is not None for mu in summary[m]["map_mean"])},
                      title=f"mAP per length, {len(seeds)} seeds")
    plots.compare_times(os.path.join(out, "compare_time.png"), methods,
                        [summary[m]["time_mean_s"] for m in methods], [summary[m]["time_std_s"] for m in methods])
    return header + md + f"\n\nwritten: {out}/compare.md, compare.json, compare_map.png, compare_time.png"
