"""CPU-runnable checks of what the GPU paths depend on: the nvcc flags the build really uses,
the CUDA toolkit lookup, Triton launching on the tensors' GPU, and int64 offsets in the Triton
kernels (a large-stride case in the interpreter)."""
import importlib
import os
import pkgutil
import runpy
import stat

import pytest
import torch
import torch.utils.cpp_extension as cpp_extension

import nhl_fast  # noqa: F401  (registers every torch.ops.nhl_fast.* op, the Triton twins included)
from nhl_fast import reference as ref
from nhl_fast._dispatch import not_supported_reasons

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_triton_cpu = pytest.mark.skipif(bool(not_supported_reasons("triton", torch.device("cpu"))),
                                      reason="triton cannot run here (set TRITON_INTERPRET=1)")


def setup_module_namespace():
    return runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="nhl_setup_flags")


def test_nvcc_flags_have_no_fast_math():
    """--use_fast_math makes tanh approximate (~5e-4) and flushes subnormals (a tiny positive
    code would pack as 0 on CUDA, 1 on the CPU)."""
    flags = setup_module_namespace()["nvcc_flags"]()
    assert "--use_fast_math" not in flags and "-use_fast_math" not in flags
    assert not any("ftz=true" in f for f in flags)


def test_ci_compiles_cu_with_torch_flags(tmp_path):
    """The CI check compiles every .cu with torch's COMMON_NVCC_FLAGS (no implicit half/bf16
    conversions) plus setup.py's own: the flags that hid the build failure before."""
    check = runpy.run_path(os.path.join(ROOT, ".ci", "check_cuda_sources.py"), run_name="check")
    cmd = check["nvcc_command"]("x.cu", str(tmp_path / "x.o"), "/toolkit", None)
    for flag in cpp_extension.COMMON_NVCC_FLAGS + setup_module_namespace()["nvcc_flags"]():
        assert flag in cmd, flag
    assert cmd[0] == "/toolkit/bin/nvcc" and "-c" in cmd and "-Werror=all-warnings" in cmd
    cmd90 = check["nvcc_command"]("x.cu", "x.o", "/toolkit", ["90"])
    assert [f for f in cmd90 if "gencode" in f] == ["-gencode=arch=compute_90,code=sm_90"]


def test_cuda_home_follows_a_wrapper_nvcc(tmp_path, monkeypatch):
    """An `nvcc` on PATH that is a wrapper script outside the toolkit: the toolkit is where it execs."""
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    (toolkit / "bin").mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    assert setup_module_namespace()["cuda_home"]() == str(toolkit)  # before the /usr/local/cuda fallback


def triton_launchers():
    """Every public <op>_triton launcher in nhl_fast.kernels."""
    import nhl_fast.kernels as kernels
    found = []
    for info in pkgutil.iter_modules(kernels.__path__):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"nhl_fast.kernels.{info.name}")
        except ImportError as e:  # triton missing
            pytest.skip(str(e))
        found += [getattr(module, n) for n in dir(module) if n.endswith("_triton") and callable(getattr(module, n))
                  and getattr(getattr(module, n), "__module__", "") == module.__name__]
    return found


def test_every_triton_launcher_runs_on_its_tensors_device():
    launchers = triton_launchers()
    assert len(launchers) >= 8
    for fn in launchers:
        assert hasattr(fn, "__wrapped__"), f"{fn.__name__} is not wrapped by on_tensor_device"


class _OnCuda1(torch.Tensor):
    """A CPU tensor that claims to live on cuda:1 (what the device guard reads)."""

    @property
    def is_cuda(self):
        return True

    @property
    def device(self):
        return torch.device("cuda", 1)


def test_on_tensor_device_makes_the_tensors_gpu_current(monkeypatch):
    from nhl_fast.kernels import on_tensor_device
    entered = []

    class FakeDeviceGuard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.append("exit")

    monkeypatch.setattr(torch.cuda, "device", FakeDeviceGuard)
    seen = []
    launcher = on_tensor_device(lambda *a, **k: seen.append(list(entered)) or "result")
    t = torch.Tensor._make_subclass(_OnCuda1, torch.zeros(2))
    assert launcher(3, t, torch.zeros(1), bits=[8]) == "result"
    assert seen == [[torch.device("cuda", 1)]] and entered == [torch.device("cuda", 1), "exit"]
    entered.clear()
    assert launcher(torch.zeros(2)) == "result"  # CPU tensors (the interpreter): no guard
    assert entered == []


@needs_triton_cpu
@pytest.mark.parametrize("op", ["project_and_pack", "nested_projection"])
def test_triton_projection_int64_row_offsets(op):
    """x rows 2^30 elements apart: row 2 starts at element 2^31, past int32 (4 GiB of address space
    reserved, three rows touched). With int32 offsets row * stride wraps negative."""
    stride, k, rows = 1 << 30, 16, 3
    storage = torch.empty(stride * (rows - 1) + k, dtype=torch.float16)
    x = storage.as_strided((rows, k), (stride, 1))
    g = torch.Generator().manual_seed(0)
    x.copy_(torch.randn(rows, k, generator=g).half())
    w, b = torch.randn(70, k, generator=g).half(), torch.randn(70, generator=g).half()
    if op == "project_and_pack":
        got = torch.ops.nhl_fast.project_and_pack_triton(x, w, b)
        want = ref.project_and_pack(x.contiguous().float(), w.float(), b.float())
        # fp16 inputs accumulate in fp32 in both: equal signs except within rounding of zero
        z = x.contiguous().float() @ w.float().T + b.float()
        near_zero = ref.pack((z.abs() < 1e-2).float())
        assert torch.equal(got & ~near_zero, want & ~near_zero)
    else:
        u, z = torch.ops.nhl_fast.nested_projection_triton(x, w, b, "tanh")
        u_ref, z_ref = ref.nested_projection(x.contiguous().float(), w.float(), b.float(), "tanh")
        torch.testing.assert_close(z.float(), z_ref, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(u.float(), u_ref, rtol=2e-2, atol=2e-2)
    del storage


def test_gpu_check_script_dry_run_is_wired_into_ci():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "bench/gpu_check.sh --dry-run" in ci
    assert "check_cuda_sources.py" in ci
