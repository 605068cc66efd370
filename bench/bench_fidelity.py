"""Fidelity of nested codes: one nested (NHL) head vs K independently trained heads, mAP per code length,
over a grid of settings users meet (digits, occluded/noisy digits, class-clustered features at 10 and 100
classes and two noise levels), a linear head on features and an MLP backbone, several losses, several seeds
and several training recipes. Every run goes through the `nhl-fast train` loop (nhl_fast.app.train.fit).

    python bench/bench_fidelity.py [--quick] [--jobs 2]      -> bench/results/bench_fidelity.json
    python bench/bench_fidelity.py --settings synth100-hi --backbones mlp --losses csq \
        --recipes independent nested default --epochs 20 --out bench_fidelity_<part>   (a part, merged by the tables)

One row per (setting, backbone, loss, recipe, seed, bits): the mAP of that length, plus for nested recipes
the adaptive weights' mean / std / min / max over the training steps of that length. Tables: make_tables.py.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parser, write_results  # noqa: E402

BITS = (8, 16, 32, 64, 128)

# recipe -> TrainConfig overrides; "independent" trains one single-length model per length.
# None values mean "the library default" (NHLObjective / TrainConfig), so "default" follows the library.
RECIPES = {
    "independent": {"adaptive": False, "distill": 0.0},
    "nested": {"adaptive": False, "distill": 0.0},
    "nested-ref": {"adaptive": False, "distill": 0.0, "centers": "per_length"},
    "nested+adaptive": {"adaptive": True, "distill": 0.0, "weight_rule": "dominance"},
    "nested+adaptive+distill": {"adaptive": True, "distill": 0.1, "weight_rule": "dominance"},
    "nested+bits": {"adaptive": False, "distill": 0.0, "length_scale": "bits"},
    "nested+sqrt": {"adaptive": False, "distill": 0.0, "length_scale": "sqrt_bits"},
    "nested+backbone-bits": {"adaptive": False, "distill": 0.0, "length_scale": "backbone_bits"},
    "nested+pcgrad": {"adaptive": True, "distill": 0.0, "weight_rule": "pcgrad"},
    "nested+inv-bits": {"adaptive": False, "distill": 0.0, "length_scale": "inv_bits"},
    "nested+bounded": {"adaptive": True, "distill": 0.0, "weight_rule": "bounded"},
    "nested+bounded+distill": {"adaptive": True, "distill": 0.1, "weight_rule": "bounded"},
    "faithful": {"adaptive": True, "distill": 0.1, "faithful": True},   # the reference step, reference centres
    "default": {},                                                      # TrainConfig() / NHLObjective() defaults
}
#: recipes run only when named (--recipes): side experiments on a few settings
OPTIONAL = ("nested+bounded", "nested+sqrt", "nested+inv-bits")
CENTRE_ONLY = ("nested-ref",)  # recipes that differ from others only for centre losses
CENTRE_LOSSES = ("csq",)
SETTINGS = ("digits", "digits-occluded", "synth10-lo", "synth10-hi", "synth100-lo", "synth100-hi")
NOISE = {"lo": 1.0, "hi": 2.0}


# ----------------------------------------------------------------------------- data (in memory)

def synthetic(num_classes: int, noise: float, per_class: int, queries: int, dim: int = 256, seed: int = 0):
    """Class-clustered features: class means ~ N(0, I_dim), samples = mean + noise * N(0, I_dim)."""
    from nhl_fast.app.data import HashingData, TensorSplit

    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=g)

    def split(n):
        y = torch.arange(n) % num_classes
        x = means[y] + noise * torch.randn(n, dim, generator=g)
        return TensorSplit(x, torch.nn.functional.one_hot(y, num_classes).float())

    train = split(per_class * num_classes)
    return HashingData(f"synth{num_classes}-noise{noise}", "features", (dim,), num_classes, train, split(queries),
                       train)


def occluded_digits(seed: int = 0):
    """digits with a random 4x4 patch of every image blanked (to the mean) and Gaussian noise (sigma 0.5)."""
    from nhl_fast.app.data import HashingData, TensorSplit, load_digits_data

    d = load_digits_data()
    g = torch.Generator().manual_seed(seed)

    def spoil(split):
        x = split.inputs.clone()
        n = x.shape[0]
        r, c = torch.randint(0, 5, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)
        rows = (torch.arange(8)[None, :] >= r[:, None]) & (torch.arange(8)[None, :] < r[:, None] + 4)
        cols = (torch.arange(8)[None, :] >= c[:, None]) & (torch.arange(8)[None, :] < c[:, None] + 4)
        x[(rows[:, :, None] & cols[:, None, :])[:, None]] = 0.0
        return TensorSplit(x + 0.5 * torch.randn(x.shape, generator=g), split.labels)

    train = spoil(d.train)
    return HashingData("digits-occluded", d.kind, d.input_shape, d.num_classes, train, spoil(d.query), train,
                       backbone=d.backbone)


def load_setting(name: str, quick: bool):
    from nhl_fast.app.data import load_digits_data

    if name == "digits":
        return load_digits_data()
    if name == "digits-occluded":
        return occluded_digits()
    classes, level = name[len("synth"):].split("-")
    classes = int(classes)
    per_class = (10 if quick else 20) if classes == 100 else (40 if quick else 100)
    return synthetic(classes, NOISE[level], per_class, 200 if quick else 300)


# ----------------------------------------------------------------------------- one cell

def run_cell(job):
    """All recipes x seeds of one (setting, backbone, loss): a list of rows."""
    setting, backbone, loss, recipes, seeds, epochs, quick = job
    torch.set_num_threads(1)
    from nhl_fast.app.progress import Reporter
    from nhl_fast.app.train import TrainConfig, fit

    data = load_setting(setting, quick)
    rows = []
    alias = {r: same_as_default(r, loss, recipes) for r in recipes}
    for recipe, seed in itertools.product(recipes, seeds):
        if alias[recipe]:  # the library default is one of the explicit recipes: its runs, relabelled
            rows += [{**r, "recipe": recipe, "same_as": alias[recipe]} for r in rows
                     if r["recipe"] == alias[recipe] and r["seed"] == seed]
            continue
        over = {k: v for k, v in RECIPES[recipe].items()}
        if loss not in CENTRE_LOSSES:
            over.pop("centers", None)
        base = dict(data=setting, backbone=backbone, base_loss=loss, bits=BITS, epochs=epochs, batch_size=64,
                    eval_every=epochs, seed=seed, device="cpu")
        single = recipe.startswith("independent")
        t0 = time.perf_counter()
        for bits in ([(b,) for b in BITS] if single else [BITS]):
            cfg = TrainConfig.from_dict({**base, **over, "bits": bits})
            res = fit(cfg, data, reporter=Reporter(quiet=True), final_curves=False)
            weights = np.array([h["weights"] for h in res["history"]])  # (epochs, K) per-epoch step means
            for k, (b, m) in enumerate(zip(res["final"]["bits"], res["final"]["map"])):
                row = {"setting": setting, "backbone": backbone, "loss": loss, "recipe": recipe, "seed": seed,
                       "bits": b, "map": m, "epochs": epochs, "num_classes": data.num_classes,
                       "adaptive": cfg.adaptive, "distill": cfg.distill, "weight_rule": cfg.weight_rule,
                       "faithful": cfg.faithful, "centers": cfg.centers}
                if not single:
                    w = weights[:, k]
                    row.update(weight_mean=float(w.mean()), weight_std=float(w.std()), weight_min=float(w.min()),
                               weight_max=float(w.max()))
                rows.append(row)
        print(f"{setting:16s} {backbone:8s} {loss:5s} {recipe:24s} seed {seed}  "
              + " ".join(f"{r['map']:.3f}" for r in rows[-len(BITS):]) + f"  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return rows


def effective(recipe: str, loss: str) -> dict:
    """The objective settings a recipe trains with, the library defaults filled in."""
    from nhl_fast.app.train import TrainConfig
    from nhl_fast.objective import DEFAULT_CENTERS, DEFAULT_WEIGHT_RULE

    cfg = TrainConfig.from_dict({"base_loss": loss, **RECIPES[recipe]})
    out = {k: getattr(cfg, k) for k in ("adaptive", "distill", "weight_rule", "centers", "length_scale", "faithful",
                                        "beta")}
    if out["weight_rule"] is None:
        out["weight_rule"] = "dominance" if cfg.faithful else DEFAULT_WEIGHT_RULE
    if out["centers"] is None or loss not in CENTRE_LOSSES:
        out["centers"] = ("per_length" if cfg.faithful else DEFAULT_CENTERS) if loss in CENTRE_LOSSES else None
    if not out["adaptive"]:
        out["weight_rule"] = None
    return out


def same_as_default(recipe: str, loss: str, recipes) -> str:
    """For "default": the explicit nested recipe (run before it) that trains exactly the same way, or ""."""
    if recipe != "default":
        return ""
    want = effective("default", loss)
    for r in recipes:
        if r == "default":
            return ""
        if not r.startswith("independent") and effective(r, loss) == want:
            return r
    return ""


def relabel(name: str) -> None:
    """Rewrite the "default" rows of bench/results/<name>.json as copies of the explicit recipe's rows that
    train exactly as the library's defaults do now (write then rename)."""
    import json

    from _common import RESULTS

    with open(os.path.join(RESULTS, f"{name}.json")) as f:
        d = json.load(f)
    recipes = list(d["config"]["recipes"])
    rows = [r for r in d["rows"] if r["recipe"] != "default"]
    for loss in sorted({r["loss"] for r in rows}):
        same = same_as_default("default", loss, recipes)
        if not same:
            raise SystemExit(f"--relabel: no explicit recipe of {name} trains {loss} as the defaults do now: "
                             "rerun it")
        rows += [{**r, "recipe": "default", "same_as": same} for r in rows
                 if r["loss"] == loss and r["recipe"] == same]
        d["config"]["default"][loss] = effective("default", loss)
    d["rows"] = rows
    payload = {k: v for k, v in d.items() if k not in ("benchmark", "machine")}
    payload["config"].update(relabelled=True, measured_on=d["machine"])  # the runs' machine and commit
    print("wrote", write_results(name, payload))


def plan(args):
    """The cells: CSQ on every setting x backbone; the pairwise losses on a subset (the hard ones); CSQ first."""
    settings = args.settings or (("synth100-lo", "digits") if args.quick else SETTINGS)
    cells = []
    for loss, setting, backbone in itertools.product(args.losses, settings, args.backbones):
        if loss not in CENTRE_LOSSES and not args.quick and args.settings is None \
                and setting not in ("digits-occluded", "synth100-hi"):
            continue
        recipes = [r for r in args.recipes if loss in CENTRE_LOSSES or r not in CENTRE_ONLY]
        cells.append((setting, backbone, loss, recipes, args.seeds, args.epochs, args.quick))
    return cells


def main():
    p = parser(__doc__)
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one thread each (default 2)")
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=None, help="default: all (quick: two)")
    p.add_argument("--backbones", nargs="+", default=["identity", "mlp"])
    p.add_argument("--losses", nargs="+", default=["csq", "dpsh", "dch"])
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--relabel", action="store_true",
                   help="train nothing: rewrite the 'default' rows of the results from the explicit recipe that "
                        "trains as the library's defaults do now (after a change of the defaults)")
    args = p.parse_args()
    if args.relabel:
        return relabel(args.out or "bench_fidelity")
    if args.device != "cpu":
        raise SystemExit("bench_fidelity runs on the CPU (small models; --jobs processes)")
    args.recipes = args.recipes or (["independent", "nested", "default"] if args.quick else
                                    [r for r in RECIPES if r not in OPTIONAL])
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.epochs = args.epochs or (2 if args.quick else 4)
    if args.quick:
        args.losses = args.losses if "--losses" in sys.argv else ["csq"]
        args.backbones = args.backbones if "--backbones" in sys.argv else ["identity"]
    cells = plan(args)
    t0 = time.perf_counter()
    config = {"bits": list(BITS), "epochs": args.epochs, "batch_size": 64, "seeds": args.seeds,
              "recipes": {r: RECIPES[r] for r in args.recipes}, "noise": NOISE, "jobs": args.jobs,
              "default": {loss: effective("default", loss) for loss in args.losses}, "cells": len(cells)}
    rows, done = [], 0
    pool = mp.get_context("spawn").Pool(args.jobs) if args.jobs > 1 else None
    try:
        parts = pool.imap_unordered(run_cell, cells) if pool else map(run_cell, cells)
        for part in parts:  # results are written after every cell: a stopped run keeps what it measured
            rows += part
            done += 1
            config.update(cells_done=done, wall_s=time.perf_counter() - t0)
            path = write_results(args.out or "bench_fidelity", {"config": config, "rows": rows})
    finally:
        if pool:
            pool.close()
    print("wrote", path, f"({config['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
