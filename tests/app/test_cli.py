"""The `nhl-fast` command end to end on tiny settings, checkpoints, resume, Ctrl-C, plots, bench."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import nhl_fast as nf
from nhl_fast.app.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nhl_fast.app.cli import main, parse_bits
from nhl_fast.app.model import build_model

PNG = b"\x89PNG\r\n\x1a\n"


def _feature_data(root, n=120, dim=16, classes=4):
    """Class-clustered features + labels + split: a tiny feature-mode data set."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    centers = rng.normal(size=(classes, dim)) * 3
    x = (centers[y] + rng.normal(size=(n, dim))).astype(np.float32)
    np.savez(root / "feats.npz", features=x, labels=y)
    rows = list(range(n))
    (root / "split.json").write_text(json.dumps({"train": rows[20:], "query": rows[:20], "database": rows[20:]}))
    return str(root / "feats.npz")


def _check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG, path
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_eval_encode_end_to_end_on_digits(tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, _ = _run(["train", "--epochs", "1", "--backbone", "mlp", "--bits", "8,16,40", "--quiet",
                       "--out", str(run)], capsys)
    assert rc == 0
    assert "| digits | 8 bits | 16 bits | 40 bits |" in out and "| mAP@all |" in out and "| P@r2 |" in out
    for name in ("best.safetensors", "last.safetensors", "config.json", "metrics.json", "map_vs_bits.png",
                 "pr_curves.png", "loss.png", "weights.png"):
        assert (run / name).exists(), name
    for png in ("map_vs_bits.png", "pr_curves.png", "loss.png", "weights.png"):
        _check_png(run / png)
    metrics = json.loads((run / "metrics.json").read_text())
    final = metrics["final"]
    assert final["bits"] == [8, 16, 40] and len(final["map"]) == 3
    assert all(0.1 < m <= 1.0 for m in final["map"])  # 10 classes: chance is ~0.1
    assert len(final["pr_curves"]["40"]["precision"]) == 41
    assert len(metrics["history"]) == 1 and len(metrics["history"][0]["weights"]) == 3

    # eval of the best checkpoint on the same data reproduces the training run's final numbers
    rc, out, _ = _run(["eval", str(run / "best.safetensors"), "--quiet"], capsys)
    assert rc == 0 and "mAP@all (index)" in out
    ev = json.loads((run / "eval.json").read_text())
    assert ev["map"] == pytest.approx(final["map"], abs=1e-12)
    assert ev["precision_at_radius"] == pytest.approx(final["precision_at_radius"], abs=1e-12)
    _check_png(run / "eval_pr_curves.png")
    rc, _, _ = _run(["eval", str(run), "--topk", "100", "--ties", "average", "--out", str(tmp_path / "e.json"),
                     "--quiet"], capsys)
    ev100 = json.loads((tmp_path / "e.json").read_text())
    assert rc == 0 and ev100["topk"] == 100 and ev100["ties"] == "average"

    # encode: packed codes of the database = pack(sign) of the model's projection, in database order
    codes_path = tmp_path / "codes.safetensors"
    rc, out, _ = _run(["encode", str(run / "best.safetensors"), "--out", str(codes_path), "--batch-size", "100",
                       "--quiet"], capsys)
    assert rc == 0 and "encoded 1297 database items" in out
    from safetensors.torch import load_file

    enc = load_file(str(codes_path))
    ckpt = load_checkpoint(str(run / "best.safetensors"))
    model = build_model(ckpt.config)
    model.load_state_dict(ckpt.model)
    model.eval()
    from nhl_fast.app.data import load_digits_data

    db = load_digits_data().database
    with torch.no_grad():
        feats = model.backbone(db.inputs)
        want = nf.pack(torch.nn.functional.linear(feats, model.head.weight, model.head.bias))
    assert enc["codes"].dtype == torch.int64 and torch.equal(enc["codes"], want)
    assert torch.equal(enc["labels"], db.labels)


def test_feature_mode_and_compare(tmp_path, capsys):
    data = _feature_data(tmp_path)
    rc, out, _ = _run(["train", "--data", data, "--epochs", "2", "--bits", "8,16", "--quiet",
                       "--out", str(tmp_path / "frun")], capsys)
    assert rc == 0 and "| feats.npz |" in out
    cfg = json.loads((tmp_path / "frun" / "config.json").read_text())
    assert cfg["backbone"] == "identity" and cfg["input_shape"] == [16]
    out_dir = tmp_path / "cmp"
    rc, out, _ = _run(["compare", "--data", data, "--epochs", "1", "--bits", "8,16", "--seeds", "2",
                       "--methods", "independent,nhl,nhl+adaptive+distill", "--out", str(out_dir), "--quiet"], capsys)
    assert rc == 0
    assert "| independent |" in out and "| nhl+adaptive+distill |" in out and " ± " in out
    res = json.loads((out_dir / "compare.json").read_text())
    assert res["seeds"] == [0, 1]
    for m in ("independent", "nhl", "nhl+adaptive+distill"):
        per_seed = res["methods"][m]["per_seed"]
        maps = np.array([per_seed[s]["map"] for s in ("0", "1")])
        assert res["methods"][m]["map_mean"] == pytest.approx(maps.mean(0).tolist())
        assert res["methods"][m]["map_std"] == pytest.approx(maps.std(0, ddof=1).tolist())
        assert res["methods"][m]["time_mean_s"] > 0
    assert (out_dir / "compare.md").read_text().count("\n| ") >= 4
    _check_png(out_dir / "compare_map.png")
    _check_png(out_dir / "compare_time.png")


def test_image_list_training_with_the_builtin_cnn(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    for name, count in (("train.txt", 8), ("test.txt", 4), ("database.txt", 8)):
        lines = []
        for i in range(count):
            c = i % 2
            arr = (rng.random((14, 18, 3)) * 60 + 150 * c).astype(np.uint8)
            path = f"img/{name[:-4]}_{i}.jpg"
            Image.fromarray(arr).save(tmp_path / path)
            lines.append(f"{path} {1 - c} {c}")
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    rc, stdout, _ = _run(["train", "--data", str(tmp_path), "--resize", "12", "--crop", "10", "--epochs", "1",
                          "--bits", "8", "--batch-size", "4", "--out", str(out), "--quiet"], capsys)
    assert rc == 0 and "| mAP@all |" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbone"] == "cnn" and cfg["input_shape"] == [3, 10, 10]
    rc, stdout, _ = _run(["encode", str(out), "--which", "query", "--out", str(tmp_path / "q.safetensors"),
                          "--quiet"], capsys)
    assert rc == 0 and "encoded 4 query items" in stdout


def _weights(path):
    return load_checkpoint(str(path)).model


def test_resume_continues_exactly(tmp_path, capsys):
    data = _feature_data(tmp_path)
    common = ["train", "--data", data, "--bits", "8,16", "--quiet", "--eval-every", "1"]
    assert _run(common + ["--epochs", "3", "--out", str(tmp_path / "straight")], capsys)[0] == 0
    assert _run(common + ["--epochs", "1", "--out", str(tmp_path / "split")], capsys)[0] == 0
    assert load_checkpoint(str(tmp_path / "split" / "last.safetensors")).state["epoch"] == 1
    rc, _, _ = _run(["train", "--resume", "--epochs", "3", "--out", str(tmp_path / "split"), "--quiet"], capsys)
    assert rc == 0
    a, b = _weights(tmp_path / "straight" / "last.safetensors"), _weights(tmp_path / "split" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist = json.loads((tmp_path / "split" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    # a run directory is never overwritten by accident
    rc, _, err = _run(common + ["--epochs", "1", "--out", str(tmp_path / "split")], capsys)
    assert rc == 2 and "already holds a run" in err


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path, capsys, monkeypatch):
    data = _feature_data(tmp_path)
    from nhl_fast.objective import NHLObjective

    calls = {"n": 0}
    real = NHLObjective.forward

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # first batch of epoch 2 (100 training rows = 4 batches of <= 32)
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(NHLObjective, "forward", flaky)
    out = tmp_path / "run"
    rc, _, err = _run(["train", "--data", data, "--bits", "8,16", "--epochs", "4", "--batch-size", "32",
                       "--out", str(out), "--quiet"], capsys)
    assert rc == 130 and "resumable checkpoint saved" in err and "--resume" in err
    ck = load_checkpoint(str(out / "last.safetensors"))
    assert ck.state["epoch"] == 1 and ck.optimizer is not None and "shuffle" in ck.rng
    monkeypatch.setattr(NHLObjective, "forward", real)
    rc, _, _ = _run(["train", "--resume", str(out / "last.safetensors"), "--quiet"], capsys)
    assert rc == 0
    assert load_checkpoint(str(out / "last.safetensors")).state["epoch"] == 4


def test_corrupt_checkpoint_clear_error_and_file_untouched(tmp_path, capsys):
    data = _feature_data(tmp_path)
    out = tmp_path / "run"
    assert _run(["train", "--data", data, "--bits", "8", "--epochs", "1", "--out", str(out), "--quiet"],
                capsys)[0] == 0
    good = (out / "best.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good[: len(good) // 2])
    rc, _, err = _run(["eval", str(bad), "--quiet"], capsys)
    assert rc == 2 and "bad.safetensors: not a readable checkpoint" in err
    assert bad.read_bytes() == good[: len(good) // 2]
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="garbage.safetensors: not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "garbage.safetensors"))
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    rc, _, err = _run(["encode", str(tmp_path / "foreign.safetensors"), "--out", str(tmp_path / "c.st")], capsys)
    assert rc == 2 and "not an nhl_fast checkpoint" in err
    rc, _, err = _run(["eval", str(tmp_path / "nope.safetensors")], capsys)
    assert rc == 2 and "checkpoint not found" in err


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "c.safetensors")
    opt_model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(opt_model.parameters())
    opt_model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(path, {"a": 1}, opt_model.state_dict(), state={"epoch": 3}, optimizer_state=opt.state_dict(),
                    rng={"torch": torch.get_rng_state()})
    before = open(path, "rb").read()
    ck = load_checkpoint(path)
    assert ck.config == {"a": 1} and ck.state == {"epoch": 3}
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(ck.optimizer)
    for s_old, s_new in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(s_old["exp_avg"], s_new["exp_avg"]) and torch.equal(s_old["exp_avg_sq"], s_new["exp_avg_sq"])

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"a": 2}, {"w": torch.zeros(5)})
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors"]  # no temporary file left behind


def test_bad_options(tmp_path, capsys):
    rc, _, err = _run(["train", "--data", str(tmp_path / "nothing.npz"), "--quiet"], capsys)
    assert rc == 2 and "nothing.npz: no such file or directory" in err
    rc, _, err = _run(["train", "--backbone", "resnet50", "--epochs", "1", "--quiet",
                       "--out", str(tmp_path / "r")], capsys)
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        assert rc == 2 and "needs torchvision" in err
    rc, _, err = _run(["compare", "--methods", "nhl,bogus", "--quiet"], capsys)
    assert rc == 2 and "bogus" in err


@pytest.mark.parametrize("text, bits", [("8,16,32", (8, 16, 32)), (" 8, 13 ,100,", (8, 13, 100)), ("64", (64,))])
def test_parse_bits(text, bits):
    assert parse_bits(text) == bits


@pytest.mark.parametrize("text, says", [("16,8", "strictly increasing"), ("8,8", "strictly increasing"),
                                        ("0,8", "positive"), ("", "positive"), (",", "positive"),
                                        ("8,x", "comma-separated integers"), ("8.5", "comma-separated integers")])
def test_parse_bits_rejects_with_the_options_words(text, says):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=says) as e:
        parse_bits(text)
    assert repr(text) in str(e.value)


@pytest.mark.parametrize("argv, command, says", [
    (["train", "--bits", "16,8"], "train", "argument --bits: lengths must be positive and strictly increasing"),
    (["train", "--lr", "fast"], "train", "argument --lr: invalid float value: 'fast'"),
    (["eval", "ckpt", "--topk", "-3"], "eval", "argument --topk: expected a positive integer or 'all', got '-3'"),
    (["encode", "ckpt"], "encode", "the following arguments are required: --out"),
    (["compare", "--seeds", "0"], "compare", "argument --seeds: expected a positive integer, got '0'"),
    (["train", "--no-such-option"], "train", "unrecognized arguments: --no-such-option"),
    (["bogus"], None, "argument COMMAND: invalid choice: 'bogus'"),
    ([], None, "the following arguments are required: COMMAND"),
])
def test_option_errors_are_one_line(argv, command, says, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    prog = "nhl-fast" + (f" {command}" if command else "")
    assert e.value.code == 2
    assert err.count("\n") == 1 and "usage:" not in err, err  # the line that matters, not the usage first
    assert err.startswith(f"{prog}: error: ") and says in err
    assert err.rstrip().endswith(f"(see {prog} --help)")


def _help_text(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare word by word


@pytest.mark.parametrize("command, option, default", [
    ("train", "--bits BITS", "8,16,32,64,128"), ("train", "--lr LR", "0.001"), ("train", "--seed SEED", "0"),
    ("train", "--batch-size BATCH_SIZE", "64"), ("train", "--weight-decay WEIGHT_DECAY", "1e-05"),
    ("train", "--workers WORKERS", "0"), ("compare", "--seeds SEEDS", "3"),
    ("compare", "--batch-size BATCH_SIZE", "64"), ("eval", "--batch-size BATCH_SIZE", "256"),
    ("encode", "--batch-size BATCH_SIZE", "256"), ("demo", "--n N", "200000"),
])
def test_help_says_each_default_and_meaning(command, option, default, capsys):
    text = _help_text(command, capsys)
    start = text.index(option + " ")
    entry = text[start:text.find(" --", start + len(option))]  # up to the next option
    assert f"(default: {default}" in entry, entry
    assert len(entry) > len(option) + len(f"(default: {default})") + 10, f"{option}: no meaning given: {entry}"


def test_help_is_true(capsys):
    text = _help_text("train", capsys)
    assert "minutes" not in text and "seconds" in text  # the default run takes seconds
    from nhl_fast.app import cli
    from nhl_fast.app.data import load_digits_data

    assert "small MLP" in cli.__doc__ and "CNN" not in cli.__doc__
    assert load_digits_data().backbone == "mlp"  # what `nhl-fast train` gets by default
    args = cli.build_parser().parse_args(["train"])
    assert args.bits == (8, 16, 32, 64, 128) and args.backbone is None and args.batch_size == 64


def test_demo_tours_the_engine(capsys):
    rc, out, _ = _run(["demo", "--n", "2000", "--queries", "5", "--k", "3"], capsys)
    assert rc == 0
    for line in ("Hamming distances, query 0 vs 4 codes", "top-3 of query 0 among 2,000 codes",
                 "topk, 5 lengths, 1 pass", "for the (5, 5, 2,000) int32 matrix"):
        assert line in out, line
    assert out.count(" bits: ") == 10  # every length, for the distances and for the top-k
    rc, _, err = _run(["demo", "--n", "3", "--k", "5"], capsys)
    assert rc == 2 and err.startswith("nhl-fast demo: error: ") and err.count("\n") == 1


def test_bench_outside_a_source_checkout(tmp_path, monkeypatch, capsys):
    """An installed wheel has no bench/: one line saying a git clone is needed, exit status 2."""
    from nhl_fast.app import commands

    empty = tmp_path / "site-packages"
    empty.mkdir()
    monkeypatch.setattr(commands, "SOURCE_BENCH", str(empty / "bench"))
    monkeypatch.chdir(empty)
    for argv in (["bench"], ["bench", "--quick", "--only", "bench_map"]):
        rc, out, err = _run(argv, capsys)
        assert rc == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("nhl-fast bench: error: needs a source checkout (git clone")
        assert "pip does not install" in err  # and why
    (empty / "bench").mkdir()  # a folder that happens to be called bench is not the benchmarks
    (empty / "bench" / "bench_x.py").write_text("raise SystemExit(1)\n")
    rc, _, err = _run(["bench"], capsys)
    assert rc == 2 and "needs a source checkout" in err
    (empty / "bench" / "_common.py").write_text("")  # a clone's bench/ in the working directory is found
    rc, out, _ = _run(["bench", "--quiet"], capsys)
    assert rc == 1 and "FAILED: bench_x.py" in out


def test_bench_runs_scripts(tmp_path, capsys):
    d = tmp_path / "bench"
    d.mkdir()
    (d / "_common.py").write_text("raise SystemExit('helpers are not run')\n")
    (d / "calc_top_map.py").write_text("raise SystemExit('nor baselines')\n")
    (d / "bench_ok.py").write_text("import sys\nprint('ran', sys.argv[1:])\n")
    (d / "bench_fail.py").write_text("raise SystemExit(3)\n")
    rc, out, _ = _run(["bench", "--dir", str(d), "--quick", "--only", "bench_ok"], capsys)
    assert rc == 0 and "1/1 benchmarks ran" in out
    rc, out, _ = _run(["bench", "--dir", str(d)], capsys)
    assert rc == 1 and "FAILED: bench_fail.py" in out and "1/2 benchmarks ran" in out
    rc, _, err = _run(["bench", "--dir", str(d), "--only", "nope"], capsys)
    assert rc == 2 and "no benchmark script nope" in err
    rc, _, err = _run(["bench", "--dir", str(tmp_path)], capsys)
    assert rc == 2 and "no benchmark scripts (bench_*.py)" in err


def test_bench_passes_each_script_its_smoke_flag(tmp_path, capsys, monkeypatch):
    """--quick: the harness scripts get --quick; bench_gpu.py (CUDA only) gets its CPU --dry-run."""
    d = tmp_path / "bench"
    d.mkdir()
    record = "import json, os, sys\njson.dump(sys.argv[1:], open(os.path.splitext(__file__)[0] + '.argv', 'w'))\n"
    for name in ("bench_gpu.py", "bench_map.py"):
        (d / name).write_text(record)
    assert _run(["bench", "--dir", str(d), "--quick", "--device", "cpu"], capsys)[0] == 0
    assert json.loads((d / "bench_gpu.argv").read_text()) == ["--dry-run"]
    assert json.loads((d / "bench_map.argv").read_text()) == ["--quick", "--device", "cpu"]
    (d / "bench_gpu.argv").unlink()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, out, _ = _run(["bench", "--dir", str(d)], capsys)
    assert rc == 0 and "skipped bench_gpu.py: needs a CUDA GPU" in out and "1/1 benchmarks ran" in out
    assert not (d / "bench_gpu.argv").exists()


def test_quick_bench_runs_never_overwrite_the_full_results(tmp_path, bench_common):
    common = bench_common
    common.parser("a benchmark").parse_args(["--quick"])
    for name in ("bench_topk", "bench_map_quick"):  # bench_topk.py asks for its full name even with --quick
        common.write_results(name, {"rows": []})
    common.parser("a benchmark").parse_args(["--quick", "--out", "bench_losses"])
    common.write_results("bench_losses", {"rows": []})
    assert sorted(os.listdir(tmp_path)) == ["bench_losses_quick.json", "bench_map_quick.json", "bench_topk_quick.json"]
    common.parser("a benchmark").parse_args([])
    common.write_results("bench_topk", {"rows": []})
    assert json.loads((tmp_path / "bench_topk.json").read_text())["benchmark"] == "bench_topk"


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "nhl_fast", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for cmd in ("train", "eval", "encode", "compare", "demo", "bench"):
        assert cmd in r.stdout
