"""Backend choice for every op: NHL_BACKEND=auto|cuda|triton|cpp|torch or backend=.

auto: CUDA tensors -> the CUDA extension (Triton when it was not compiled);
CPU tensors -> the C++ extension (the torch reference when it is missing, with
one warning, unless NHL_REQUIRE_EXT=1 makes that an error). A backend that
cannot run raises BackendUnavailable listing why, like xformers' not_supported_reasons.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import warnings
from typing import Callable

import torch

BACKENDS = ("auto", "cuda", "triton", "cpp", "torch")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run these inputs; the message lists the reasons."""


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


def build_info() -> dict:
    """What was compiled (backends, compiler, OpenMP threads, SIMD) and what can run here."""
    ext, reason = extension()
    info = dict(ext.build_info()) if ext is not None else {"backends": [], "error": reason}
    info["triton"] = _triton_reason() or "available"
    info["cuda_device"] = torch.cuda.is_available()
    return info


def not_supported_reasons(backend: str, device: torch.device) -> list[str]:
    """Why `backend` cannot run on tensors of `device` ([] when it can)."""
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


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"nhl_fast: using the slow torch reference: {reason}", RuntimeWarning, stacklevel=3)


@torch.compiler.assume_constant_result  # torch.compile: decided once at trace time (fullgraph-safe)
def choose(backend: str | None, device: torch.device) -> str:
    """The backend to run on `device`: explicit argument, then NHL_BACKEND, then auto."""
    backend = backend or os.environ.get("NHL_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend != "auto":
        reasons = not_supported_reasons(backend, device)
        if reasons:
            raise BackendUnavailable(f"backend {backend!r} cannot run on {device}: " + "; ".join(reasons))
        return backend
    preferred = ("cuda", "triton") if device.type == "cuda" else ("cpp",)
    for candidate in preferred:
        if not not_supported_reasons(candidate, device):
            return candidate
    _warn_fallback("; ".join(not_supported_reasons(preferred[0], device)))
    return "torch"


def op(name: str, backend: str) -> Callable:
    """The callable implementing op `name` on `backend` (compiled ops dispatch on device)."""
    if backend == "torch":
        from nhl_fast import reference

        return getattr(reference, name)
    import nhl_fast.ops  # noqa: F401  (registers fakes, autograd and the Triton ops)

    if backend == "triton":
        return getattr(torch.ops.nhl_fast, f"{name}_triton")
    if not torch.compiler.is_compiling():  # importlib is not traceable; nhl_fast.ops loaded it already
        extension()
    return getattr(torch.ops.nhl_fast, name)


@functools.lru_cache(maxsize=None)  # per training step, twice: the lookups cost more than the kernels' setup
def _cpp_serves_cached(device_type: str, backend: str) -> bool:
    import nhl_fast.ops  # noqa: F401  (registers the fakes)

    return (device_type == "cpu" and backend in ("auto", "cpp")
            and not not_supported_reasons("cpp", torch.device(device_type)))


@torch.compiler.assume_constant_result  # decided once at trace time (fullgraph-safe)
def _cpp_serves(device: torch.device) -> bool:
    return _cpp_serves_cached(device.type, os.environ.get("NHL_BACKEND", "auto"))


# The objective's ops that have a Triton form (kernels/<name>.py), served on CUDA tensors.
_TRITON_OBJECTIVE_OPS = ("cascade_distill", "nhl_objective", "csq_grads")


@functools.lru_cache(maxsize=None)
def _triton_serves_cached(device_type: str, backend: str, interpret: str | None) -> bool:
    # `interpret` (TRITON_INTERPRET) is only part of the cache key: not_supported_reasons reads it
    if device_type == "cuda":
        wanted = backend in ("auto", "triton")
    else:  # CPU tensors run Triton only through the interpreter, and only when asked for (the tests)
        wanted = device_type == "cpu" and backend == "triton"
    if not wanted or not_supported_reasons("triton", torch.device(device_type)):
        return False
    import nhl_fast.ops  # noqa: F401  (registers nhl_fast::<name>_triton for torch.compile)

    return True


@torch.compiler.assume_constant_result  # decided once at trace time (fullgraph-safe)
def _triton_serves(device: torch.device) -> bool:
    env = os.environ
    return _triton_serves_cached(device.type, env.get("NHL_BACKEND", "auto"), env.get("TRITON_INTERPRET"))


@functools.lru_cache(maxsize=None)
def _triton_launcher(name: str) -> Callable:
    return getattr(importlib.import_module(f"nhl_fast.kernels.{name}"), f"{name}_triton")


def cpp_or_reference(name: str, device: torch.device) -> Callable:
    """Op `name` of the objective (cascade_distill, nhl_objective, csq_grads): the C++ kernel on CPU tensors when
    the extension is built and NHL_BACKEND allows it (auto, cpp); the Triton kernels (kernels/<name>.py) on CUDA
    tensors when triton can run and NHL_BACKEND is auto or triton, and on CPU tensors for an explicit
    NHL_BACKEND=triton under TRITON_INTERPRET=1 (how the tests run them); else its torch spec reference.<name>
    (any device, and NHL_BACKEND=torch).

    The Triton form is the raw launcher in eager mode (no custom-op dispatch per call) and the custom op
    nhl_fast::<name>_triton (nhl_fast/ops.py, with a fake) under torch.compile, which traces it as one node."""
    if _cpp_serves(device):
        return getattr(torch.ops.nhl_fast, name)
    if name in _TRITON_OBJECTIVE_OPS and _triton_serves(device):
        if torch.compiler.is_compiling():
            return getattr(torch.ops.nhl_fast, f"{name}_triton")
        return _triton_launcher(name)
    from nhl_fast import reference

    return getattr(reference, name)
