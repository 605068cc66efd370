"""One small run of every CUDA kernel (and every Triton kernel on CUDA tensors), each checked
against the torch reference: the workload bench/gpu_check.sh runs under compute-sanitizer
(memcheck, racecheck). Shapes hit the awkward paths: a partial last word, lengths not multiples
of 64, ties, k = N, one query, histograms in shared and in global memory (> 3,072 bins).

    python bench/gpu_kernels_once.py [--backend cuda|triton] [--device cpu]   (cpu: a dry run)
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import nhl_fast as nf
from nhl_fast import reference as ref


_last = [time.perf_counter()]


def check(name, got, want):
    now = time.perf_counter()
    seconds, _last[0] = now - _last[0], now
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    ok = all(torch.allclose(g.cpu().double(), w.cpu().double(), rtol=1e-5, atol=1e-6) if g.is_floating_point()
             else torch.equal(g.cpu(), w.cpu()) for g, w in zip(got, want))
    print(f"{'ok  ' if ok else 'FAIL'} {name} ({seconds:.2f} s)", flush=True)
    return ok


def triton_resources():
    """Registers and spills of every compiled Triton kernel (spills go to local memory)."""
    import importlib
    import pkgutil

    import triton
    import nhl_fast.kernels as kernels
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"nhl_fast.kernels.{info.name}")
        for name in dir(module):
            fn = getattr(module, name)
            if not isinstance(fn, triton.runtime.JITFunction):
                continue
            for cache in getattr(fn, "device_caches", {}).values():
                for compiled in cache[0].values():
                    meta = getattr(compiled, "metadata", None)
                    print(f"triton {name}: {getattr(compiled, 'n_regs', '?')} registers, "
                          f"{getattr(compiled, 'n_spills', '?')} spills, {getattr(meta, 'shared', '?')} B shared, "
                          f"{getattr(meta, 'num_warps', '?')} warps", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cuda")
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    dev, be = torch.device(args.device), args.backend
    if dev.type == "cpu":
        torch.set_num_threads(1)  # tiny ops: OpenMP threads only spin-wait on a shared machine
    g = torch.Generator().manual_seed(0)
    ok = True
    codes = torch.randn(37, 200, generator=g)
    codes[3, :5] = 0.0
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.bool):
        c = (codes > 0) if dtype == torch.bool else codes.to(dtype)
        ok &= check(f"pack {dtype}", nf.pack(c.to(dev), backend=be), ref.pack(c))
    packed = ref.pack(codes)
    ok &= check("unpack 200", nf.unpack(packed.to(dev), 200, backend=be), ref.unpack(packed, 200))
    # distinct codes drawn with repeats: heavy ties
    db = packed[torch.randint(0, 9, (300,), generator=g)]
    q = packed[:5]
    bits = [7, 64, 65, 130, 200]
    ok &= check("hamming", nf.hamming(q.to(dev), db.to(dev), bits, backend=be), ref.hamming(q, db, bits))
    for k in (1, 17, 300):
        ok &= check(f"topk k={k}", nf.topk(q.to(dev), db.to(dev), k, bits, backend=be), ref.topk(q, db, k, bits))
    ok &= check("topk one query", nf.topk(q[:1].to(dev), db.to(dev), 5, bits, backend=be), ref.topk(q[:1], db, 5, bits))
    # metrics: small lengths (shared-memory histograms) and 3,102 bins (> 3,072: the global scratch)
    ql, dl = torch.randint(0, 4, (5,), generator=g), torch.randint(0, 4, (300,), generator=g)
    for mbits, words in ((bits, 4), ([1000, 2100], 33)):
        qq = q if words == 4 else torch.randint(-(2**63), 2**63 - 1, (5, words), generator=g)
        dd = db if words == 4 else torch.randint(-(2**63), 2**63 - 1, (300, words), generator=g)
        dev_args = (qq.to(dev), dd.to(dev), ql.to(dev), dl.to(dev))
        ok &= check(f"distance_histogram {mbits}", torch.ops.nhl_fast.distance_histogram(*dev_args, mbits)
                    if be == "cuda" else torch.ops.nhl_fast.distance_histogram_triton(*dev_args, mbits),
                    ref.distance_histogram(qq, dd, ql, dl, mbits))
        for topk in (None, 10):
            want = ref.index_ap(qq, dd, ql, dl, mbits, topk)
            got = (torch.ops.nhl_fast.index_ap(*dev_args, mbits, topk) if be == "cuda"
                   else torch.ops.nhl_fast.index_ap_triton(*dev_args, mbits, topk))
            ok &= check(f"index_ap {mbits} topk={topk}", got, want)
    # layer: projection epilogue (relaxations) and project-and-pack, several dtypes
    x, w, b = torch.randn(70, 33, generator=g), torch.randn(130, 33, generator=g), torch.randn(130, generator=g)
    for dtype in (torch.float32, torch.float64):
        xd, wd, bd = (t.to(dev, dtype) for t in (x, w, b))
        for relax in ("tanh", "sign_ste", "none"):
            got = (torch.ops.nhl_fast.nested_projection(xd, wd, bd, relax) if be == "cuda"
                   else torch.ops.nhl_fast.nested_projection_triton(xd, wd, bd, relax))
            want = ref.nested_projection(x.to(dtype), w.to(dtype), b.to(dtype), relax)
            ok &= check(f"nested_projection {dtype} {relax}", got, want)
        got = (torch.ops.nhl_fast.project_and_pack(xd, wd, bd) if be == "cuda"
               else torch.ops.nhl_fast.project_and_pack_triton(xd, wd, bd))
        ok &= check(f"project_and_pack {dtype}", got, ref.project_and_pack(x.to(dtype), w.to(dtype), b.to(dtype)))
    layer = nf.NestedHashLayer(33, (8, 16, 32, 64, 128), backend=be).to(dev)
    ok &= check("layer.encode", layer.encode(x.to(dev)), ref.pack(torch.sign(x.to(dev) @ layer.weight.T + layer.bias)))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        if be == "triton":
            triton_resources()
    print("all kernels ok" if ok else "SOME KERNELS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
