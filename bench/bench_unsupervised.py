"""The fused soft-sort + SortedNCE op (sorted_nce, C++ on CPU) vs the materialised one (reference.sorted_nce:
the (B, B, B) SoftSort permutations and the (B, B, d) sorted latents as tensors, autograd), side by side in one
run: forward + backward time and peak memory, B = 64..512, d = 128..1024, hard (straight-through, NSH's default)
and soft SoftSort, and K = 4 lengths in one call at B = 256.

Time: min over alternating runs in this process. Memory: each (impl, config) runs once in a fresh subprocess;
peak = the kernel's peak resident set (VmHWM, reset through /proc/self/clear_refs after the inputs exist) minus
the resident set just before, so it counts every byte either implementation touches (torch's CPU allocator
has no peak statistics). A materialised config whose estimated working set passes --max-gib is not run (its
estimate is recorded).

    python bench/bench_unsupervised.py [--quick] [--threads 1]   -> bench/results/bench_unsupervised.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parser, timeit, write_results  # noqa: E402

import nhl_fast  # noqa: E402,F401
from nhl_fast import reference  # noqa: E402

M, TAU = 2, 0.1


def inputs(batch: int, d: int, b_max: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, b_max, generator=g).tanh()
    v = (u + 0.5 * torch.randn(batch, b_max, generator=g)).tanh()
    z = torch.randn(batch, d, generator=g)
    a = z + 0.5 * torch.randn(batch, d, generator=g)
    return [t.requires_grad_(True) for t in (u, v, z, a)]


def impl(name: str):
    return torch.ops.nhl_fast.sorted_nce if name == "fused" else reference.sorted_nce


def step(fn, tensors, bits, hard: bool) -> None:
    for t in tensors:
        t.grad = None
    loss = fn(*tensors, list(bits), M, TAU, [float(b) for b in bits], hard)
    loss.sum().backward()


def materialised_gib(batch: int, d: int, n_len: int) -> float:
    """Rough working set of the reference: ~6 (B, B, B) and ~3 (B, B, d) float32 tensors per length."""
    return 4.0 * n_len * (6 * batch ** 3 + 3 * batch * batch * d) / 2 ** 30


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(spec: dict) -> None:
    """Run one forward + backward (after a warm-up) and print the peak resident bytes it added."""
    torch.set_num_threads(spec["threads"])
    tensors = inputs(spec["batch"], spec["d"], spec["bits"][-1])
    fn = impl(spec["impl"])
    step(fn, [t.detach().requires_grad_(True) for t in inputs(8, 4, spec["bits"][-1])], spec["bits"][-1:],
         spec["hard"])  # load lazily-initialised code paths outside the measured window
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    step(fn, tensors, spec["bits"], spec["hard"])
    print(json.dumps({"peak_bytes": 1024 * (_rss_kib("VmHWM") - before)}))


def peak_bytes(spec: dict) -> int:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def main():
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads (default 1: stable ratios)")
    p.add_argument("--max-gib", type=float, default=3.0, help="skip materialised configs estimated above this")
    p.add_argument("--child", default=None, help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    torch.set_num_threads(args.threads)
    if args.quick:
        grid = [(32, 64, True), (32, 64, False), (64, 128, True)]
        bits, repeat = (16, 32), 2
    else:
        grid = [(b, d, hard) for hard in (True, False) for b in (64, 128, 256, 512) for d in (128, 512, 1024)]
        bits, repeat = (64,), 3
    configs = [(b, d, hard, bits) for b, d, hard in grid]
    if not args.quick:  # all four lengths of a nested head in one call
        configs += [(256, 512, True, (8, 16, 32, 64)), (256, 512, False, (8, 16, 32, 64))]
    rows = []
    for batch, d, hard, bits in configs:
        tensors = inputs(batch, d, bits[-1])
        est = materialised_gib(batch, d, len(bits))
        for name in ("fused", "materialised"):
            row = {"impl": name, "batch": batch, "d": d, "bits": list(bits), "hard": hard, "m": M, "tau": TAU,
                   "threads": args.threads, "materialised_estimate_gib": est}
            if name == "materialised" and est > args.max_gib:
                rows.append({**row, "skipped": f"estimated {est:.1f} GiB > --max-gib {args.max_gib}"})
                print(f"B={batch:4d} d={d:5d} {'hard' if hard else 'soft'} {name:12s} skipped ({est:.1f} GiB)")
                continue
            t = timeit(lambda: step(impl(name), tensors, bits, hard), warmup=1, repeat=repeat)
            spec = {"impl": name, "batch": batch, "d": d, "bits": list(bits), "hard": hard, "threads": args.threads}
            peak = peak_bytes(spec)
            rows.append({**row, "time_ms": 1e3 * t["min_s"], "median_ms": 1e3 * t["median_s"], "peak_mib": peak / 2 ** 20})
            print(f"B={batch:4d} d={d:5d} K={len(bits)} {'hard' if hard else 'soft'} {name:12s} "
                  f"{1e3 * t['min_s']:10.1f} ms  peak {peak / 2 ** 20:9.1f} MiB", flush=True)
    path = write_results(args.out or "bench_unsupervised",
                         {"config": {"what": "forward + backward of sorted_nce, float32, CPU",
                                     "time": "min over runs, this process", "memory": "peak VmHWM - VmRSS before, "
                                     "fresh subprocess per row", "threads": args.threads, "m": M, "tau": TAU,
                                     "sort_tau": "the code length (NSH's SoftSort(bit))"},
                          "rows": rows})
    print("wrote", path)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
