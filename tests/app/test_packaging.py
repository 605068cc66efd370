"""The library / app split: `import nhl_fast` needs torch and numpy only; the command and its
extra dependencies (the `app` extra) live in nhl_fast.app."""
import os
import subprocess
import sys

import pytest
import torch

import nhl_fast as nf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP_ONLY = ("tqdm", "safetensors", "sklearn", "matplotlib")


def test_the_library_imports_no_app_module_and_no_app_dependency():
    code = ("import sys, numpy, torch\n"
            "torch_own = set(sys.modules)\n"  # torch.hub imports tqdm itself when it is there
            "import nhl_fast, nhl_fast.losses\n"
            f"bad = sorted(m for m in set(sys.modules) - torch_own if m.startswith('nhl_fast.app') "
            f"or m.split('.')[0] in {APP_ONLY!r})\n"
            "print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_library_runs_without_the_app_extra():
    """Blocking the app's packages (as a bare `pip install nhl-fast` would leave them out)."""
    block = "".join(f"sys.modules[{m!r}] = None\n" for m in APP_ONLY)
    code = (f"import sys\n{block}import torch, nhl_fast as nf\n"
            "p = nf.pack(torch.randn(50, 16)); d, i = nf.topk(p[:3], p, 4, bits=(8, 16))\n"
            "print(tuple(d.shape))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(2, 3, 4)"


def test_index_save_without_safetensors_names_the_extra(tmp_path, monkeypatch):
    index = nf.NestedHammingIndex(bits=(8, 16))
    index.add(nf.pack(torch.randn(5, 16)))
    for name in ("safetensors", "safetensors.torch"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install safetensors .*nhl-fast\[app\]"):
        index.save(str(tmp_path / "i.safetensors"))
    with pytest.raises(ImportError, match=r"nhl-fast\[app\]"):
        nf.NestedHammingIndex.load(str(tmp_path / "i.safetensors"))


def test_pyproject_keeps_the_app_dependencies_in_the_app_extra():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["dependencies"] == ["torch>=2.6", "numpy"]
    extras = project["optional-dependencies"]
    app = set(extras["app"])
    assert app == {"tqdm", "safetensors", "scikit-learn", "matplotlib"}
    assert app <= set(extras["test"]) and app <= set(extras["bench"])  # CI installs .[test] and runs these tests
    module, func = project["scripts"]["nhl-fast"].split(":")
    assert module == "nhl_fast.app.cli"
    import importlib

    assert callable(getattr(importlib.import_module(module), func))
