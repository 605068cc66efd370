"""bench/bench_fidelity.py: its data, its recipe bookkeeping, and a --quick smoke run (results as data)."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_fidelity as B  # noqa: E402


def test_synthetic_and_occluded_data():
    d = B.synthetic(7, 0.5, per_class=4, queries=14, dim=16)
    assert (len(d.train), len(d.query), d.num_classes) == (28, 14, 7) and d.database is d.train
    assert torch.equal(d.train.labels.argmax(1), torch.arange(28) % 7)
    x, y = d.train.inputs, d.train.labels.argmax(1)
    centroids = torch.stack([x[y == c].mean(0) for c in range(7)])
    assert (torch.cdist(x, centroids).argmin(1) == y).float().mean() > 0.9  # clustered by class
    occ = B.occluded_digits()
    from nhl_fast.app.data import load_digits_data
    clean = load_digits_data()
    assert occ.train.inputs.shape == clean.train.inputs.shape and torch.equal(occ.train.labels, clean.train.labels)
    noise = occ.train.inputs - clean.train.inputs
    assert 0.3 < noise.std() < 1.5  # noise 0.5 plus the blanked pixels


def test_default_recipe_is_resolved_and_aliased():
    from nhl_fast.objective import DEFAULT_CENTERS, DEFAULT_WEIGHT_RULE

    eff = B.effective("default", "csq")
    assert eff["centers"] == DEFAULT_CENTERS and eff["weight_rule"] == DEFAULT_WEIGHT_RULE
    assert B.effective("faithful", "csq")["centers"] == "per_length"
    assert B.effective("faithful", "csq")["weight_rule"] == "dominance"
    assert B.effective("nested", "dpsh")["centers"] is None
    same = B.same_as_default("default", "csq", list(B.RECIPES))
    assert same and B.effective(same, "csq") == eff
    assert B.same_as_default("default", "csq", ["independent", "default"]) == ""  # nothing equal before it
    assert B.same_as_default("nested", "csq", list(B.RECIPES)) == ""


def test_quick_run_writes_rows(tmp_path):
    name = "fidelity_smoke_test"
    path = os.path.join(ROOT, "bench", "results", f"{name}_quick.json")
    try:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_fidelity.py"), "--quick",
                              "--jobs", "1", "--out", name, "--settings", "synth10-lo"],
                             capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        with open(path) as f:
            d = json.load(f)
    finally:
        if os.path.exists(path):
            os.remove(path)
    rows = d["rows"]
    assert tuple(d) == ("benchmark", "commit", "version", "torch", "machine", "date", "config", "rows")
    assert {(r["recipe"], r["bits"]) for r in rows} == {(rc, b) for rc in ("independent", "nested", "default")
                                                        for b in B.BITS}
    assert all(0 <= r["map"] <= 1 for r in rows)
    assert all("weight_mean" in r for r in rows if r["recipe"] != "independent")
    assert d["config"]["cells_done"] == d["config"]["cells"] == 1
