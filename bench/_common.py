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


def git_commit(here: str | None = None) -> str:
    """The commit of the checkout holding folder `here` (default: this one) (+ "-dirty" with uncommitted
    changes), or "unknown" outside git."""
    import subprocess
    here = here or os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Every bench/results/*.json: these keys, in this order, and nothing else at the top level.
TOP_LEVEL = ("benchmark", "commit", "version", "torch", "machine", "date", "config", "rows")
MACHINE = ("platform", "processor", "cpu_count", "threads", "build", "gpu")
_SCALAR = (str, int, float, bool, type(None))


def gpu_facts() -> dict | None:
    """The GPU torch sees (None without one); bench_gpu.py adds clocks and the driver."""
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"gpu": p.name, "sms": p.multi_processor_count, "memory_gib": p.total_memory / 2**30,
            "cuda": torch.version.cuda, "capability": f"{p.major}.{p.minor}"}


def machine(gpu: dict | None = None) -> dict:
    """Where the figures were measured: the MACHINE keys."""
    import nhl_fast

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "build": nhl_fast.build_info(),
            "gpu": gpu if gpu is not None else gpu_facts()}


def flatten(row: dict, prefix: str = "") -> dict:
    """{"ours": {"median_s": 1.0}, "k": 10} -> {"ours_median_s": 1.0, "k": 10}: nested figures as columns of one
    flat row."""
    out = {}
    for k, v in row.items():
        out.update(flatten(v, f"{prefix}{k}_") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def schema_problems(doc) -> list[str]:
    """Why `doc` is not a results document ([] when it is): the TOP_LEVEL keys in order, machine with the
    MACHINE keys, config a dict, rows a list of flat dicts (values: scalars or lists of scalars)."""
    if not isinstance(doc, dict):
        return [f"a results document is a dict, got {type(doc).__name__}"]
    if tuple(doc) != TOP_LEVEL:
        return [f"top-level keys must be {list(TOP_LEVEL)} in this order, got {list(doc)}"]
    problems = [f"{k} must be a string, got {doc[k]!r}" for k in ("benchmark", "commit", "version", "torch", "date")
                if not isinstance(doc[k], str) or not doc[k]]
    m = doc["machine"]
    if not isinstance(m, dict) or set(m) != set(MACHINE):
        problems.append(f"machine must have exactly the keys {list(MACHINE)}, got {m!r:.200}")
    if not isinstance(doc["config"], dict):
        problems.append(f"config must be a dict, got {type(doc['config']).__name__}")
    rows = doc["rows"]
    if not isinstance(rows, list):
        return problems + [f"rows must be a list, got {type(rows).__name__}"]
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not row:
            problems.append(f"rows[{i}] must be a non-empty dict, got {row!r:.100}")
            continue
        for k, v in row.items():
            if not (isinstance(v, _SCALAR) or (isinstance(v, list) and all(isinstance(x, _SCALAR) for x in v))):
                problems.append(f"rows[{i}][{k!r}] must be a scalar or a list of scalars (a flat row: see flatten()), "
                                f"got {v!r:.100}")
    return problems


def results_doc(name: str, payload: dict, *, gpu: dict | None = None) -> dict:
    """The results document of `payload` = {"config": {...}, "rows": [...]} (nothing else: the run's
    parameters, then one flat dict per measurement with its parameters; derived ratios are rows, or are
    computed when tables are made), with what ran where (TOP_LEVEL); `gpu` replaces the default GPU
    facts. ValueError if it would not follow the schema."""
    extra = set(payload) - {"config", "rows"}
    if extra or "rows" not in payload:
        raise ValueError(f"write_results({name!r}): payload must be {{'config': {{...}}, 'rows': [...]}}, got keys "
                         f"{sorted(payload)}: put other facts in config or in the rows")
    import nhl_fast

    doc = {"benchmark": name, "commit": git_commit(), "version": nhl_fast.__version__, "torch": torch.__version__,
           "machine": machine(gpu), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "config": payload.get("config", {}), "rows": payload["rows"]}
    problems = schema_problems(json.loads(json.dumps(doc)))  # as it will read back (tuples become lists)
    if problems:
        raise ValueError(f"write_results({name!r}): " + "; ".join(problems[:5]))
    return doc


def write_results(name: str, payload: dict, *, gpu: dict | None = None) -> str:
    """bench/results/<name>.json from results_doc(name, payload, gpu=gpu), atomically (a crash never
    leaves a half-written file).

    In a --quick run the name always ends in _quick, whatever the script or --out asked for:
    a smoke run never overwrites the committed full results."""
    if _quick_run and not name.endswith(QUICK_SUFFIX):
        name += QUICK_SUFFIX
    doc = results_doc(name, payload, gpu=gpu)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    fd, tmp = tempfile.mkstemp(dir=RESULTS, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
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
