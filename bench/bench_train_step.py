"""One NHL training step of a feature-in hashing head, side by side in one run:

  ours       NestedHashLayer + NHLObjective("csq", adaptive, distill=0.1): one GEMM forward, CSQ's K
             losses and gradients in closed form (op csq_grads), then one op for the rest (nhl_objective:
             distillation, the B x B input Gram and the dominance weights, the total and its gradient),
             one backward (one GEMM pair), no loss graph, no host sync.
  reference  the reference code's step (hly1998/NHL model_grand_sd.py, RML_E + analysis +
             distillation), literally: K matmuls, K analysis backward passes reading W.grad,
             .item() host syncs and Python loops for the weights, a second forward + backward.
  single     one 128-bit head (nn.Linear) + CSQ on 128 bits: the floor any multi-length step pays.
  (ablations: ours without adaptive weights, and without adaptive weights and distillation)

Features X (B, in) are a leaf with requires_grad (the backbone's output: every step also
computes dL/dX). Same optimizer (SGD, momentum) in all three. Also: encode throughput
(layer.encode, fused GEMM + sign + pack) vs torch.sign(F.linear(x)) followed by nhl_fast.pack.

    python bench/bench_train_step.py [--quick] [--device cuda]  -> bench/results/bench_train_step.json
"""
from __future__ import annotations

import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parser, sync, timeit, write_results  # noqa: E402
from reference_head import ReferenceHead, sp_distill  # noqa: E402

import nhl_fast as nf  # noqa: E402
from nhl_fast.losses import get_loss  # noqa: E402


def reference_step(head, criteria, optimizer, x, y, idx, distill_weight, n_in):
    bits = head.bits
    k = len(bits)
    optimizer.zero_grad()
    outputs = head(x.detach())
    w_grad = []
    for i, (crit, out) in enumerate(zip(criteria, outputs)):
        obj = crit(out, y, idx)[0]
        if i < k - 1:
            obj = obj + distill_weight * sp_distill(out, outputs[i + 1].detach())
        optimizer.zero_grad(set_to_none=True)
        obj.backward(retain_graph=True)
        w_grad.append(head.hash_layer.weight.grad.flatten())
    alpha = [[1.0] for _ in bits[:-1]]
    for i, short in enumerate(bits[:-1]):
        n = n_in * short
        short_norm = w_grad[0][:n].norm().item()
        tau = short_norm * short_norm / (k - 1)
        for g in w_grad[i + 1:]:
            d = torch.dot(w_grad[i][:n], g[:n]).item()
            alpha[i].append(tau / -d if d < 0 and -d > tau else 1.0)
        for j in range(2, len(alpha[i])):
            alpha[i][j] = min(alpha[i][j], alpha[i][1])
    ws = [1.0]
    for j in range(k - 1):
        w = 1.0
        for i in range(j + 1):
            w *= alpha[i][j + 1 - i]
        ws.append(w)
    ws = [v * k / sum(ws) for v in ws]
    outputs = head(x)
    dists = [sp_distill(outputs[i], outputs[i + 1].detach()) for i in range(k - 1)]
    losses = [w * (c(o, y, idx)[0] + distill_weight * d) for w, c, o, d in zip(ws, criteria, outputs, dists)]
    torch.stack(losses).sum().backward()
    optimizer.step()


def bench_step(batch, n_in, bits, ncls, device, repeat):
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, n_in, generator=gen).to(device).requires_grad_()
    y = torch.randint(0, ncls, (batch,), generator=gen).to(device)
    idx = torch.arange(batch, device=device)
    sgd = dict(lr=1e-3, momentum=0.9)

    layer = nf.NestedHashLayer(n_in, bits, init="normal").to(device)
    obj = nf.NHLObjective("csq", bits, adaptive=True, distill=0.1, num_classes=ncls).to(device)
    opt_ours = torch.optim.SGD(layer.parameters(), **sgd)

    def ours():
        opt_ours.zero_grad()
        x.grad = None
        obj(layer(x), y, idx).backward()
        opt_ours.step()

    head = ReferenceHead(n_in, bits).to(device)
    criteria = [get_loss("csq", (b,), num_classes=ncls).to(device) for b in bits]
    opt_ref = torch.optim.SGD(head.parameters(), **sgd)

    def reference():
        x.grad = None
        reference_step(head, criteria, opt_ref, x, y, idx, 0.1, n_in)

    single_head = nn.Linear(n_in, bits[-1]).to(device)
    single_loss = get_loss("csq", (bits[-1],), num_classes=ncls).to(device)
    opt_single = torch.optim.SGD(single_head.parameters(), **sgd)

    def single():
        opt_single.zero_grad()
        x.grad = None
        single_loss(single_head(x), y, idx)[0].backward()
        opt_single.step()

    # ablations of ours: where the time over the single head goes
    obj_no_adapt = nf.NHLObjective("csq", bits, adaptive=False, distill=0.1, num_classes=ncls).to(device)
    obj_plain = nf.NHLObjective("csq", bits, adaptive=False, distill=0.0, num_classes=ncls).to(device)

    def ablation(o):
        def step():
            opt_ours.zero_grad()
            x.grad = None
            o(layer(x), y, idx).backward()
            opt_ours.step()
        return step

    fns = {"ours": ours, "reference": reference, "single_128": single,
           "ours_no_adaptive": ablation(obj_no_adapt), "ours_no_adaptive_no_distill": ablation(obj_plain)}
    for fn in fns.values():  # warm up every variant before timing any
        fn()
    # Interleave the variants' repeats so machine noise hits all three alike. On CPU with one
    # thread the step runs on this thread (the autograd engine runs CPU backward on the caller),
    # so its CPU time (time.thread_time) is the step's cost without other tenants' preemption.
    cpu_clock = device.type == "cpu" and torch.get_num_threads() == 1
    times = {name: [] for name in fns}
    walls = {name: [] for name in fns}
    # Each timed step follows an untimed step of the same variant, so every variant is timed in
    # the steady state of a training loop (its own weights, optimizer state and x in cache),
    # whatever ran before it.
    for _ in range(repeat):
        for name, fn in fns.items():
            fn()
            sync(device)
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            sync(device)
            walls[name].append(time.perf_counter() - t0)
            times[name].append(time.thread_time() - c0 if cpu_clock else walls[name][-1])
    row = {"batch": batch, "in_features": n_in, "bits": list(bits), "loss": "csq", "adaptive": True, "distill": 0.1,
           "clock": "thread CPU time" if cpu_clock else "wall"}
    for name, ts in times.items():
        row[f"{name}_ms"] = 1e3 * min(ts)
        row[f"{name}_wall_ms"] = 1e3 * min(walls[name])
    row["ours_over_single"] = row["ours_ms"] / row["single_128_ms"]
    row["reference_over_ours"] = row["reference_ms"] / row["ours_ms"]
    row["weights"] = obj.last_weights.tolist()
    return row


def bench_encode(n, n_in, bits, device, repeat):
    layer = nf.NestedHashLayer(n_in, bits).to(device)
    x = torch.randn(n, n_in, generator=torch.Generator().manual_seed(0)).to(device)

    def fused():
        return layer.encode(x)

    @torch.no_grad()
    def unfused():
        return nf.pack(torch.sign(F.linear(x, layer.weight, layer.bias)))

    assert torch.equal(fused(), unfused())
    t_fused = timeit(fused, device=device, warmup=1, repeat=repeat)["min_s"]
    t_unfused = timeit(unfused, device=device, warmup=1, repeat=repeat)["min_s"]
    sync(device)
    return {"rows": n, "in_features": n_in, "bits": bits[-1],
            "encode_rows_per_s": n / t_fused, "sign_linear_pack_rows_per_s": n / t_unfused,
            "encode_ms": 1e3 * t_fused, "sign_linear_pack_ms": 1e3 * t_unfused,
            "speedup": t_unfused / t_fused,
            "float_codes_mib_avoided": n * bits[-1] * x.element_size() / 2**20}


def main():
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: a shared, oversubscribed CPU makes OpenMP timings erratic)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    bits = (8, 16, 32, 64, 128)
    n_in = 256 if args.quick else 2048
    batches = (16,) if args.quick else (64, 128)
    repeat = 3 if args.quick else 30
    steps = []
    for batch in batches:
        row = bench_step(batch, n_in, bits, 10, device, repeat)
        steps.append(row)
        print(f"B={batch:4d}: ours {row['ours_ms']:.2f} ms, reference-style {row['reference_ms']:.2f} ms, "
              f"single 128-bit head {row['single_128_ms']:.2f} ms | ours/single {row['ours_over_single']:.2f}x, "
              f"reference/ours {row['reference_over_ours']:.2f}x", flush=True)
    n_rows = 4096 if args.quick else (200_000 if device.type == "cuda" else 50_000)
    enc = bench_encode(n_rows, n_in, bits, device, 2 if args.quick else 5)
    print(f"encode {enc['rows']} x {n_in} -> {bits[-1]} bits: fused {enc['encode_rows_per_s']:.3g} rows/s, "
          f"sign(linear)+pack {enc['sign_linear_pack_rows_per_s']:.3g} rows/s ({enc['speedup']:.2f}x)")
    path = write_results(args.out or ("bench_train_step_quick" if args.quick else "bench_train_step"), {
        "config": {"device": str(device), "threads": torch.get_num_threads(), "quick": args.quick,
                   "base_loss": "csq (registered nhl_fast.losses CSQ; the reference-style step uses one per-length "
                                "CSQ each)",
                   "timing": f"min over {repeat} interleaved repeats after one warm-up step of each variant; CPU: "
                             "thread CPU time with torch.set_num_threads(1) (the *_wall_ms fields: wall clock, noisy "
                             "on a shared machine)"},
        "rows": [{"measure": "train_step", **row} for row in steps] + [{"measure": "encode", **enc}],
    })
    print("wrote", path)


if __name__ == "__main__":
    main()
