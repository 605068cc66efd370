"""Retrieval data sets for the `nhl-fast` command: train / query / database splits.

Three sources, all ending in the same `HashingData`:

* ``digits`` (default): scikit-learn's bundled ``load_digits`` (1,797 real 8x8 images,
  10 classes, ~180 per class). Query set: 50 images per class (500), drawn class-balanced
  with a fixed seed; database = training set = the other 1,297 (the CIFAR-10 protocol).
  Only ~180 images exist per class, so the usual 100 queries/class would leave too little to train on.
* feature files: ``.npz`` / ``.pt`` / ``.safetensors`` holding ``features`` (N, D) and
  ``labels`` (class indices (N,) or multi-hot (N, C)), or ``features.npy`` + ``labels.npy``
  side by side; plus a JSON split file ``{"train": [...], "query": [...], "database": [...]}``
  of row indices (``--split``, default ``split.json`` next to the features).
* image lists in the DeepHash-pytorch format: a directory with ``train.txt``, ``test.txt``
  (queries) and ``database.txt``, one ``path l_1 ... l_C`` per line (path relative to the
  list's directory unless absolute; labels a 0/1 vector). Decoded with Pillow, resized,
  cropped and normalised here (torchvision is optional).

Every problem with the data raises DataError naming the file and the line (or row).
Labels are kept as float multi-hot (N, C): relevance = sharing a 1, which equals label
equality for single-label data.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "query", "database")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """Bad or missing data; the message names the file and the line/row at fault."""


# ----------------------------------------------------------------------------- splits

class TensorSplit:
    """A split held in memory: inputs (N, ...) float32 and multi-hot labels (N, C)."""

    def __init__(self, inputs: Tensor, labels: Tensor):
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: Optional[torch.Generator] = None,
                workers: int = 0) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(inputs, labels, row indices) batches; direct tensor indexing, no per-item collate."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            yield self.inputs[idx], self.labels[idx], idx


class ImageListSplit(torch.utils.data.Dataset):
    """Images named in a DeepHash-style list, decoded lazily with Pillow."""

    def __init__(self, entries: list[tuple[str, str, int]], labels: Tensor, *, train: bool,
                 resize: int, crop: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.entries, self.labels = entries, labels  # entries: (image path, list file, line number)
        self.train, self.resize, self.crop = train, resize, crop
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        path, src, line = self.entries[i]
        return load_image(path, src, line, train=self.train, resize=self.resize, crop=self.crop,
                          mean=self.mean, std=self.std), self.labels[i], i

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: Optional[torch.Generator] = None,
                workers: int = 0):
        loader = torch.utils.data.DataLoader(self, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                             num_workers=workers)
        for x, y, idx in loader:
            yield x, y, idx


@dataclass
class HashingData:
    """Train / query / database splits of one retrieval data set."""

    name: str
    kind: str                      # "features" | "images"
    input_shape: tuple             # one input's shape, e.g. (64,) or (1, 8, 8) or (3, 224, 224)
    num_classes: int
    train: object
    query: object
    database: object
    notes: list = field(default_factory=list)
    backbone: Optional[str] = None  # the default backbone for this data (None: by kind)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train)} train / {len(self.query)} query / {len(self.database)} database, "
                f"{self.num_classes} classes, input {tuple(self.input_shape)}")


# ----------------------------------------------------------------------------- digits

def load_digits_data(queries_per_class: int = 50, split_seed: int = 0) -> HashingData:
    """scikit-learn's digits: class-balanced query set, database = training set."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.from_numpy(x / 16.0).float().view(-1, 1, 8, 8)
    y = torch.from_numpy(y).long()
    rng = np.random.default_rng(split_seed)
    query = np.zeros(len(y), dtype=bool)
    for c in range(10):
        rows = np.flatnonzero(y.numpy() == c)
        query[rng.choice(rows, size=min(queries_per_class, len(rows) - 1), replace=False)] = True
    q, t = torch.from_numpy(np.flatnonzero(query)), torch.from_numpy(np.flatnonzero(~query))
    mean, std = x[t].mean(), x[t].std()  # normalise with training statistics only
    x = (x - mean) / std
    labels = torch.nn.functional.one_hot(y, 10).float()
    train = TensorSplit(x[t], labels[t])
    # 8x8 inputs: an MLP is as accurate as the small CNN here and ~10x faster on a CPU.
    return HashingData("digits", "images", (1, 8, 8), 10, train, TensorSplit(x[q], labels[q]), train,
                       notes=[f"{queries_per_class} queries per class (seed {split_seed}); database = training set"],
                       backbone="mlp")


# ----------------------------------------------------------------------------- feature files

def _read_arrays(path: str) -> dict:
    """name -> numpy array from .npz / .pt / .safetensors (or features.npy + labels.npy)."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if ext == ".npy":
            labels_path = os.path.join(os.path.dirname(path), os.path.basename(path).replace("features", "labels"))
            if labels_path == path or not os.path.exists(labels_path):
                raise DataError(f"{path}: a .npy feature file needs its labels in a sibling file "
                                f"{labels_path if labels_path != path else 'labels.npy'} (not found)")
            return {"features": np.load(path, allow_pickle=False), "labels": np.load(labels_path, allow_pickle=False)}
        if ext == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise DataError(f"{path}: expected a dict with 'features' and 'labels', got {type(obj).__name__}")
            return {k: (v.numpy() if isinstance(v, Tensor) else np.asarray(v)) for k, v in obj.items()}
        if ext == ".safetensors":
            from safetensors.numpy import load_file
            return load_file(path)
    except DataError:
        raise
    except Exception as e:  # a truncated / foreign file: say which one
        raise DataError(f"{path}: cannot be read as a {ext} feature file ({type(e).__name__}: {e})") from e
    raise DataError(f"{path}: unknown feature file type {ext!r} (expected .npz, .npy, .pt or .safetensors)")


def _check_features(feats, path: str) -> np.ndarray:
    if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] == 0:
        raise DataError(f"{path}: 'features' must be a non-empty 2-D array (N, D), got shape {feats.shape}")
    if not (np.issubdtype(feats.dtype, np.floating) or np.issubdtype(feats.dtype, np.integer)):
        raise DataError(f"{path}: 'features' must be numeric, got dtype {feats.dtype}")
    bad = ~np.isfinite(feats)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{path}: 'features' row {r} column {c} is {feats[r, c]} "
                        f"(rows with NaN/inf values: {int(bad.any(1).sum())})")
    return feats.astype(np.float32, copy=False)


def labels_to_multi_hot(labels: np.ndarray, path: str, num_classes: Optional[int] = None) -> np.ndarray:
    """Class indices (N,) or multi-hot (N, C) -> float32 multi-hot; errors name the row."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 1:
        if not np.issubdtype(labels.dtype, np.integer):
            if np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
                labels = labels.astype(np.int64)
            else:
                raise DataError(f"{path}: 'labels' as class indices (N,) must be integers, got dtype {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise DataError(f"{path}: 'labels' row {int(np.argmin(labels))} is a negative class index ({labels.min()})")
        c = int(labels.max()) + 1 if num_classes is None else num_classes
        if labels.size and labels.max() >= c:
            raise DataError(f"{path}: 'labels' row {int(np.argmax(labels))} has class {labels.max()} >= {c} classes")
        out = np.zeros((labels.shape[0], c), dtype=np.float32)
        out[np.arange(labels.shape[0]), labels] = 1
        return out
    if labels.ndim == 2:
        ok = (labels == 0) | (labels == 1)
        if not ok.all():
            r, c = np.argwhere(~ok)[0]
            raise DataError(f"{path}: multi-hot 'labels' must be 0/1; row {r} column {c} is {labels[r, c]}")
        return labels.astype(np.float32)
    raise DataError(f"{path}: 'labels' must be class indices (N,) or multi-hot (N, C), got shape {labels.shape}")


def read_split(path: str, n: int) -> dict:
    """{"train", "query", "database"} -> int64 index tensors, validated against N rows."""
    if not os.path.exists(path):
        raise DataError(f"{path}: split file not found (a JSON object with 'train', 'query' and "
                        f"'database' lists of row indices; pass it with --split)")
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object with keys {list(SPLITS)}, got {type(obj).__name__}")
    out = {}
    for name in SPLITS:
        if name not in obj:
            raise DataError(f"{path}: missing split {name!r} (keys found: {sorted(obj)})")
        rows = obj[name]
        if not isinstance(rows, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in rows):
            raise DataError(f"{path}: split {name!r} must be a list of integer row indices")
        if not rows:
            raise DataError(f"{path}: split {name!r} is empty")
        bad = [i for i in rows if i < 0 or i >= n]
        if bad:
            raise DataError(f"{path}: split {name!r} has row index {bad[0]} outside [0, {n}) "
                            f"({len(bad)} such indices)")
        out[name] = torch.tensor(rows, dtype=torch.int64)
    return out


def load_feature_data(path: str, split_path: Optional[str] = None) -> HashingData:
    """Pre-extracted features + labels + a split file; the backbone is then the identity."""
    arrays = _read_arrays(path)
    for key in ("features", "labels"):
        if key not in arrays:
            raise DataError(f"{path}: no {key!r} array (found: {sorted(arrays) or 'nothing'})")
    feats = _check_features(np.asarray(arrays["features"]), path)
    labels = labels_to_multi_hot(np.asarray(arrays["labels"]), path)
    if labels.shape[0] != feats.shape[0]:
        raise DataError(f"{path}: {feats.shape[0]} feature rows but {labels.shape[0]} label rows")
    if split_path is None:
        split_path = os.path.join(os.path.dirname(os.path.abspath(path)), "split.json")
    split = read_split(split_path, feats.shape[0])
    x, y = torch.from_numpy(feats), torch.from_numpy(labels)
    parts = {k: TensorSplit(x[v], y[v]) for k, v in split.items()}
    return HashingData(os.path.basename(path), "features", (feats.shape[1],), labels.shape[1],
                       parts["train"], parts["query"], parts["database"], notes=[f"split: {split_path}"])


# ----------------------------------------------------------------------------- image lists

LIST_FILES = {"train": "train.txt", "query": "test.txt", "database": "database.txt"}


def read_image_list(list_path: str, root: Optional[str] = None, width: Optional[int] = None,
                    width_from: str = "") -> tuple[list, np.ndarray]:
    """Parse a DeepHash-pytorch list: `path l_1 ... l_C` per line -> entries, (N, C) labels."""
    if not os.path.exists(list_path):
        raise DataError(f"{list_path}: image list not found")
    root = root if root is not None else os.path.dirname(os.path.abspath(list_path))
    entries, labels = [], []
    with open(list_path) as f:
        for lineno, line in enumerate(f, 1):
            tok = line.split()
            if not tok:
                continue
            if len(tok) < 2:
                raise DataError(f"{list_path} line {lineno}: expected `path label_1 ... label_C`, got {line.strip()!r}")
            try:
                vec = [int(t) for t in tok[1:]]
            except ValueError:
                raise DataError(f"{list_path} line {lineno}: labels must be 0/1 integers, got {' '.join(tok[1:])!r}") from None
            if any(v not in (0, 1) for v in vec):
                raise DataError(f"{list_path} line {lineno}: labels must be 0/1, got {' '.join(tok[1:])!r}")
            if width is None:
                width, width_from = len(vec), f"{list_path} line {lineno}"
            elif len(vec) != width:
                raise DataError(f"{list_path} line {lineno}: {len(vec)} labels, expected {width} (as in {width_from})")
            img = tok[0] if os.path.isabs(tok[0]) else os.path.join(root, tok[0])
            if not os.path.exists(img):
                raise DataError(f"{list_path} line {lineno}: image not found: {img}")
            entries.append((img, list_path, lineno))
            labels.append(vec)
    if not entries:
        raise DataError(f"{list_path}: the list is empty (no `path labels` lines)")
    return entries, np.asarray(labels, dtype=np.float32)


def load_image(path: str, src: str, line: int, *, train: bool, resize: int, crop: int,
               mean: Tensor, std: Tensor) -> Tensor:
    """Pillow decode -> RGB -> resize shorter side -> random (train) / centre crop -> normalised (3, crop, crop)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = resize / min(w, h)
            im = im.resize((max(crop, round(w * s)), max(crop, round(h * s))), Image.BILINEAR)
    except Exception as e:
        raise DataError(f"{src} line {line}: cannot decode image {path} ({type(e).__name__}: {e})") from e
    w, h = im.size
    if train:
        left, top = int(torch.randint(0, w - crop + 1, ())), int(torch.randint(0, h - crop + 1, ()))
    else:
        left, top = (w - crop) // 2, (h - crop) // 2
    im = im.crop((left, top, left + crop, top + crop))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if train and bool(torch.rand(()) < 0.5):
        x = x.flip(-1)
    return (x - mean) / std


def load_image_list_data(directory: str, *, image_root: Optional[str] = None, resize: int = 256,
                         crop: int = 224) -> HashingData:
    if crop > resize:
        raise DataError(f"crop={crop} must be <= resize={resize}")
    parts, width, width_from = {}, None, ""
    for split, fname in LIST_FILES.items():
        entries, labels = read_image_list(os.path.join(directory, fname), image_root, width, width_from)
        if width is None:
            width, width_from = labels.shape[1], f"{os.path.join(directory, fname)} line {entries[0][2]}"
        parts[split] = ImageListSplit(entries, torch.from_numpy(labels), train=split == "train",
                                      resize=resize, crop=crop)
    return HashingData(os.path.basename(os.path.abspath(directory)), "images", (3, crop, crop), width,
                       parts["train"], parts["query"], parts["database"],
                       notes=[f"images resized to {resize}, cropped to {crop}"])


# ----------------------------------------------------------------------------- entry point

def load_data(spec: str = "digits", *, split: Optional[str] = None, image_root: Optional[str] = None,
              resize: int = 256, crop: int = 224) -> HashingData:
    """`digits`, a feature file, a directory of feature files, or a DeepHash image-list directory."""
    if spec == "digits":
        return load_digits_data()
    if os.path.isdir(spec):
        if os.path.exists(os.path.join(spec, "train.txt")):
            return load_image_list_data(spec, image_root=image_root, resize=resize, crop=crop)
        for name in ("features.safetensors", "features.npz", "features.pt", "features.npy"):
            if os.path.exists(os.path.join(spec, name)):
                return load_feature_data(os.path.join(spec, name), split)
        raise DataError(f"{spec}: directory holds neither train.txt/test.txt/database.txt (image lists) "
                        f"nor features.(safetensors|npz|pt|npy)")
    if not os.path.exists(spec):
        raise DataError(f"{spec}: no such file or directory (--data takes 'digits', a feature file "
                        f"(.npz/.npy/.pt/.safetensors) or a directory of DeepHash image lists)")
    return load_feature_data(spec, split)


def multi_label(labels: Tensor) -> bool:
    return bool((labels.sum(1) != 1).any())


def metric_labels(labels: Tensor) -> Tensor:
    """Class indices when every row has exactly one label (cheaper relevance), else the multi-hot matrix."""
    return labels.argmax(1) if not multi_label(labels) else labels
