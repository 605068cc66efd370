"""Data sets of the `nhl-fast` command: digits split, feature files, DeepHash image lists, bad data."""
import json
import os

import numpy as np
import pytest
import torch

from nhl_fast.app.backbones import BackboneError, build_backbone
from nhl_fast.app.data import (IMAGENET_MEAN, IMAGENET_STD, DataError, load_data, load_digits_data,
                               metric_labels)


# ----------------------------------------------------------------------------- digits

def test_digits_split_is_class_balanced_and_database_is_train():
    d = load_digits_data()
    assert (len(d.train), len(d.query), len(d.database)) == (1297, 500, 1297)
    assert d.database is d.train
    assert torch.equal(d.query.labels.sum(0), torch.full((10,), 50.0))
    assert d.input_shape == (1, 8, 8) and d.train.inputs.shape == (1297, 1, 8, 8)
    # query and train are disjoint: no query image (row) appears among the training images
    q = d.query.inputs.flatten(1)
    t = d.train.inputs.flatten(1)
    assert len(set(map(tuple, q.tolist())) & set(map(tuple, t.tolist()))) < 10  # digits has a few exact duplicates
    # the same split every time (fixed seed), normalised with training statistics
    assert torch.equal(load_digits_data().query.inputs, d.query.inputs)
    assert abs(float(d.train.inputs.mean())) < 1e-5


def test_batches_cover_the_split_once():
    d = load_digits_data()
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([idx for _, _, idx in d.train.batches(100, shuffle=True, generator=g)])
    assert sorted(seen.tolist()) == list(range(1297))
    x, y, idx = next(d.query.batches(7))
    assert torch.equal(x, d.query.inputs[:7]) and torch.equal(y, d.query.labels[:7])


# ----------------------------------------------------------------------------- feature files

def _features(n=40, dim=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = (rng.normal(size=(n, dim)) + y[:, None]).astype(np.float32)
    return x, y


def _split(path, n=40, q=8):
    rows = list(range(n))
    with open(path, "w") as f:
        json.dump({"train": rows[q:], "query": rows[:q], "database": rows[q:]}, f)


def _write(fmt, d, x, y):
    if fmt == "npz":
        p = d / "feats.npz"
        np.savez(p, features=x, labels=y)
    elif fmt == "npy":
        p = d / "features.npy"
        np.save(p, x)
        np.save(d / "labels.npy", y)
    elif fmt == "pt":
        p = d / "feats.pt"
        torch.save({"features": torch.from_numpy(x), "labels": torch.from_numpy(y)}, p)
    else:
        from safetensors.numpy import save_file
        p = d / "feats.safetensors"
        save_file({"features": x, "labels": y}, str(p))
    return str(p)


@pytest.mark.parametrize("fmt", ["npz", "npy", "pt", "safetensors"])
@pytest.mark.parametrize("multi", [False, True])
def test_feature_formats(tmp_path, fmt, multi):
    x, y = _features()
    labels = np.eye(4, dtype=np.float32)[y] if multi else y.astype(np.int64)
    if multi:
        labels[0, 3] = 1  # a genuinely multi-label row
    path = _write(fmt, tmp_path, x, labels)
    _split(tmp_path / "split.json")
    d = load_data(path)
    assert d.kind == "features" and d.input_shape == (6,) and d.num_classes == 4
    assert (len(d.train), len(d.query), len(d.database)) == (32, 8, 32)
    assert torch.equal(d.query.inputs, torch.from_numpy(x[:8]))
    want = np.eye(4, dtype=np.float32)[y]
    if multi:
        want[0, 3] = 1
    assert torch.equal(d.query.labels, torch.from_numpy(want[:8]))
    ml = metric_labels(d.query.labels)
    assert (ml.dim() == 2) == multi  # single-label data goes to the metrics as class indices
    if not multi:
        assert torch.equal(ml, torch.from_numpy(y[:8]))


def test_feature_directory_and_explicit_split(tmp_path):
    x, y = _features()
    _write("safetensors", tmp_path, x, y)
    os.rename(tmp_path / "feats.safetensors", tmp_path / "features.safetensors")
    _split(tmp_path / "other.json", q=5)
    d = load_data(str(tmp_path), split=str(tmp_path / "other.json"))
    assert len(d.query) == 5


def _expect(match, **kw):
    return pytest.raises(DataError, match=match, **kw)


def test_bad_feature_files(tmp_path):
    x, y = _features()
    with _expect("no such file"):
        load_data(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "nolabels.npz", features=x)
    with _expect(r"nolabels.npz: no 'labels' array"):
        load_data(str(tmp_path / "nolabels.npz"))
    xn = x.copy()
    xn[13, 2] = np.nan
    p = _write("npz", tmp_path, xn, y)
    _split(tmp_path / "split.json")
    with _expect(r"feats.npz: 'features' row 13 column 2 is nan"):
        load_data(p)
    np.savez(tmp_path / "short.npz", features=x, labels=y[:-1])
    with _expect("40 feature rows but 39 label rows"):
        load_data(str(tmp_path / "short.npz"))
    np.savez(tmp_path / "neg.npz", features=x, labels=np.where(np.arange(40) == 5, -1, y))
    with _expect("row 5 is a negative class index"):
        load_data(str(tmp_path / "neg.npz"))
    bad = np.eye(4, dtype=np.float32)[y]
    bad[7, 1] = 0.5
    np.savez(tmp_path / "soft.npz", features=x, labels=bad)
    with _expect("row 7 column 1 is 0.5"):
        load_data(str(tmp_path / "soft.npz"))
    np.save(tmp_path / "alone.npy", x)
    with _expect("sibling"):
        load_data(str(tmp_path / "alone.npy"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with _expect("junk.safetensors: cannot be read"):
        load_data(str(tmp_path / "junk.safetensors"))


def test_bad_split_files(tmp_path):
    x, y = _features()
    p = _write("npz", tmp_path, x, y)
    s = tmp_path / "split.json"
    with _expect("split file not found"):
        load_data(p)
    s.write_text('{"train": [1, 2],\n "query": [3,]\n}')
    with _expect(r"split.json line 2 column \d+: invalid JSON"):
        load_data(p)
    s.write_text(json.dumps({"train": [1, 2], "query": [], "database": [1]}))
    with _expect("split 'query' is empty"):
        load_data(p)
    s.write_text(json.dumps({"train": [1, 2], "query": [3]}))
    with _expect("missing split 'database'"):
        load_data(p)
    s.write_text(json.dumps({"train": [1, 40], "query": [3], "database": [1]}))
    with _expect(r"row index 40 outside \[0, 40\)"):
        load_data(p)


# ----------------------------------------------------------------------------- image lists

def _image_lists(root, n=(6, 3, 6), size=(20, 14), classes=3):
    from PIL import Image

    (root / "img").mkdir()
    k = 0
    for name, count in zip(("train.txt", "test.txt", "database.txt"), n):
        lines = []
        for i in range(count):
            c = k % classes
            color = (40 * c + 20, 200 - 50 * c, 90)
            Image.new("RGB", size, color).save(root / "img" / f"{k}.png")
            vec = ["1" if j == c else "0" for j in range(classes)]
            lines.append(f"img/{k}.png {' '.join(vec)}")
            k += 1
        (root / name).write_text("\n".join(lines) + "\n")


def test_image_lists_decode_resize_crop_normalise(tmp_path):
    _image_lists(tmp_path)
    d = load_data(str(tmp_path), resize=12, crop=10)
    assert d.kind == "images" and d.input_shape == (3, 10, 10) and d.num_classes == 3
    assert (len(d.train), len(d.query), len(d.database)) == (6, 3, 6)
    x, y, idx = next(d.query.batches(3))
    assert x.shape == (3, 3, 10, 10) and torch.equal(idx, torch.arange(3))
    # query image 0 is image #6: class 0, a constant colour -> constant normalised channels
    color = torch.tensor([20.0, 200.0, 90.0]) / 255
    want = (color - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[0].mean((1, 2)), want, atol=1e-5) and float(x[0].std((1, 2)).max()) < 1e-5
    assert torch.equal(y[0], torch.tensor([1.0, 0, 0]))
    xt, _, _ = next(d.train.batches(6, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert xt.shape == (6, 3, 10, 10)


def test_bad_image_lists(tmp_path):
    _image_lists(tmp_path)
    lines = (tmp_path / "test.txt").read_text().splitlines()
    (tmp_path / "test.txt").write_text("\n".join(lines[:1] + [lines[1] + " 0"] + lines[2:]) + "\n")
    with _expect(r"test.txt line 2: 4 labels, expected 3 \(as in .*train.txt line 1\)"):
        load_data(str(tmp_path), resize=12, crop=10)
    (tmp_path / "test.txt").write_text("\n".join(lines[:2] + ["img/nope.png 1 0 0"]) + "\n")
    with _expect(r"test.txt line 3: image not found: .*nope.png"):
        load_data(str(tmp_path), resize=12, crop=10)
    (tmp_path / "test.txt").write_text("img/6.png 1 x 0\n")
    with _expect(r"test.txt line 1: labels must be 0/1"):
        load_data(str(tmp_path), resize=12, crop=10)
    (tmp_path / "test.txt").write_text("\n\n")
    with _expect(r"test.txt: the list is empty"):
        load_data(str(tmp_path), resize=12, crop=10)
    (tmp_path / "test.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "img" / "7.png").write_bytes(b"\x89PNG garbage")
    d = load_data(str(tmp_path), resize=12, crop=10)
    with _expect(r"test.txt line 2: cannot decode image .*7.png"):
        d.query[1]
    with _expect("crop=20 must be <= resize=12"):
        load_data(str(tmp_path), resize=12, crop=20)
    os.remove(tmp_path / "database.txt")
    with _expect("database.txt: image list not found"):
        load_data(str(tmp_path), resize=12, crop=10)


# ----------------------------------------------------------------------------- backbones

def test_builtin_backbones():
    cnn = build_backbone("cnn", (3, 10, 10)).eval()
    assert cnn(torch.randn(2, 3, 10, 10)).shape == (2, cnn.out_features)
    digits_cnn = build_backbone("cnn", (1, 8, 8)).eval()
    assert digits_cnn(torch.randn(2, 1, 8, 8)).shape == (2, digits_cnn.out_features)
    mlp = build_backbone("mlp", (1, 8, 8)).eval()
    assert mlp(torch.randn(2, 1, 8, 8)).shape == (2, mlp.out_features)
    ident = build_backbone("identity", (6,))
    x = torch.randn(3, 6)
    assert ident.out_features == 6 and torch.equal(ident(x), x)
    with pytest.raises(BackboneError, match="needs image inputs"):
        build_backbone("cnn", (6,))
    with pytest.raises(BackboneError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", (3, 10, 10))


def test_torchvision_backbone_message():
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    with pytest.raises(BackboneError, match="needs torchvision, which is not installed"):
        build_backbone("resnet50", (3, 32, 32))
