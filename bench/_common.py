"""Shared benchmark harness: timing, machine facts, results as JSON (write then rename)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Callable

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
QUICK_SUFFIX = "_quick"
_quick_run = False  # set by parser().parse_args(): this process is a --quick smoke run


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], *, device="cpu", warmup: int = 1, repeat: int = 3,
           min_time: float = 0.0) -> dict:
    """Median / min seconds of `fn()` over `repeat` runs after `warmup` runs (synchronising CUDA)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start_all < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def git_commit() -> str:
    """The checkout's commit (+ "-dirty" with uncommitted changes), or "unknown" outside git."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    import nhl_fast

    info = {
        "commit": git_commit(),
        "version": nhl_fast.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "nhl_fast_build": nhl_fast.build_info(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_results(name: str, payload: dict) -> str:
    """bench/results/<name>.json, atomically (a crash never leaves a half-written file).

    In a --quick run the name always ends in _quick, whatever the script or --out asked for:
    a smoke run never overwrites the committed full results."""
    if _quick_run and not name.endswith(QUICK_SUFFIX):
        name += QUICK_SUFFIX
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    # one schema for every result: what ran (benchmark, commit, version, machine with torch and date),
    # then the script's own parameters and rows
    payload = {"benchmark": name, "machine": machine(), **payload}
    fd, tmp = tempfile.mkstemp(dir=RESULTS, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a results file is as readable as any other
    os.replace(tmp, path)
    return path


class _Parser(argparse.ArgumentParser):
    def parse_args(self, *args, **kwargs):
        global _quick_run
        ns = super().parse_args(*args, **kwargs)
        _quick_run = ns.quick
        return ns


def parser(description: str) -> argparse.ArgumentParser:
    """The scripts' common flags; its parse_args() tells write_results() whether this is a --quick run."""
    p = _Parser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="results name (default: the script's)")
    return p
