"""Base losses: nested (all K lengths in one call, one shared bank) vs K separate per-length
calls (K instances, K banks, as the reference runs them), forward + backward, side by side.

    python bench/bench_losses.py [--quick] [--device cuda]   -> bench/results/bench_losses.json
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parser, timeit, write_results  # noqa: E402

import nhl_fast.losses as L  # noqa: E402

CENTERED = ("csq", "dpn", "mdsh", "shcir")


def variants():
    out = [(name, {}) for name in L.available(unsupervised=False)]  # the two-view losses take no labels
    out += [(name, {"centers": "nested"}) for name in CENTERED]
    return out


def build(name, kw, bits, ncls, ntrain, device):
    nested = L.get_loss(name, bits, num_classes=ncls, num_train=ntrain, **kw).to(device)
    singles = [L.get_loss(name, (b,), num_classes=ncls, num_train=ntrain, **kw).to(device) for b in bits]
    if hasattr(nested, "centers_table"):  # same targets in both runs
        for k, s in enumerate(singles):
            s.centers_table.copy_(nested.centers_for(k))
    return nested, singles


def main():
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: stable ratios on a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bits = (8, 16, 32, 64, 128)
    ncls = 10
    ntrain = 500 if args.quick else 5000
    batches = (16,) if args.quick else (64, 128)
    repeat = 2 if args.quick else 9
    gen = torch.Generator().manual_seed(0)
    rows = []
    for B in batches:
        u0 = torch.randn(B, bits[-1], generator=gen).to(device)
        y = torch.randint(0, ncls, (B,), generator=gen).to(device)
        idx = torch.randperm(ntrain, generator=gen)[:B].to(device)
        for name, kw in variants():
            nested, singles = build(name, kw, bits, ncls, ntrain, device)
            u = u0.clone().requires_grad_()

            def run_nested():
                u.grad = None
                nested(u, y, idx).sum().backward()

            def run_separate():
                u.grad = None
                sum(s(u[:, :b], y, idx)[0] for s, b in zip(singles, bits)).backward()

            # alternate the two so machine noise hits both alike
            t_sep, t_nest = [], []
            for _ in range(repeat):
                t_sep.append(timeit(run_separate, device=device, warmup=1, repeat=1)["min_s"])
                t_nest.append(timeit(run_nested, device=device, warmup=1, repeat=1)["min_s"])
            label = name + ("[nested centres]" if kw.get("centers") == "nested" else "")
            row = {"loss": label, "batch": B, "bits": list(bits), "num_classes": ncls,
                   "num_train": ntrain if nested.uses_bank else None,
                   "nested_ms": 1e3 * min(t_nest), "separate_ms": 1e3 * min(t_sep),
                   "speedup": min(t_sep) / min(t_nest)}
            rows.append(row)
            print(f"{label:24s} B={B:4d} nested {row['nested_ms']:8.2f} ms  separate {row['separate_ms']:8.2f} ms"
                  f"  x{row['speedup']:.2f}", flush=True)
    path = write_results(args.out or ("bench_losses_quick" if args.quick else "bench_losses"),
                         {"config": {"device": str(device), "threads": torch.get_num_threads(), "quick": args.quick,
                                     "what": "forward+backward of all K lengths; min over runs"},
                          "rows": rows})
    print("wrote", path)


if __name__ == "__main__":
    main()
