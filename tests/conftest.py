import os

import pytest
import torch

import nhl_fast
from nhl_fast._dispatch import not_supported_reasons

CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available() and "cuda" in nhl_fast.build_info().get("backends", [])


def cpu_backends():
    """Backends that can run CPU tensors here: torch, cpp, and triton under TRITON_INTERPRET=1."""
    return [b for b in ("torch", "cpp", "triton") if not not_supported_reasons(b, CPU)]


def gpu_backends():
    if not torch.cuda.is_available():
        return []
    dev = torch.device("cuda")
    return [b for b in ("cuda", "triton") if not not_supported_reasons(b, dev)]


def backend_params():
    """(backend, device) pairs to test every kernel on: every CPU backend, plus GPU ones when lent."""
    params = [pytest.param(b, "cpu", id=f"{b}-cpu") for b in cpu_backends()]
    params += [pytest.param(b, "cuda", id=f"{b}-cuda", marks=pytest.mark.cuda) for b in gpu_backends()]
    return params


@pytest.fixture
def one_thread():
    """Tiny ops: one thread avoids OpenMP spin-waiting on a busy shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_report_header(config):
    return [f"nhl_fast build: {nhl_fast.build_info()}", f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}"]


@pytest.fixture
def bench_common(tmp_path, monkeypatch):
    """The source tree's bench/_common.py (the benchmarks' harness), writing its results to tmp_path."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "_common.py")
    spec = importlib.util.spec_from_file_location("bench_common_under_test", path)
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    return common
