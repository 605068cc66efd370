"""One house: every op has one schema, one reference function, one fake, a CPU kernel and one row in the op
table (nhl_fast._dispatch.OPS), and `import nhl_fast` alone makes every torch.ops.nhl_fast.* usable."""
import ast
import inspect
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import nhl_fast as nf
from nhl_fast import _dispatch, _ops, reference
from nhl_fast._dispatch import OPS, not_supported_reasons

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_EXT = not not_supported_reasons("cpp", torch.device("cpu"))
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="the C++ extension is not built")
EXPECTED_OPS = {"pack", "unpack", "hamming", "topk", "nested_projection", "project_and_pack", "distance_histogram",
                "index_ap", "tie_ap", "cascade_distill", "nhl_objective", "csq_grads", "sorted_nce",
                "sorted_nce_backward"}


def fresh_python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NHL_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ------------------------------------------------------------------ sample inputs: (good args, bad args, error)


def _packed(n, words, seed):
    return torch.randint(-2**62, 2**62, (n, words), generator=torch.Generator().manual_seed(seed))


def samples():
    gen = torch.Generator().manual_seed(0)
    q, db = _packed(3, 2, 1), _packed(7, 2, 2)
    ql, dl = torch.randint(0, 3, (3,), generator=gen), torch.randint(0, 3, (7,), generator=gen)
    x, w, b = torch.randn(4, 6, generator=gen), torch.randn(70, 6, generator=gen), torch.randn(70, generator=gen)
    tot, rel = reference.distance_histogram(q, db, ql, dl, [8, 70])
    bits = [3, 8, 13]
    u = torch.randn(5, 13, generator=gen).tanh()
    grads, losses = torch.randn(5, 24, generator=gen), torch.rand(3, generator=gen)
    xin = torch.randn(5, 4, generator=gen)
    labels = (torch.rand(5, 4, generator=gen) < 0.5).float()
    centers = torch.where(torch.rand(4, 24, generator=gen) < 0.5, -1.0, 1.0)
    tie = torch.where(torch.rand(24, generator=gen) < 0.5, -1.0, 1.0)
    return {
        "pack": ((torch.randn(5, 70, generator=gen),), (torch.ones(5, 70, dtype=torch.int32),), TypeError),
        "unpack": ((db, 70), (db, 200), ValueError),
        "hamming": ((q, db, [8, 70]), (q, db, [16, 8]), ValueError),
        "topk": ((q, db, 4, [8, 70]), (q, db, 8, [8, 70]), ValueError),
        "nested_projection": ((x, w, b, "tanh"), (x, w, b, "relu"), ValueError),
        "project_and_pack": ((x, w, b), (x, w[:, :5], b), ValueError),
        "distance_histogram": ((q, db, ql, dl, [8, 70]), (q, db, ql.float(), dl, [8, 70]), TypeError),
        "index_ap": ((q, db, ql, dl, [8, 70], 3), (q, db, ql, dl, [8, 70], 0), ValueError),
        "tie_ap": ((tot, rel, None), (tot, rel.int(), None), TypeError),
        "cascade_distill": ((u, bits), (u, [3, 8, 12]), ValueError),
        "nhl_objective": ((u, grads, losses, xin, None, bits, 1.0, 0.1, False, True),
                          (u, grads, losses[:2], xin, None, bits, 1.0, 0.1, False, True), ValueError),
        "csq_grads": ((u, labels, centers, tie, bits, 1e-4), (u, labels, centers, tie[1:], bits, 1e-4), ValueError),
        "sorted_nce": ((u, u.flip(0), xin, xin.flip(0), bits, 2, 0.1, [0.5, 1.0, 2.0], False),
                       (u, u.flip(0), xin, xin.flip(0), bits, 5, 0.1, [0.5, 1.0, 2.0], False), ValueError),
        "sorted_nce_backward": ((losses, u, u.flip(0), xin, xin.flip(0), bits, 2, 0.1, [0.5, 1.0, 2.0], True),
                                (losses, u, u.flip(0), xin, xin.flip(0), bits, 2, 0.1, [0.5, 1.0], True),
                                ValueError),
    }


def _fake(args, mode):
    return [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]


def _forms(name):
    """The op and its Triton twin: one fake serves both."""
    return [name] + ([OPS[name]["triton"]] if OPS[name]["triton"] else [])


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


# ------------------------------------------------------------------ the table


def test_the_table_has_every_op_and_every_backend():
    assert set(OPS) == EXPECTED_OPS
    assert set(samples()) == EXPECTED_OPS
    for name, row in OPS.items():
        assert set(row) == {"cpp", "cuda", "triton", "torch"}, name
        assert row["torch"] is getattr(reference, name), name  # the reference function is the spec
        assert row["cpp"] == name, name  # one op, one name: nhl_fast::<op>, <op>_cpu, <op>_cuda, <op>_triton
        assert row["cuda"] in (None, name) and row["triton"] in (None, f"{name}_triton"), name
        assert name in _ops.FAKES, name


@needs_ext
def test_every_library_op_has_a_row():
    """Every op the extension and _ops register in the nhl_fast namespace is a row (or a row's Triton twin)."""
    registered = {n.split("::", 1)[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("nhl_fast::")}
    twins = {row["triton"] for row in OPS.values() if row["triton"]}
    assert registered == set(OPS) | twins


def test_import_alone_registers_every_op_in_a_fresh_process():
    names = sorted(set(OPS) | {row["triton"] for row in OPS.values() if row["triton"]})
    code = ("import sys, torch, nhl_fast\n"
            f"names = {names!r}\n"
            "need_ext = set(" + repr(sorted(OPS)) + ")\n"
            "have = nhl_fast._dispatch.extension()[0] is not None\n"
            "for n in names:\n"
            "    if n in need_ext and not have:\n"
            "        continue\n"
            "    print(n, getattr(torch.ops.nhl_fast, n).default._schema)\n"
            "print('triton imported:', 'triton' in sys.modules, 'dynamo imported:', 'torch._dynamo' in sys.modules)\n")
    out = fresh_python(code)
    if HAS_EXT:
        for n in names:
            assert f"nhl_fast::{n}(" in out, n
    assert "triton imported: False dynamo imported: False" in out  # no Triton, no Dynamo at import (seconds)


NO_EXTENSION = """
import sys, warnings
class Block:  # nhl_fast._C fails to import, as when it was never built
    def find_spec(self, name, path=None, target=None):
        if name == "nhl_fast._C":
            raise ImportError("blocked by the test")
sys.meta_path.insert(0, Block())
import torch, nhl_fast as nf
print("cpp:", nf.build_info()["ops"]["hamming"]["cpp"])
print("twin:", torch.ops.nhl_fast.hamming_triton.default._schema)
q = nf.pack(torch.randn(3, 64))
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    print("shape:", tuple(nf.hamming(q, q).shape), "warnings:", len(seen))
"""


def test_without_the_extension_import_works_and_says_why():
    env = {k: v for k, v in os.environ.items() if k not in ("NHL_REQUIRE_EXT", "NHL_BACKEND")}
    out = subprocess.run([sys.executable, "-c", NO_EXTENSION], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "cpp: the compiled extension nhl_fast._C failed to import (blocked by the test)" in out.stdout
    assert "twin: nhl_fast::hamming_triton(" in out.stdout
    assert "shape: (4, 3, 3) warnings: 0" in out.stdout  # the reference runs; pack already warned, once
    assert out.stderr.count("using the slow torch reference") == 1
    assert "<string>:11" in out.stderr  # the warning points at the user's line (nf.pack)
    env["NHL_REQUIRE_EXT"] = "1"
    out = subprocess.run([sys.executable, "-c", NO_EXTENSION], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "NHL_REQUIRE_EXT=1" in out.stderr


@needs_ext
def test_the_one_line_from_the_issue():
    fresh_python("import nhl_fast, torch; torch.ops.nhl_fast.hamming")


@needs_ext
def test_the_schemas_name_the_module_of_their_fakes():
    # csrc/nhl_ops.cpp's m.set_python_module: torch checks, at a fake's first call, that it was registered
    # from nhl_fast._ops (a fake registered elsewhere raises), and names the module when one is missing
    for name, row in OPS.items():
        stub = torch._C._dispatch_pystub(f"nhl_fast::{row['cpp']}", "")
        assert stub is not None and stub[0] == "nhl_fast._ops", name
    out = fresh_python("import torch, nhl_fast\n"
                       "from torch._subclasses.fake_tensor import FakeTensorMode\n"
                       "with FakeTensorMode():\n"
                       "    q = torch.empty(3, 2, dtype=torch.int64)\n"
                       "    print(tuple(torch.ops.nhl_fast.hamming(q, q, [8, 128]).shape))\n")
    assert out.strip() == "(2, 3, 3)"


@needs_ext
@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_every_op_has_a_cpu_kernel_and_a_triton_twin_of_the_same_schema(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"nhl_fast::{name}", "CPU")
    twin = OPS[name]["triton"]
    if twin:
        compiled = str(getattr(torch.ops.nhl_fast, name).default._schema)
        assert str(getattr(torch.ops.nhl_fast, twin).default._schema) == compiled.replace(name, twin, 1)
        assert _ops.TRITON_SCHEMAS[name] == compiled.split(name, 1)[1]


# ------------------------------------------------------------------ fakes


@needs_ext
@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_fake_matches_the_cpu_kernel(name):
    good, _, _ = samples()[name]
    real = _flat(getattr(torch.ops.nhl_fast, name)(*good))
    for form in _forms(name):  # fake tensors never reach a kernel
        with FakeTensorMode() as mode:
            fake = _flat(getattr(torch.ops.nhl_fast, form)(*_fake(good, mode)))
        assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real], form


@needs_ext
@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_fake_rejects_what_the_kernel_rejects(name):
    _, bad, error = samples()[name]
    with pytest.raises(error):
        getattr(torch.ops.nhl_fast, name)(*bad)
    for form in _forms(name):
        with FakeTensorMode() as mode, pytest.raises(error):
            getattr(torch.ops.nhl_fast, form)(*_fake(bad, mode))


def _glue_error_cases():
    """tests/test_op_errors.py's catalogue of bad inputs the C++ glue (csrc/checks.h) rejects."""
    try:
        from test_op_errors import CASES, _inputs
    except ImportError:
        return []
    return [pytest.param(op, make, exc, _inputs, id=f"{op}-{i}") for i, (op, make, exc, _) in enumerate(CASES)]


@needs_ext
@pytest.mark.parametrize("name, make, error, inputs", _glue_error_cases())
def test_fakes_reject_every_bad_input_of_the_glue_catalogue(name, make, error, inputs):
    """torch.compile and opcheck see the C++ glue's errors, of the same type, before any kernel runs."""
    for form in _forms(name):
        with FakeTensorMode() as mode, pytest.raises(error):
            getattr(torch.ops.nhl_fast, form)(*_fake(make(inputs()), mode))


@needs_ext
@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_opcheck(name, one_thread):
    """Schema, autograd registration, fake vs kernel, and AOT dispatch with dynamic shapes (the fakes' checks
    as symbolic asserts)."""
    good, _, _ = samples()[name]
    torch.library.opcheck(getattr(torch.ops.nhl_fast, name).default, good)


# ------------------------------------------------------------------ the dispatcher


def test_dispatch_is_the_only_dispatcher():
    """No library module picks a kernel itself: torch.ops.nhl_fast appears only in _dispatch and _ops, and
    _dispatch does not import _ops (no circle)."""
    lib = os.path.join(ROOT, "nhl_fast")
    for folder, _, files in os.walk(lib):
        if os.path.relpath(folder, lib).startswith("app"):
            continue
        for f in files:
            path = os.path.join(folder, f)
            if f.endswith(".py") and f not in ("_dispatch.py", "_ops.py"):
                nodes = ast.walk(ast.parse(open(path).read()))
                assert not any(isinstance(n, ast.Attribute) and ast.unparse(n) == "torch.ops.nhl_fast"
                               for n in nodes), path
    tree = ast.parse(inspect.getsource(_dispatch))
    imported = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for a in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {"nhl_fast._ops", "_ops"} & imported


def test_resolve_keeps_each_ops_behaviour(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("NHL_BACKEND", raising=False)
    if HAS_EXT:
        for name in OPS:  # auto on CPU tensors: the C++ kernel of every op
            assert _dispatch.resolve(name, None, "cpu") == "cpp"
    # an explicit backend without a kernel for the op runs the torch form; one that cannot run raises (strict)
    # or falls back to the reference (the objective's ops)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if not not_supported_reasons("triton", cpu):
        assert _dispatch.resolve("tie_ap", "triton", "cpu") == "torch"
        assert _dispatch.resolve("hamming", "triton", "cpu") == "triton"
    if "cuda" not in _dispatch._compiled_backends():
        with pytest.raises(nf.BackendUnavailable, match="cuda"):
            _dispatch.resolve("hamming", "cuda", "cpu")
        _dispatch._resolve.cache_clear()  # warned once per process: forget earlier tests' warnings
        _dispatch._warn_fallback.cache_clear()
        with pytest.warns(RuntimeWarning, match="nhl_objective"):
            assert _dispatch.resolve("nhl_objective", "cuda", "cpu", strict=False) == "torch"
    assert _dispatch.dispatch("csq_grads", cpu, "torch") is reference.csq_grads
    with pytest.raises(ValueError, match="backend="):
        _dispatch.resolve("hamming", "fpga", "cpu")


def test_resolve_is_a_trace_time_constant():
    """resolve carries the mark torch.compiler.assume_constant_result sets (set by hand: the decorator imports
    torch._dynamo)."""
    def probe():
        return 0

    torch.compiler.assume_constant_result(probe)
    marks = {k for k in vars(probe)}
    assert marks and all(getattr(_dispatch.resolve, k) == getattr(probe, k) for k in marks)


# ------------------------------------------------------------------ build_info


def test_build_info_reports_every_op_on_every_backend():
    info = nf.build_info()
    for key in ("backends", "triton", "cuda_device", "ops"):
        assert key in info
    assert set(info["ops"]) == set(OPS)
    for name, row in info["ops"].items():
        assert set(row) == {"cpp", "cuda", "triton", "torch"}
        assert row["torch"] == "available"
        assert all(isinstance(v, str) and v for v in row.values())
        if OPS[name]["cuda"] is None:
            assert "no CUDA kernel" in row["cuda"]
        if HAS_EXT:
            assert row["cpp"] == "available"
        if not torch.cuda.is_available():
            assert row["cuda"] != "available"
    if HAS_EXT:
        for key in ("compiler", "openmp_threads", "simd", "simd_runtime"):
            assert key in info
        assert set(info["simd_runtime"]) >= {"topk", "objective_gemm"}


def test_simd_runtime_follows_the_cpu_and_the_switches(monkeypatch):
    info = {"simd": "avx2", "compiler": "gcc 12"}
    monkeypatch.setattr(_dispatch, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512bw", "avx512vbmi2"})
    monkeypatch.setattr(_dispatch.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("NHL_TOPK_NO_AVX512", raising=False)
    monkeypatch.delenv("NHL_OBJECTIVE_KERNELS", raising=False)
    got = _dispatch.simd_runtime(info)
    assert got["topk"] == "avx512" and got["objective_gemm"].startswith("avx512")
    monkeypatch.setenv("NHL_TOPK_NO_AVX512", "1")
    monkeypatch.setenv("NHL_OBJECTIVE_KERNELS", "generic")
    got = _dispatch.simd_runtime(info)
    assert got["topk"] == "avx2" and got["objective_gemm"] == "blas"
    monkeypatch.delenv("NHL_TOPK_NO_AVX512")
    monkeypatch.setattr(_dispatch, "_cpu_flags", lambda: {"avx2", "avx512f"})  # no BW/VBMI2: AVX2 records
    assert _dispatch.simd_runtime(info)["topk"] == "avx2"
