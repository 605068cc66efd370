"""bench/README.md tables of bench/results/bench_fidelity.json (registered in make_tables.TABLES)."""
from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHOWN = ("faithful", "nested-ref", "nested", "nested+adaptive", "nested+adaptive+distill", "nested+bits",
         "nested+backbone-bits", "nested+inv-bits", "nested+pcgrad", "default")
DETAIL = (("synth100-hi", "identity", "csq"), ("synth100-hi", "mlp", "csq"), ("digits-occluded", "identity", "dpsh"),
          ("synth100-hi", "mlp", "dch"), ("digits", "mlp", "csq"))


def _load():
    """bench_fidelity.json merged with any bench_fidelity_<part>.json run beside it (one row per measurement:
    a run repeated in two files counts once, from the main file). A cell is (setting, backbone, loss, epochs):
    runs of different lengths are never pooled."""
    names = sorted(n for n in os.listdir(RESULTS) if n.startswith("bench_fidelity") and n.endswith(".json")
                   and not n.endswith("_quick.json"))  # "bench_fidelity.json" sorts first
    parts = []
    for name in names:
        with open(os.path.join(RESULTS, name)) as f:
            parts.append(json.load(f))
    seen, rows = set(), []
    for r in (r for p in parts for r in p["rows"]):
        key = (r["setting"], r["backbone"], r["loss"], r["epochs"], r["recipe"], r["seed"], r["bits"])
        if key not in seen:
            seen.add(key)
            rows.append(r)
    d = {**parts[0], "rows": rows}
    maps = defaultdict(list)  # (setting, backbone, loss, epochs, recipe, bits) -> [mAP per seed]
    weights = defaultdict(list)
    for r in d["rows"]:
        key = (r["setting"], r["backbone"], r["loss"], r["epochs"], r["recipe"], r["bits"])
        maps[key].append(r["map"])
        if "weight_mean" in r:
            weights[key].append(r)
    return d, maps, weights


def _cells(d):
    seen = []
    for r in d["rows"]:
        c = (r["setting"], r["backbone"], r["loss"], r["epochs"])
        if c not in seen:
            seen.append(c)
    return sorted(seen, key=lambda c: (c[2] != "csq", c[2], c[0], c[1], c[3]))


def _se(a, b) -> float:
    """Standard error of mean(a) - mean(b), independent samples (sample variances)."""
    var = [statistics.variance(v) / len(v) if len(v) > 1 else float("nan") for v in (a, b)]
    return (var[0] + var[1]) ** 0.5


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def fidelity_summary() -> str:
    """Per setting: the worst length's (mean nested mAP - mean independent mAP) +- its standard error, of each
    recipe."""
    d, maps, _ = _load()
    bits = d["config"]["bits"]
    rows = []
    for cell in _cells(d):
        ind = [maps.get(cell + ("independent", b)) for b in bits]
        if not all(ind):
            continue
        row = [*cell, " / ".join(f"{statistics.fmean(v):.2f}" for v in ind)]
        for recipe in SHOWN:
            got = [maps.get(cell + (recipe, b)) for b in bits]
            if not all(got):
                row.append("")
                continue
            delta = [statistics.fmean(g) - statistics.fmean(i) for g, i in zip(got, ind)]
            k = min(range(len(bits)), key=lambda j: delta[j])
            row.append(f"{delta[k]:+.3f} ± {_se(got[k], ind[k]):.3f} ({bits[k]})"
                       + (" **ok**" if delta[k] >= -0.01 else ""))
        rows.append(row)
    return _table(["setting", "backbone", "loss", "epochs", "independent mAP 8/16/32/64/128"] + list(SHOWN), rows)


def fidelity_detail() -> str:
    """mAP per length (mean +- std over seeds) of every recipe on a few settings."""
    d, maps, _ = _load()
    bits = d["config"]["bits"]
    rows = []
    for cell in (c for c in _cells(d) if c[:3] in DETAIL):
        for recipe in ("independent",) + SHOWN:
            got = [maps.get(cell + (recipe, b)) for b in bits]
            if not all(got):
                continue
            rows.append([" ".join(cell[:3]) + f", {cell[3]} ep", recipe] + [
                f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}" for v in got])
    return _table(["setting", "recipe"] + [f"{b} bits" for b in bits], rows)


def fidelity_weights() -> str:
    """The adaptive weights over training: mean of the per-epoch means, their std, and min..max (over seeds)."""
    d, _, weights = _load()
    bits = d["config"]["bits"]
    rows = []
    for cell in _cells(d):
        if cell[1] != "mlp" and cell[0] != "synth100-hi":
            continue
        for recipe in ("nested+adaptive", "nested+pcgrad", "faithful", "default"):
            got = [weights.get(cell + (recipe, b)) for b in bits]
            if not all(got):
                continue
            cells = []
            for rs in got:
                mean = statistics.fmean(r["weight_mean"] for r in rs)
                std = statistics.fmean(r["weight_std"] for r in rs)
                lo, hi = min(r["weight_min"] for r in rs), max(r["weight_max"] for r in rs)
                cells.append(f"{mean:.2f} ± {std:.2f} [{lo:.2f}, {hi:.2f}]")
            rows.append([" ".join(cell[:3]) + f", {cell[3]} ep", recipe] + cells)
    return _table(["setting", "recipe"] + [f"w {b}" for b in bits], rows)


TABLES = {"fidelity_summary": fidelity_summary, "fidelity_detail": fidelity_detail,
          "fidelity_weights": fidelity_weights}
