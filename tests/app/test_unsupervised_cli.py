"""`nhl-fast train --unsupervised` and `nhl-fast compare --unsupervised` end to end on tiny settings."""
import json

import numpy as np
import pytest
import torch

from nhl_fast.app.cli import main
from nhl_fast.app.data import load_digits_data
from nhl_fast.app.unsupervised import baseline_maps, parse_loss_opt


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _feature_data(root, n=120, dim=16, classes=4):
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = (rng.normal(size=(classes, dim))[y] * 3 + rng.normal(size=(n, dim))).astype(np.float32)
    np.savez(root / "feats.npz", features=x, labels=y)
    rows = list(range(n))
    (root / "split.json").write_text(json.dumps({"train": rows[20:], "query": rows[:20], "database": rows[20:]}))
    return str(root / "feats.npz")


@pytest.mark.parametrize("loss", ["cibhash", "greedyhash", "bihalf"])
def test_train_unsupervised_on_digits(tmp_path, capsys, loss):
    run = tmp_path / "run"
    rc, out, err = _run(["train", "--unsupervised", "--base-loss", loss, "--epochs", "1", "--bits", "8,16",
                         "--batch-size", "256", "--quiet", "--out", str(run)], capsys)
    assert rc == 0, err
    assert "| digits | 8 bits | 16 bits |" in out
    res = json.loads((run / "metrics.json").read_text())
    assert res["config"]["unsupervised"] and res["config"]["base_loss"] == loss
    assert all(0 < m <= 1 for m in res["final"]["map"])
    # resumable like a supervised run (the views draw from the saved global RNG)
    rc, _, err = _run(["train", "--resume", str(run / "last.safetensors"), "--epochs", "2", "--quiet"], capsys)
    assert rc == 0, err
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_train_unsupervised_memory_and_loss_options(tmp_path, capsys):
    data = _feature_data(tmp_path)
    run = tmp_path / "frun"
    rc, _, err = _run(["train", "--data", data, "--unsupervised", "--base-loss", "cibhash", "--epochs", "2",
                       "--bits", "8,16", "--memory", "64", "--warmup-epochs", "1", "--loss-opt", "temperature=0.2",
                       "--loss-opt", "debiased=0.1", "--quiet", "--out", str(run)], capsys)
    assert rc == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["loss_opts"] == {"temperature": 0.2, "debiased": 0.1} and cfg["memory"] == 64
    from nhl_fast.app.checkpoint import load_checkpoint

    ck = load_checkpoint(str(run / "last.safetensors"))
    assert int(ck.objective["base.memory.filled"]) == 64  # 100 training rows pushed, ring of 64


def test_train_sortednce_with_the_code_memory(tmp_path, capsys):
    run = tmp_path / "srun"
    rc, out, err = _run(["train", "--unsupervised", "--base-loss", "sortednce", "--memory", "512", "--epochs", "1",
                         "--bits", "8,16", "--batch-size", "256", "--quiet", "--out", str(run)], capsys)
    assert rc == 0, err
    assert "| digits | 8 bits | 16 bits |" in out
    res = json.loads((run / "metrics.json").read_text())
    assert res["config"]["memory"] == 512 and all(0 < m <= 1 for m in res["final"]["map"])
    from nhl_fast.app.checkpoint import load_checkpoint

    ck = load_checkpoint(str(run / "last.safetensors"))
    assert int(ck.objective["base.memory.filled"]) == 512
    assert ck.objective["base.memory.codes"].shape == (512, 16) and ck.objective["base.memory.latents"].shape[0] == 512


def test_unsupervised_option_errors(tmp_path, capsys):
    rc, _, err = _run(["train", "--unsupervised", "--base-loss", "csq", "--epochs", "1", "--quiet",
                       "--out", str(tmp_path / "a")], capsys)
    assert rc == 2 and "supervised" in err and "cibhash" in err
    rc, _, err = _run(["train", "--base-loss", "cibhash", "--epochs", "1", "--quiet", "--out", str(tmp_path / "b")],
                      capsys)
    assert rc == 2 and "add --unsupervised" in err
    rc, _, err = _run(["train", "--unsupervised", "--base-loss", "greedyhash", "--memory", "8", "--epochs", "1",
                       "--quiet", "--out", str(tmp_path / "c")], capsys)
    assert rc == 2 and "memory" in err
    with pytest.raises(SystemExit) as e:  # argparse: one line, status 2
        main(["train", "--unsupervised", "--base-loss", "cibhash", "--loss-opt", "tau", "--quiet"])
    assert e.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err
    rc, _, err = _run(["compare", "--methods", "itq", "--quiet"], capsys)
    assert rc == 2 and "unknown ['itq']" in err
    assert parse_loss_opt("a=3") == ("a", 3) and parse_loss_opt("a=0.5") == ("a", 0.5)
    assert parse_loss_opt("a=true") == ("a", True) and parse_loss_opt("a=x") == ("a", "x")


def test_compare_unsupervised_with_baselines(tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    rc, out, err = _run(["compare", "--unsupervised", "--base-loss", "greedyhash", "--epochs", "1", "--bits", "8,16",
                         "--seeds", "2", "--batch-size", "256", "--out", str(out_dir), "--quiet"], capsys)
    assert rc == 0, err
    for m in ("independent", "nhl+adaptive+distill", "lsh", "itq"):
        assert f"| {m} |" in out
    res = json.loads((out_dir / "compare.json").read_text())
    assert set(res["methods"]) == {"independent", "nhl+adaptive+distill", "lsh", "itq"}
    data = load_digits_data()
    for m in ("lsh", "itq"):  # the table holds what the baselines give for each seed
        for s in (0, 1):
            want = baseline_maps(m, data, (8, 16), s)
            assert res["methods"][m]["per_seed"][str(s)]["map"] == pytest.approx([want[8], want[16]])
    assert res["methods"]["itq"]["per_seed"]["0"]["map"] != res["methods"]["itq"]["per_seed"]["1"]["map"]


def test_itq_longer_than_the_input_is_left_out(tmp_path, capsys):
    data = _feature_data(tmp_path)  # 16 features: ITQ gives 8 and 16 bits, not 32
    out_dir = tmp_path / "cmp"
    rc, out, err = _run(["compare", "--data", data, "--unsupervised", "--base-loss", "greedyhash", "--epochs", "1",
                         "--bits", "8,16,32", "--seeds", "1", "--methods", "itq,lsh", "--out", str(out_dir),
                         "--quiet"], capsys)
    assert rc == 0, err
    res = json.loads((out_dir / "compare.json").read_text())
    assert res["methods"]["itq"]["map_mean"][2] is None and res["methods"]["lsh"]["map_mean"][2] is not None
    assert "—" in out


def test_bench_unsupervised_compare_quick(tmp_path, monkeypatch):
    """The benchmark's --quick smoke run, in process, its results redirected to tmp_path."""
    import importlib.util
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.syspath_prepend(os.path.join(root, "bench"))
    import _common

    monkeypatch.setattr(_common, "RESULTS", str(tmp_path))
    spec = importlib.util.spec_from_file_location("bench_unsup_under_test",
                                                  os.path.join(root, "bench", "bench_unsupervised_compare.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "write_results", _common.write_results)
    monkeypatch.setattr(sys, "argv", ["bench", "--quick", "--losses", "nope,greedyhash", "--threads", "1"])
    torch_threads = torch.get_num_threads()
    try:
        mod.main()
    finally:
        torch.set_num_threads(torch_threads)
    res = json.loads((tmp_path / "bench_unsupervised_compare_quick.json").read_text())
    methods = {(r["method"], r["loss"]) for r in res["rows"]}
    assert ("skipped", "nope") in methods and ("raw_pixels", None) in methods
    assert {("itq", None), ("lsh", None)} <= methods
    trained = [r for r in res["rows"] if r["loss"] == "greedyhash"]
    assert sorted((r["method"], r["bits"]) for r in trained) == [("independent", 8), ("independent", 16),
                                                                 ("nested", 8), ("nested", 16)]
    assert all(0 < r["map"] <= 1 for r in trained)
