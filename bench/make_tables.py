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
sys.path.insert(0, HERE)
import fidelity_tables  # noqa: E402
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


def cpu_index() -> str:
    d = load("bench_index")
    by = {}
    for r in d["rows"]:
        by.setdefault((r["bits"], r["N"], r["codes"], r["k"]), {})[r["method"]] = r
    rows = []
    for (bits, n, codes, k), m in by.items():
        flat, mih = m["flat"], m["mih"]
        rows.append([bits, f"{n:,}", codes, k, f"{flat['qps']:,.0f}",
                     f"{mih['qps']:,.0f} ({mih['qps'] / flat['qps']:.2f}x)", "yes" if mih["exact"] else "**no**",
                     f"{mih['flat_fallback']}/{mih['Q']}",
                     f"{m['faiss_hash']['qps']:,.0f} / {m['faiss_hash']['recall']:.3f}",
                     f"{m['faiss_mhash']['qps']:,.0f} / {m['faiss_mhash']['recall']:.3f}"])
    return table(["bits", "N", "codes", "k", "flat q/s", "mih q/s (vs flat)", "mih exact", "flat fallback",
                  "faiss Hash q/s / recall", "faiss MultiHash q/s / recall"], rows)


def cpu_index_build() -> str:
    d = load("bench_index")
    rows, seen = [], set()
    for r in d["rows"]:
        key = (r["bits"], r["N"], r["codes"])
        if key in seen or r["method"] != "mih":
            continue
        seen.add(key)
        faiss = {x["method"]: x["build_s"] for x in d["rows"]
                 if (x["bits"], x["N"], x["codes"]) == key and x["method"].startswith("faiss")}
        rows.append([r["bits"], f"{r['N']:,}", r["codes"], r["substrings"], f"{r['build_s']:.2f} s",
                     f"{r['memory_bytes'] / 2**20:,.0f} MiB ({r['memory_bytes'] / (r['memory_bytes'] - r['tables_bytes']):.2f}x the codes)",
                     f"{faiss['faiss_hash']:.2f} s", f"{faiss['faiss_mhash']:.2f} s"])
    return table(["bits", "N", "codes", "tables", "mih build", "mih memory (codes + tables)", "faiss Hash build",
                  "faiss MultiHash build"], rows)


def cpu_distributed() -> str:
    d = load("bench_distributed")
    rows = {(r["op"], r["ranks"], r["threads_per_rank"]): r for r in d["rows"] if r["op"] != "merge"}
    out = []
    for op in dict.fromkeys(r["op"] for r in d["rows"] if r["op"] != "merge"):
        one, two, dist = rows[(op, 1, 1)], rows[(op, 1, 2)], rows[(op, 2, 1)]
        out.append([op, f"{one['queries']:,}", ms(one["min_s"]), ms(two["min_s"]), ms(dist["min_s"]),
                    ms(dist["local_compute_min_s"]), ms(dist["min_s"] - dist["local_compute_min_s"]),
                    f"{dist['bytes_per_query']:,} B"])
    return table(["operation (N = 1M, 5 lengths)", "queries", "1 process, 1 thread", "1 process, 2 threads",
                  "2 ranks x 1 thread", "of which local compute", "rest (exchange, transfer, merge)",
                  "received per query per rank"], out)


# Projection (NOT measured): R ranks each holding 1M codes (N = R x 1M), Q = 1,000, 5 lengths, k = 100.
# Local compute = the measured 1-thread single-process time at N = 1M (the rank scan: twice its 2-rank
# time, per query); merge = the "merge" rows (R sorted runs of k keys, measured alone); the transfer is
# what a rank receives at the link's bandwidth, plus 2 log2(R) collective latencies of 20 us.
LINKS = {"10 GbE": 1.25e9, "100 Gb/s": 12.5e9}
LATENCY_S = 20e-6


def cpu_distributed_projection() -> str:
    import math

    d = load("bench_distributed")
    rows = {(r["op"], r["ranks"], r["threads_per_rank"]): r for r in d["rows"] if r["op"] != "merge"}
    q, L, k, B = d["config"]["q"], len(d["config"]["bits"]), d["config"]["k"], max(d["config"]["bits"]) + 1
    out = []
    kmap = d["config"]["map_topk"]
    ops = (("topk", lambda R: (R - 1) * L * k * 8, k),                       # all_gather of (L, Q, k) keys
           ("map_average", lambda R: 2 * 2 * L * B * 8, None),              # ring all_reduce of 2 histograms
           (f"map_index_at_{kmap}", lambda R: (R - 1) * L * kmap * 8, kmap),
           ("map_index_all", lambda R: (R - 1) * 2 * L * B * 8, None))      # all_gather of 2 histograms
    merge = {(r["ranks"], r["k"]): r["min_s"] * q / r["queries"] for r in d["rows"] if r["op"] == "merge"}
    for op, received, keys in ops:
        dist = rows[(op, 2, 1)]
        if op == "map_index_all":  # its local work is the torch rank scan, linear in the shard: 2x the 2-rank call
            local = 2 * dist["min_s"] * q / dist["queries"]
        else:
            local = rows[(op, 1, 1)]["min_s"]
        for R in (8, 32, 64):
            link = [q * received(R) / bw + 2 * math.log2(R) * LATENCY_S for bw in LINKS.values()]
            out.append([op, R, f"{R}M", f"{q * received(R) / 1e6:,.1f} MB", *(ms(t) for t in link),
                        ms(merge[(R, keys)]) if keys else "-", ms(local)])
    return table(["operation (Q = 1,000)", "ranks", "N", "received per rank", "link, 10 GbE", "link, 100 Gb/s",
                  "merge (measured alone)", "local compute (1M codes, here)"], out)


def unsupervised_compare_extra(main: dict) -> list[dict]:
    """The trained rows of a loss run on its own (bench_unsupervised_compare_<loss>.json, `--out`) that the main
    file did not train (there: a `skipped` note); their baselines are the main file's."""
    trained = {r["loss"] for r in main["rows"] if r["method"] in ("nested", "independent")}
    out = []
    for name in sorted(os.listdir(RESULTS)):
        loss = name[len("bench_unsupervised_compare_"):-len(".json")]
        if name.startswith("bench_unsupervised_compare_") and name.endswith(".json") and loss not in trained:
            out += [r for r in load(name[:-len(".json")])["rows"]
                    if r["method"] in ("nested", "independent") and r["loss"] == loss]
    return out


def unsupervised_compare() -> str:
    """mAP@all per length, mean ± std over seeds (count), and train time per seed, of bench_unsupervised_compare."""
    import statistics

    d = load("bench_unsupervised_compare")
    bits = d["config"]["bits"]
    groups, times, raw = {}, {}, None
    for r in d["rows"] + unsupervised_compare_extra(d):
        if r["method"] == "raw_pixels":
            raw = r["map"]
        elif r["method"] != "skipped":
            key = (r["loss"] or "", r["method"] != "nested", r["method"])  # baselines, then nested before independent
            groups.setdefault(key, {}).setdefault(r["bits"], []).append(r["map"])
            times.setdefault(key, {}).setdefault(r["seed"], 0.0)
            times[key][r["seed"]] += r.get("train_time_s", 0.0)

    rows = [[f"{k[0]} {k[2]}".strip()] + [mean_std_count(groups[k].get(b, [])) for b in bits]
            + [f"{statistics.fmean(times[k].values()):.1f}"] for k in sorted(groups)]
    rows.append(["raw pixels, Euclidean"] + [f"{raw:.3f}"] * len(bits) + ["0"])
    return table(["method"] + [f"{b} bits" for b in bits] + ["fit time / seed (s)"], rows)


def mean_std_count(xs) -> str:
    """'mean ± std (n)' of a list of mAPs (std 0 for one value), '—' for none."""
    import statistics

    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.3f} ± {sd:.3f} ({len(xs)})"


def unsupervised_long() -> str:
    """The longer-budget unsupervised runs (bench_unsupervised_long_*.json, one file per part of the plan):
    mAP@all per length, mean ± std over seeds (count), train time per seed; ITQ and raw pixels from the same
    files (one value per seed: they do not depend on the training budget)."""
    import statistics

    groups, times, base, bits, raw = {}, {}, {}, None, None
    for name in sorted(os.listdir(RESULTS)):
        if not (name.startswith("bench_unsupervised_long_") and name.endswith(".json")):
            continue
        d = load(name[:-len(".json")])
        bits = bits or d["config"]["bits"]
        soft = d["config"].get("soft_sortednce", False)
        train_rows = int(re.search(r"(\d+) train", d["config"]["data"]).group(1))  # e.g. "digits: 1297 train / ..."
        for r in d["rows"]:
            if r["method"] == "raw_pixels":
                raw = r["map"]
            elif r["method"] == "itq":
                base.setdefault(r["bits"], {})[r["seed"]] = r["map"]
            elif r["method"] in ("nested", "independent"):
                steps = r["epochs"] * -(-train_rows // r["batch_size"])
                label = (f"{r['loss']}{' (soft SoftSort)' if soft and r['loss'] == 'sortednce' else ''}",
                         r["method"] != "nested", r["method"], f"{r['epochs']} x {r['batch_size']} ({steps:,})")
                groups.setdefault(label, {}).setdefault(r["bits"], []).append(r["map"])
                times.setdefault(label, {}).setdefault(r["seed"], 0.0)
                times[label][r["seed"]] += r.get("train_time_s", 0.0)

    out = [[f"{k[0]} {k[2]}", k[3]] + [mean_std_count(groups[k].get(b, [])) for b in bits]
           + [f"{statistics.fmean(times[k].values()):.1f}"] for k in sorted(groups)]
    out.append(["itq", "—"] + [mean_std_count(list(base.get(b, {}).values())) for b in bits] + ["—"])
    out.append(["raw pixels, Euclidean", "—"] + [f"{raw:.3f}"] * len(bits) + ["0"])
    return table(["method", "epochs x batch (steps)"] + [f"{b} bits" for b in bits] + ["fit time / seed (s)"], out)


def cpu_unsupervised() -> str:
    """bench_unsupervised.py: the fused sorted_nce op vs the materialised reference, per configuration."""
    by = {}
    for r in load("bench_unsupervised")["rows"]:
        by.setdefault((r["hard"], r["batch"], r["d"], len(r["bits"])), {})[r["impl"]] = r
    rows = []
    for (hard, batch, d, n_len), pair in sorted(by.items(), key=lambda kv: (not kv[0][0], kv[0][1:])):
        f, m = pair["fused"], pair["materialised"]
        if "skipped" in m:
            mat = [f"not run (~{m['materialised_estimate_gib']:.1f} GiB)", "", "", ""]
        else:
            mat = [f"{m['time_ms']:,.1f} ms", f"{m['time_ms'] / f['time_ms']:.1f}x", f"{m['peak_mib']:,.1f} MiB",
                   f"{m['peak_mib'] / max(f['peak_mib'], 1e-3):.0f}x"]
        rows.append(["hard" if hard else "soft", batch, d, n_len, f"{f['time_ms']:,.1f} ms", mat[0], mat[1],
                     f"{f['peak_mib']:,.2f} MiB", mat[2], mat[3]])
    return table(["SoftSort", "B", "d", "K", "fused", "materialised", "speed-up", "fused peak", "materialised peak",
                  "memory ratio"], rows)


TABLES = {
    "cpu_topk": cpu_topk,
    "cpu_map": cpu_map,
    "cpu_train_step": cpu_train_step,
    "cpu_losses": cpu_losses,
    "gpu_summary": gpu_summary,
    "cpu_index": cpu_index,
    "cpu_index_build": cpu_index_build,
    "cpu_distributed": cpu_distributed,
    "cpu_distributed_projection": cpu_distributed_projection,
    "unsupervised_compare": unsupervised_compare,
    "unsupervised_long": unsupervised_long,
    "cpu_unsupervised": cpu_unsupervised,
    "house_side_by_side": lambda: side_by_side("house_side_by_side"),
    "house_side_by_side_recheck": lambda: side_by_side("house_side_by_side_recheck"),
}
TABLES.update(fidelity_tables.TABLES)  # bench_fidelity.py's tables (their own file)
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
