"""THE op table and the only dispatcher: which implementation of an op runs, and why the others cannot.

``OPS[op][backend]`` for backend in cpp, cuda, triton, torch (None where that backend has no kernel):

  cpp, cuda  the name of the compiled op in ``torch.ops.nhl_fast`` (schema in csrc/nhl_ops.cpp, kernels in
             csrc/cpu/<op>_cpu.cpp and csrc/cuda/<op>_cuda.cu; torch's dispatcher picks the tensors' device)
  triton     the name of its Triton custom op, ``<op>_triton`` (nhl_fast/_ops.py; launcher kernels/<op>.py)
  torch      the reference function, the spec (nhl_fast/reference.py)

Backend choice, :func:`resolve`: the ``backend=`` argument, else ``NHL_BACKEND`` (auto, cuda, triton, cpp, torch).

* auto: CUDA tensors -> cuda, else triton; CPU tensors -> cpp (Triton runs CPU tensors only when asked for,
  under TRITON_INTERPRET=1). Among those, the first the op has a kernel for and that can run here; when the op
  has one but none can run (no extension, no triton) the torch reference runs, with one warning
  (NHL_REQUIRE_EXT=1 makes a missing extension an error); an op with no kernel for the device runs its torch form.
* an explicit backend that cannot run these tensors raises BackendUnavailable listing why (like xformers'
  not_supported_reasons) -- or, for ``strict=False`` (the objective's ops, which follow NHL_BACKEND only and never
  fail a training step over it), runs the torch reference with one warning. A backend that can run but has no
  kernel for the op (tie_ap on triton) runs the op's torch form.

:func:`build_info` reports the table for this machine: ``info["ops"][op][backend]`` is "available" or why not.
This module does not import nhl_fast._ops (which imports it); ``import nhl_fast`` loads both.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import platform
import sys
import warnings
from typing import Callable, Optional

import torch

from nhl_fast import reference

BACKENDS = ("auto", "cuda", "triton", "cpp", "torch")
KERNEL_BACKENDS = ("cpp", "cuda", "triton", "torch")
AVAILABLE = "available"


def _row(cpp: Optional[str], cuda: Optional[str], triton: Optional[str], torch_ref: Callable) -> dict:
    return {"cpp": cpp, "cuda": cuda, "triton": triton, "torch": torch_ref}


OPS: dict[str, dict] = {
    # engine: packed codes, nested Hamming distances, top-k (nhl_fast.engine)
    "pack": _row("pack", "pack", "pack_triton", reference.pack),
    "unpack": _row("unpack", "unpack", "unpack_triton", reference.unpack),
    "hamming": _row("hamming", "hamming", "hamming_triton", reference.hamming),
    "topk": _row("topk", "topk", "topk_triton", reference.topk),
    # layer (nhl_fast.layers)
    "nested_projection": _row("nested_projection", "nested_projection", "nested_projection_triton",
                              reference.nested_projection),
    "project_and_pack": _row("project_and_pack", "project_and_pack", "project_and_pack_triton",
                             reference.project_and_pack),
    # metrics (nhl_fast.metrics); tie_ap's torch form is the closed form on the histograms, on any device
    "distance_histogram": _row("distance_histogram", "distance_histogram", "distance_histogram_triton",
                               reference.distance_histogram),
    "index_ap": _row("index_ap", "index_ap", "index_ap_triton", reference.index_ap),
    "tie_ap": _row("tie_ap", None, None, reference.tie_ap),
    # objective (nhl_fast.objective, losses/csq.py): C++ on CPU, Triton on CUDA
    "cascade_distill": _row("cascade_distill", None, "cascade_distill_triton", reference.cascade_distill),
    "nhl_objective": _row("nhl_objective", None, "nhl_objective_triton", reference.nhl_objective),
    "csq_grads": _row("csq_grads", None, "csq_grads_triton", reference.csq_grads),
    # unsupervised (losses/sortednce.py): fused SoftSort + SortedNCE and its recomputing backward
    "sorted_nce": _row("sorted_nce", None, "sorted_nce_triton", reference.sorted_nce),
    "sorted_nce_backward": _row("sorted_nce_backward", None, "sorted_nce_backward_triton",
                                reference.sorted_nce_backward),
}

# Ops whose Triton form runs as its raw launcher in eager mode (no custom-op dispatch per call: they run every
# training step and need no autograd); torch.compile traces the custom op, one node with a fake.
_EAGER_LAUNCHER = frozenset({"cascade_distill", "nhl_objective", "csq_grads"})

# auto's candidates per device type; anything else runs the torch reference
_AUTO = {"cuda": ("cuda", "triton"), "cpu": ("cpp",)}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run these inputs; the message lists the reasons."""


# ---------------------------------------------------------------- what can run here


@functools.lru_cache(maxsize=None)
def extension():
    """(module, None) when nhl_fast._C imports, else (None, reason)."""
    try:
        return importlib.import_module("nhl_fast._C"), None
    except ImportError as e:  # not built, or built against another torch
        reason = f"the compiled extension nhl_fast._C failed to import ({e}); build it with `pip install --no-build-isolation -e .`"
        if os.environ.get("NHL_REQUIRE_EXT") == "1":
            raise ImportError(f"NHL_REQUIRE_EXT=1 but {reason}") from e
        return None, reason


@functools.lru_cache(maxsize=None)
def _triton_reason():
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    return None


@functools.lru_cache(maxsize=None)
def _compiled_backends() -> tuple[str, ...]:
    ext, _ = extension()
    return tuple(ext.build_info()["backends"]) if ext is not None else ()


def not_supported_reasons(backend: str, device: torch.device) -> list[str]:
    """Why `backend` cannot run on tensors of `device` ([] when it can), whatever the op."""
    reasons = []
    if backend in ("cpp", "cuda"):
        ext, why = extension()
        if ext is None:
            reasons.append(why)
        elif backend not in _compiled_backends():
            reasons.append("the extension was built without CUDA (torch without CUDA, no nvcc, or NHL_WITH_CUDA=0)")
        if backend == "cpp" and device.type != "cpu":
            reasons.append(f"the cpp backend runs on CPU tensors, got {device.type} tensors")
        if backend == "cuda" and device.type != "cuda":
            reasons.append(f"the cuda backend runs on CUDA tensors, got {device.type} tensors")
    elif backend == "triton":
        why = _triton_reason()
        if why:
            reasons.append(why)
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            reasons.append("triton runs on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1)")
        elif device.type not in ("cpu", "cuda"):
            reasons.append(f"triton does not run on {device.type} tensors")
    elif backend != "torch":
        reasons.append(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    return reasons


# ---------------------------------------------------------------- the dispatcher


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _caller_level() -> int:
    """warnings.warn's stacklevel of the first frame outside nhl_fast (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"nhl_fast: using the slow torch reference: {reason}", RuntimeWarning, stacklevel=_caller_level())


@functools.lru_cache(maxsize=None)
def _resolve(name: str, backend: str, device_type: str, strict: bool, interpret: Optional[str]) -> str:
    # `interpret` (TRITON_INTERPRET) is only part of the cache key: not_supported_reasons reads it
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; the ops are {tuple(OPS)}")
    row, device = OPS[name], torch.device(device_type)
    if backend == "torch":
        return "torch"
    if backend != "auto":
        reasons = not_supported_reasons(backend, device)
        if not reasons:
            return backend if row[backend] is not None else "torch"
        message = f"backend {backend!r} cannot run on {device_type}: " + "; ".join(reasons)
        if strict:
            raise BackendUnavailable(message)
        _warn_fallback(f"{name}: {message}")
        return "torch"
    candidates = [b for b in _AUTO.get(device_type, ()) if row[b] is not None]
    for candidate in candidates:
        if not not_supported_reasons(candidate, device):
            return candidate
    if candidates:
        _warn_fallback("; ".join(not_supported_reasons(candidates[0], device)))
    return "torch"


def _constant_under_compile(fn: Callable) -> Callable:
    """torch.compiler.assume_constant_result(fn): torch.compile calls `fn` once at trace time and keeps its
    result as a constant (the dispatcher's caches and environment reads stay out of the graph: fullgraph-safe).
    Set here as the mark that decorator sets, because calling it imports torch._dynamo (and triton): 3-4 s
    added to every ``import nhl_fast`` (tests/test_house.py checks the mark is still the decorator's)."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_under_compile
def resolve(name: str, backend: Optional[str], device_type: str, strict: bool = True) -> str:
    """The backend that runs op `name` on tensors of `device_type`: ``backend`` (None: NHL_BACKEND, else auto)
    as the module docstring says; one of cpp, cuda, triton, torch."""
    env = os.environ
    return _resolve(name, backend or env.get("NHL_BACKEND", "auto"), device_type, strict, env.get("TRITON_INTERPRET"))


@functools.lru_cache(maxsize=None)
def triton_launcher(name: str) -> Callable:
    """kernels/<name>.py's <name>_triton (imported on first use: triton is optional)."""
    return getattr(importlib.import_module(f"nhl_fast.kernels.{name}"), f"{name}_triton")


def implementation(name: str, backend: str) -> Callable:
    """The callable of op `name` on a resolved `backend`; the op's torch form where the backend has no kernel."""
    row = OPS[name]
    entry = row[backend]
    if backend == "torch" or entry is None:
        return row["torch"]
    if backend == "triton" and name in _EAGER_LAUNCHER and not torch.compiler.is_compiling():
        return triton_launcher(name)
    return getattr(torch.ops.nhl_fast, entry)


def dispatch(name: str, device: torch.device, backend: Optional[str] = None, strict: bool = True) -> Callable:
    """The callable that runs op `name` on tensors of `device`: ``implementation(name, resolve(...))``."""
    return implementation(name, resolve(name, backend, device.type, strict))


# ---------------------------------------------------------------- build_info


def _kernel_registered(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"nhl_fast::{name}", key)


def _support(name: str, backend: str) -> str:
    """"available" when op `name` can run on `backend` on this machine, else why not."""
    entry = OPS[name][backend]
    label = {"cpp": "C++ (CPU)", "cuda": "CUDA", "triton": "Triton"}.get(backend, backend)
    if entry is None:
        instead = "its Triton kernel" if backend == "cuda" and OPS[name]["triton"] else "its torch form"
        return f"nhl_fast has no {label} kernel for {name} (those tensors run {instead})"
    if backend == "torch":
        return AVAILABLE
    if backend in ("cpp", "cuda"):  # the compiled op, with a kernel for the device's dispatch key
        key = "CPU" if backend == "cpp" else "CUDA"
        reasons = not_supported_reasons(backend, torch.device(key.lower()))
        if not reasons and not _kernel_registered(entry, key):
            reasons.append(f"the extension registers no {key} kernel for nhl_fast::{entry}")
        if backend == "cuda" and not torch.cuda.is_available():
            reasons.append("no CUDA device is visible")
    else:  # triton: on CUDA tensors, or on CPU tensors through the interpreter
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        reasons = not_supported_reasons("triton", device)
    return AVAILABLE if not reasons else "; ".join(reasons)


def _cpu_flags() -> Optional[set]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def simd_runtime(info: dict) -> dict:
    """The SIMD paths the C++ kernels take on this CPU now. The extension reports only the compile-time level
    ("simd"); this applies the C++ run-time rules to the CPU flags read from /proc/cpuinfo:
    top-k scan (csrc/kernels/avx512_dispatch.h records_avx512): AVX-512 when the build targets AVX2 on x86-64
    with GCC/clang and the CPU has avx512bw and avx512vbmi2, unless NHL_TOPK_NO_AVX512 is set (not "0");
    objective GEMMs (csrc/kernels/gemm_avx512.h, float32 only): AVX-512 when the CPU has avx512f, unless
    NHL_OBJECTIVE_KERNELS=generic; else BLAS."""
    compiled = info.get("simd", "generic")
    flags = _cpu_flags()
    x86_gnu = (platform.machine().lower() in ("x86_64", "amd64")
               and str(info.get("compiler", "")).startswith(("gcc", "clang")))
    if flags is None:
        return {"topk": compiled, "objective_gemm": "unknown (no /proc/cpuinfo)",
                "source": "Python: no /proc/cpuinfo to read; topk shows the compile-time level"}
    off = os.environ.get("NHL_TOPK_NO_AVX512", "")
    topk_avx512 = (x86_gnu and compiled == "avx2" and {"avx512bw", "avx512vbmi2"} <= flags
                   and not (off and off != "0"))
    gemm_avx512 = (x86_gnu and "avx512f" in flags and os.environ.get("NHL_OBJECTIVE_KERNELS") != "generic")
    return {"topk": "avx512" if topk_avx512 else compiled,
            "objective_gemm": "avx512 (float32)" if gemm_avx512 else "blas",
            "source": "Python: /proc/cpuinfo flags with the rules of csrc/kernels/avx512_dispatch.h and "
                      "gemm_avx512.h (the extension reports only its compile-time simd)"}


def build_info() -> dict:
    """What was compiled (backends, compiler, OpenMP threads, compile-time SIMD), the SIMD paths that run on
    this CPU (simd_runtime), triton, whether a CUDA device is visible, and ops: {op: {backend: "available" or
    why not}} for every op of the table."""
    ext, reason = extension()
    info = dict(ext.build_info()) if ext is not None else {"backends": [], "error": reason}
    info["triton"] = _triton_reason() or AVAILABLE
    info["cuda_device"] = torch.cuda.is_available()
    if ext is not None and "simd_runtime" not in info:
        info["simd_runtime"] = simd_runtime(info)
    info["ops"] = {name: {b: _support(name, b) for b in KERNEL_BACKENDS} for name in OPS}
    return info
