"""GPU microbenchmarks, side by side in one run (CUDA events, warm-up, median of >= 10 runs where a
run fits the section's time box, else as many as fit, at least 3; the JSON says how many):

  hamming   the full (L, Q, N) matrix: G pairs/s, % of the popcount roofline and of the
            output-write roofline (int32 per pair and length must reach HBM)
  topk      nf.topk vs the plain-torch alternative a user would write: fp16 tensor-core GEMM on
            +-1 codes (database unpacked once, outside the timing), chunked, + torch.topk merges
  map       ImageNet-100 (5,000 x 128,000, top 1000) and CIFAR-10 (1,000 x 54,000, full ranking)
            protocols, 5 lengths, ties "index" and "average", vs a vectorised torch-on-GPU
            evaluation (GEMM distances + stable sort + cumsum), one length at a time
  train     one training step (bench_train_step.bench_step) in fp32 and bf16 autocast, and the
            share of each objective op (nhl_objective, cascade_distill, csq_grads)
  encode    layer.encode rows/s vs sign(linear) + pack

Every section writes bench/results/gpu_<section>.json in the common schema (bench/_common.py; the
GPU name, clocks and driver in machine.gpu): one flat row per measurement, each with a "measure"
where a section measures more than one kind of thing.
--dry-run runs the same code on CPU tensors at tiny sizes (what .ci/run calls, so it cannot rot).

    python bench/bench_gpu.py [--sections hamming,topk,map,train,encode] [--budget 240]
    python bench/bench_gpu.py --dry-run
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import nhl_fast as nf  # noqa: E402

FIVE = (8, 16, 32, 64, 128)
# Throughput of 32-bit population count per SM per clock for compute capability 9.0: 16 (CUDA C++
# Programming Guide, "Arithmetic Instructions" throughput table). A 64-bit __popcll is two of them.
POPC_PER_SM_CLOCK = 16


class Timer:
    """Median time of fn() with CUDA events (host clock + synchronize on CPU)."""

    def __init__(self, device, box_s):
        self.device, self.box_s = device, box_s

    def one(self, fn):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def __call__(self, fn, min_runs=10):
        first = self.one(fn)  # warm-up (compilation, allocator); sizes the number of runs
        runs = int(max(3, min(min_runs, self.box_s / max(first, 1e-6))))
        times = [self.one(fn) for _ in range(runs)]
        return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs}


def gpu_facts(device) -> dict:
    if device.type != "cuda":
        return {"device": "cpu (dry run)"}
    facts = _common.gpu_facts()
    try:
        q = "clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,driver_version"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.strip().split(", ")
        facts.update(dict(zip(["sm_clock_mhz", "sm_clock_max_mhz", "mem_clock_mhz", "mem_clock_max_mhz", "driver"], out)))
    except (OSError, subprocess.SubprocessError):
        pass
    return facts


def random_packed(n, words, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**63), 2**63 - 1, (n, words), dtype=torch.int64, generator=g).to(device)


def popc_per_pair(bits) -> int:
    """Fewest 32-bit popcounts per pair for all lengths: cumulative counts of the 32-bit halves give
    every length that ends on a half's boundary; each length ending inside a half needs one more."""
    return -(-max(bits) // 32) + sum(1 for b in bits if b % 32)


# ------------------------------------------------------------------ sections


def bench_hamming(dev, t, quick, facts):
    rows = []
    sms = facts.get("sms")
    try:
        clock = float(facts.get("sm_clock_max_mhz")) * 1e6
    except (TypeError, ValueError):
        clock = 1.98e9  # the H200's boost clock, when nvidia-smi does not say
    facts["popcount_roofline_clock_hz"] = clock
    q_n, db_n = (64, 2048) if quick else (10_000, 1_000_000)
    for words, bits in [(1, (64,)), (2, (128,)), (2, FIVE)]:
        q, db = random_packed(q_n, words, dev, 1), random_packed(db_n, words, dev, 2)
        # keep the output <= ~40 GB: fewer queries for 5 lengths
        nq = min(q_n, max(1, int(40e9 // (4 * len(bits) * db_n))))
        qq = q[:nq]
        r = t(lambda: nf.hamming(qq, db, bits=bits))
        pairs = nq * db_n
        row = {"bits": list(bits), "queries": nq, "database": db_n, **r, "g_pairs_per_s": pairs / r["median_s"] / 1e9,
               "popc_per_pair": popc_per_pair(bits), "output_bytes_per_pair": 4 * len(bits)}
        if sms and clock:
            roof = sms * clock * POPC_PER_SM_CLOCK / popc_per_pair(bits)
            row["popcount_roofline_g_pairs_per_s"] = roof / 1e9
            row["pct_of_popcount_roofline"] = 100 * pairs / r["median_s"] / roof
            write_bw = pairs * 4 * len(bits) / r["median_s"]
            row["output_write_tb_per_s"] = write_bw / 1e12
        rows.append(row)
        print(f"hamming {bits}: {row['g_pairs_per_s']:.1f} G pairs/s "
              f"({row.get('pct_of_popcount_roofline', float('nan')):.1f}% of popcount roof, "
              f"{row.get('output_write_tb_per_s', float('nan')):.2f} TB/s written)", flush=True)
        del q, db
    return {"config": {"popcount_rate": f"{POPC_PER_SM_CLOCK} popc/SM/clock (CUDA C++ Programming Guide, cc 9.0) "
                                        "x SMs x max SM clock (nvidia-smi)"}, "rows": rows}


def kernel_breakdown(fn, dev, **params) -> list[dict]:
    """GPU milliseconds per kernel name in one call of fn (torch.profiler), largest first: where
    the time of a multi-kernel op goes; one row per kernel, with `params`."""
    if dev.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    times = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t:
            times[e.key[:80]] = times.get(e.key[:80], 0.0) + t / 1e3
    top = sorted(times.items(), key=lambda kv: -kv[1])[:12]
    return [{"measure": "kernel_ms", **params, "kernel": name, "ms": ms} for name, ms in top]


def gemm_topk(qf, dbf, k, bits, chunk):
    """Plain-torch baseline: scores <x, y> of +-1 fp16 codes on tensor cores, k largest per chunk
    (torch.topk), merged; Hamming = (b - score) / 2."""
    best_s = best_i = None
    for n0 in range(0, dbf.shape[0], chunk):
        s = qf @ dbf[n0:n0 + chunk].T
        v, i = torch.topk(s, min(k, s.shape[1]), dim=1)
        i = i + n0
        if best_s is not None:
            v, pos = torch.topk(torch.cat([best_s, v], 1), k, dim=1)
            i = torch.gather(torch.cat([best_i, i], 1), 1, pos)
        best_s, best_i = v, i
    return ((bits - best_s.float()) / 2).round().to(torch.int32), best_i


def bench_topk(dev, t, quick):
    rows = []
    q_n, db_n = (32, 4096) if quick else (10_000, 10_000_000)
    half = torch.float16 if dev.type == "cuda" else torch.float32
    for words, b in [(1, 64), (2, 128)]:
        q, db = random_packed(q_n, words, dev, 3), random_packed(db_n, words, dev, 4)
        qf = nf.unpack(q, b).to(half)
        dbf = nf.unpack(db, b).to(half)  # the baseline's best case: unpacked once, not timed
        chunk = 1 << 20 if not quick else 1024
        for k in (100, 1000):
            kk = min(k, db_n)
            ours = t(lambda: nf.topk(q, db, kk, bits=(b,)))
            base = t(lambda: gemm_topk(qf, dbf, kk, b, chunk))
            d_ours, _ = nf.topk(q, db, kk, bits=(b,))
            d_base, _ = gemm_topk(qf, dbf, kk, b, chunk)
            row = {"measure": "topk", "bits": b, "k": kk, "queries": q_n, "database": db_n, "nhl_fast": ours,
                   "gemm_topk": base,
                   "speedup_vs_gemm_topk": base["median_s"] / ours["median_s"],
                   "same_distances": bool(torch.equal(d_ours[0], d_base))}
            if b == 128:
                five = t(lambda: nf.topk(q, db, kk, bits=FIVE))
                row["nhl_fast_5_lengths"] = five
                row["five_over_one"] = five["median_s"] / ours["median_s"]
            rows.append(_common.flatten(row))
            if kk == 100:
                kernels = kernel_breakdown(lambda: nf.topk(q, db, kk, bits=(b,)), dev, bits=b, k=kk)
                rows += kernels
                print("  kernels (ms):", {r["kernel"]: round(r["ms"], 2) for r in kernels}, flush=True)
            print(f"topk {b} bits k={kk}: ours {1e3 * ours['median_s']:.1f} ms, gemm+topk {1e3 * base['median_s']:.1f} ms "
                  f"({row['speedup_vs_gemm_topk']:.2f}x){'' if b != 128 else ', 5 lengths %.2fx one' % row['five_over_one']}"
                  f", distances equal: {row['same_distances']}", flush=True)
        del qf, dbf, q, db
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"config": {}, "rows": rows}


def torch_map(qf, dbf, ql, dl, bits, topk, chunk=256):
    """Vectorised torch evaluation of one length: distances by GEMM, stable sort, cumsum; ties by index."""
    total, n = 0.0, dbf.shape[0]
    k = n if topk is None else topk
    for q0 in range(0, qf.shape[0], chunk):
        dist = (bits - qf[q0:q0 + chunk, :bits] @ dbf[:, :bits].T) / 2
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        rel = (ql[q0:q0 + chunk, None] == dl[order]).float()
        hits = rel.cumsum(1)
        prec = hits / torch.arange(1, k + 1, device=qf.device)
        nrel = rel.sum(1)
        total += torch.where(nrel > 0, (prec * rel).sum(1) / nrel.clamp(min=1), 0).sum().item()
    return total / qf.shape[0]


def clustered(n, classes, centres, flip, gen, dev):
    labels = torch.randint(0, classes, (n,), generator=gen)
    codes = centres[labels] * torch.where(torch.rand(n, 128, generator=gen) < flip, -1.0, 1.0)
    return nf.pack(codes).to(dev), labels.to(dev)


def bench_map(dev, t, quick):
    rows = []
    protocols = {"imagenet100": (5000, 128_000, 100, 1000), "cifar10": (1000, 54_000, 10, None)}
    for name, (nq, n, classes, topk) in protocols.items():
        if quick:
            nq, n, topk = 16, 512, None if topk is None else 50
        gen = torch.Generator().manual_seed(5)
        centres = torch.where(torch.rand(classes, 128, generator=gen) < 0.5, -1.0, 1.0)
        q, ql = clustered(nq, classes, centres, 0.25, gen, dev)
        db, dl = clustered(n, classes, centres, 0.25, gen, dev)
        half = torch.float16 if dev.type == "cuda" else torch.float32
        qf, dbf = nf.unpack(q, 128).to(half), nf.unpack(db, 128).to(half)
        row = {"measure": "map", "protocol": name, "queries": nq, "database": n, "topk": topk, "bits": list(FIVE)}
        for ties in ("index", "average"):
            r = t(lambda: nf.mean_average_precision(q, db, ql, dl, bits=FIVE, topk=topk, ties=ties))
            row[f"nhl_fast_{ties}"] = r
            row[f"map_{ties}"] = nf.mean_average_precision(q, db, ql, dl, bits=FIVE, topk=topk, ties=ties).tolist()
        kernels = kernel_breakdown(lambda: nf.mean_average_precision(q, db, ql, dl, bits=FIVE, topk=topk, ties="index"),
                                   dev, protocol=name, ties="index")
        base = t(lambda: [torch_map(qf, dbf, ql, dl, b, topk) for b in FIVE], min_runs=10)
        row["torch_gpu_eval"] = base
        row["map_torch_gpu_eval"] = [torch_map(qf, dbf, ql, dl, b, topk) for b in FIVE]
        row["speedup_index_vs_torch"] = base["median_s"] / row["nhl_fast_index"]["median_s"]
        rows += [_common.flatten(row)] + kernels
        print(f"mAP {name}: index {1e3 * row['nhl_fast_index']['median_s']:.2f} ms, average "
              f"{1e3 * row['nhl_fast_average']['median_s']:.2f} ms, torch GEMM+sort {1e3 * base['median_s']:.1f} ms "
              f"({row['speedup_index_vs_torch']:.1f}x); mAP index {[round(v, 4) for v in row['map_index']]} "
              f"torch {[round(v, 4) for v in row['map_torch_gpu_eval']]}", flush=True)
    return {"config": {}, "rows": rows}


@contextlib.contextmanager
def op_clock(names, dev):
    """Synchronised wall time spent inside the ops `names` as the library dispatches them (on CUDA
    tensors the objective's ops run Triton): wraps what nhl_fast._dispatch.implementation returns,
    yields the {name: seconds} totals."""
    from nhl_fast import _dispatch
    totals = {n: 0.0 for n in names}
    saved = _dispatch.implementation

    def timed_implementation(name, backend):
        fn = saved(name, backend)
        if name not in totals:
            return fn

        def timed(*a, **kw):
            _common.sync(dev)
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            _common.sync(dev)
            totals[name] += time.perf_counter() - t0
            return out
        return timed

    _dispatch.implementation = timed_implementation
    try:
        yield totals
    finally:
        _dispatch.implementation = saved


def bench_train(dev, quick):
    from bench_train_step import bench_encode, bench_step
    batch, n_in = (16, 64) if quick else (256, 2048)
    repeat = 3 if quick else 30
    rows = []
    for precision in ("fp32", "bf16_autocast"):
        ctx = (torch.autocast(dev.type, dtype=torch.bfloat16) if precision != "fp32" else contextlib.nullcontext())
        with ctx:
            row = bench_step(batch, n_in, FIVE, 10, dev, repeat)
        rows.append({"measure": "train_step", "precision": precision, **row})
        print(f"train step {precision}: ours {row['ours_ms']:.3f} ms, single 128-bit head {row['single_128_ms']:.3f} ms "
              f"({row['ours_over_single']:.2f}x), reference-style {row['reference_ms']:.2f} ms", flush=True)
    # share of each objective op in ours (synchronised around each op: the step is slower than
    # above by the syncs; the shares are what counts)
    names = ("nhl_objective", "csq_grads")
    layer = nf.NestedHashLayer(n_in, FIVE).to(dev)
    obj = nf.NHLObjective("csq", FIVE, adaptive=True, distill=0.1, num_classes=10).to(dev)
    x = torch.randn(batch, n_in, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    idx = torch.arange(batch, device=dev)
    for _ in range(3):
        obj(layer(x), y, idx).backward()
    with op_clock(names, dev) as totals:
        steps = 5 if quick else 20
        _common.sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            obj(layer(x), y, idx).backward()
        _common.sync(dev)
        step_s = (time.perf_counter() - t0) / steps
    shares = {n: totals[n] / steps / step_s for n in names}
    rows += [{"measure": "op_share", "op": n, "share": v, "batch": batch, "in_features": n_in,
              "step_ms_synchronised": 1e3 * step_s} for n, v in shares.items()]
    print("objective op shares:", {n: round(v, 3) for n, v in shares.items()}, flush=True)
    return {"config": {"op_share_note": "time inside each op over the step, both synchronised; nhl_objective's "
                                        "share includes the cascade distillation it runs"}, "rows": rows}


def bench_encode_section(dev, quick):
    from bench_train_step import bench_encode
    rows = [bench_encode(4096 if quick else 1_000_000, 64 if quick else 2048, FIVE, dev, 3 if quick else 10)]
    for r in rows:
        print(f"encode {r['rows']} x {r['in_features']}: {r['encode_rows_per_s']:.3g} rows/s vs sign(linear)+pack "
              f"{r['sign_linear_pack_rows_per_s']:.3g} ({r['speedup']:.2f}x)", flush=True)
    return {"config": {}, "rows": rows}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU tensors, tiny sizes: the script's own smoke test")
    p.add_argument("--sections", default="encode,train,map,hamming,topk")
    p.add_argument("--budget", type=float, default=240.0, help="seconds for all sections; later ones are skipped")
    p.add_argument("--box", type=float, default=6.0, help="seconds of timed runs per measurement")
    args = p.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (or --dry-run)")
    dev = torch.device("cpu" if args.dry_run else "cuda")
    quick = args.dry_run
    facts = gpu_facts(dev)
    print("device:", facts, flush=True)
    t = Timer(dev, 0.05 if quick else args.box)
    start = time.perf_counter()
    sections = {"hamming": lambda: bench_hamming(dev, t, quick, facts), "topk": lambda: bench_topk(dev, t, quick),
                "map": lambda: bench_map(dev, t, quick), "train": lambda: bench_train(dev, quick),
                "encode": lambda: bench_encode_section(dev, quick)}
    failed = []
    for name in args.sections.split(","):
        if time.perf_counter() - start > args.budget:
            print(f"SKIPPED {name}: past the {args.budget:.0f} s budget", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            result = sections[name]()
        except Exception as e:  # one section's failure must not lose the others' numbers
            failed.append(name)
            print(f"FAILED {name}: {type(e).__name__}: {e}", flush=True)
            continue
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # the next section starts with the card's memory free
        result["config"]["section_s"] = time.perf_counter() - t0
        if not quick:
            print("wrote", _common.write_results(f"gpu_{name}", result, gpu=facts), flush=True)
        else:  # the dry run writes nothing but checks what it would write
            _common.results_doc(f"gpu_{name}", result, gpu=facts)
    if failed:
        sys.exit(f"sections failed: {failed}")


if __name__ == "__main__":
    main()
