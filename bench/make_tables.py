"""The tables of bench/README.md, generated from bench/results/*.json (never copied by hand).

Each table sits between `<!-- table:NAME -->` and `<!-- end table -->` in bench/README.md;
this script rewrites those blocks from the results (write then rename).

    python bench/make_tables.py           # rewrite the tables
    python bench/make_tables.py --check   # exit 1 if a table differs from its results (the tests run this)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
README = os.path.join(HERE, "README.md")


def load(name: str) -> dict:
    with open(os.path.join(RESULTS, f"{name}.json")) as f:
        return json.load(f)


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:,.1f} ms" if seconds >= 0.01 else f"{1e3 * seconds:.2f} ms"


def rows(name: str, measure: str | None = None) -> list[dict]:
    """The rows of bench/results/<name>.json (those of one "measure" when given)."""
    return [r for r in load(name)["rows"] if measure is None or r.get("measure") == measure]


def cpu_topk() -> str:
    topk = rows("bench_topk", "topk")
    best = {(r["method"], str(r["bits"]), r["N"], r["k"]): r["min_s"] for r in topk}  # fastest run: the ratios' basis
    five = str([8, 16, 32, 64, 128])
    out = []
    for r in topk:
        if r["method"] != "nhl_fast":
            continue
        key = (str(r["bits"]), r["N"], r["k"])
        ours = best[("nhl_fast", *key)]
        five_len = best.get(("nhl_fast_5len", five, r["N"], r["k"])) if r["bits"] == 128 else None
        out.append([r["bits"], f"{r['N']:,}", r["k"], f"{ours:.4f}", f"{best[('faiss', *key)]:.3f}",
                    f"{best[('gemm', *key)]:.2f}", f"{best[('faiss', *key)] / ours:.1f}x",
                    "" if five_len is None else f"{five_len / ours:.2f}x"])
    return table(["bits", "N", "k", "nhl_fast (s)", "faiss (s)", "GEMM + topk (s)", "faiss / nhl_fast",
                  "5 lengths / 128 only"], out)


def cpu_map() -> str:
    out = []
    for p in rows("bench_map"):
        extra = ", extrapolated" if p["numpy_calc_top_map_extrapolated"] else ""
        out.append([f"{p['protocol']}: {p['queries']:,} x {p['database']:,}, top {p['topk']:,}",
                    ms(p["nhl_fast_index_s"]), ms(p["nhl_fast_average_s"]),
                    f"{p['numpy_calc_top_map_seconds_5_lengths']:.1f} s{extra} ({p['speedup_vs_numpy']:.0f}x)",
                    f"{p['cpu_time_ratio_vs_numpy_blas_1_thread']:.0f}x",
                    f"{p['torchmetrics_seconds_5_lengths']:.1f} s ({p['torchmetrics_speedup_vs_torchmetrics']:.0f}x)"])
    return table(["protocol (5 lengths)", "nhl_fast index", "nhl_fast average", "numpy CalcTopMap",
                  "CPU-time ratio vs 1-thread numpy", "torchmetrics RetrievalMAP"], out)


def cpu_train_step() -> str:
    out = [[r["batch"], f"{r['ours_ms']:.2f} ms", f"{r['reference_ms']:.2f} ms", f"{r['single_128_ms']:.2f} ms",
            f"{r['ours_over_single']:.2f}x", f"{r['reference_over_ours']:.2f}x",
            f"{r['ours_no_adaptive_ms']:.2f} / {r['ours_no_adaptive_no_distill_ms']:.2f} ms"]
           for r in rows("bench_train_step", "train_step")]
    return table(["B", "ours", "reference-style step", "single 128-bit head", "ours / single", "reference / ours",
                  "no adaptive / neither"], out)


def cpu_losses() -> str:
    by = {}
    for r in rows("bench_losses"):
        by.setdefault(r["loss"], {})[r["batch"]] = r
    batches = sorted({b for rs in by.values() for b in rs})
    header = ["loss"] + [h for b in batches for h in (f"B={b} nested", f"B={b} separate", "ratio")]
    out = [[loss] + [c for b in batches for c in (f"{rs[b]['nested_ms']:.2f} ms", f"{rs[b]['separate_ms']:.2f} ms",
                                                  f"{rs[b]['speedup']:.2f}x")] for loss, rs in by.items()]
    return table(header, out)


def gpu_summary() -> str:
    out = []
    for r in rows("gpu_hamming"):
        out.append([f"`hamming` {r['queries']:,} x {r['database']:,}, bits {r['bits']}",
                    f"{r['g_pairs_per_s']:.0f} G pairs/s ({r['pct_of_popcount_roofline']:.1f}% of the popcount roof, "
                    f"{r['output_write_tb_per_s']:.2f} TB/s written)", "", ""])
    for r in rows("gpu_topk", "topk"):
        five = f"; 5 lengths {r['five_over_one']:.2f}x one" if "five_over_one" in r else ""
        out.append([f"`topk` Q {r['queries']:,}, N {r['database']:,}, {r['bits']} bits, k {r['k']}",
                    ms(r["nhl_fast_median_s"]) + five, f"fp16 GEMM + `torch.topk`: {ms(r['gemm_topk_median_s'])}",
                    f"{r['speedup_vs_gemm_topk']:.2f}x"])
    for r in rows("gpu_map", "map"):
        out.append([f"mAP {r['protocol']} ({r['queries']:,} x {r['database']:,}, top {r['topk'] or 'all'}, 5 lengths)",
                    f"{ms(r['nhl_fast_index_median_s'])} index, {ms(r['nhl_fast_average_median_s'])} average",
                    f"torch GEMM + sort + cumsum: {ms(r['torch_gpu_eval_median_s'])}",
                    f"{r['speedup_index_vs_torch']:.1f}x"])
    for r in rows("gpu_train", "train_step"):
        out.append([f"training step B {r['batch']}, {r['in_features']} -> 8..128 bits, {r['precision']}",
                    f"{r['ours_ms']:.2f} ms", f"one 128-bit head {r['single_128_ms']:.2f} ms; reference-style "
                    f"{r['reference_ms']:.1f} ms", f"{r['ours_over_single']:.2f}x the single head"])
    for r in rows("gpu_encode"):
        out.append([f"`encode` {r['rows']:,} x {r['in_features']} -> {r['bits']} bits",
                    f"{r['encode_rows_per_s'] / 1e6:.1f} M rows/s",
                    f"`sign(linear)` + `pack` {r['sign_linear_pack_rows_per_s'] / 1e6:.1f} M rows/s",
                    f"{r['speedup']:.2f}x"])
    return table(["benchmark", "nhl_fast", "alternative", "ratio"], out)


def side_by_side(name: str) -> str:
    """bench/side_by_side.py's two builds: fastest run of each (min over rounds), their ratio, and the range
    of the per-round ratios (how much is noise)."""
    d = load(name)
    old, new = d["config"]["builds"]
    commit = {r["build"]: r["commit"] for r in d["rows"]}
    params = lambda r: tuple((k, str(v)) for k, v in r.items()  # noqa: E731
                             if k not in ("build", "commit", "round", "min_s", "median_s", "wall_min_s", "runs"))
    best, per_round = {}, {}
    for r in d["rows"]:
        key = params(r)
        best.setdefault(key, {}).setdefault(r["build"], []).append(r["min_s"])
        per_round.setdefault(key, {}).setdefault(r["round"], {})[r["build"]] = r["min_s"]
    out = []
    for key, by in best.items():
        ratios = [rs[new] / rs[old] for rs in per_round[key].values() if old in rs and new in rs]
        what = dict(key)
        label = what.pop("workload") + " " + ", ".join(f"{k} {v}" for k, v in what.items())
        out.append([label, ms(min(by[old])), ms(min(by[new])), f"{min(by[new]) / min(by[old]):.3f}",
                    f"{min(ratios):.2f} - {max(ratios):.2f}"])
    return table(["workload", f"{old} ({commit[old]})", f"{new} ({commit[new]})", f"{new} / {old} (fastest runs)",
                  "per-round ratios"], out)


TABLES = {"cpu_topk": cpu_topk, "cpu_map": cpu_map, "cpu_train_step": cpu_train_step, "cpu_losses": cpu_losses,
          "gpu_summary": gpu_summary, "house_side_by_side": lambda: side_by_side("house_side_by_side"),
          "house_side_by_side_recheck": lambda: side_by_side("house_side_by_side_recheck")}
BLOCK = re.compile(r"(<!-- table:(\w+) -->\n)(.*?)(<!-- end table -->)", re.S)


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + TABLES[m.group(2)]() + "\n" + m.group(4), text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if bench/README.md's tables are stale")
    args = p.parse_args()
    with open(README) as f:
        text = f.read()
    names = set(BLOCK.findall(text) and [m[1] for m in BLOCK.findall(text)])
    if names != set(TABLES):
        print(f"bench/README.md table blocks {sorted(names)} != generated tables {sorted(TABLES)}")
        return 1
    new = render(text)
    if args.check:
        if new != text:
            print("bench/README.md tables are stale: run python bench/make_tables.py")
            return 1
        return 0
    fd, tmp = tempfile.mkstemp(dir=HERE, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, README)
    return 0


if __name__ == "__main__":
    sys.exit(main())
