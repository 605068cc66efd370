"""`--unsupervised` for `nhl-fast train` and `compare`: two random views per batch, no labels in
training (they only evaluate), and the classic baselines (LSH, ITQ) of the compare table."""
from __future__ import annotations

from typing import Optional

import torch

from nhl_fast.augment import TwoViews
from nhl_fast.baselines import ITQ, LSH
from nhl_fast.losses import available, get_loss

BASELINES = ("lsh", "itq")
#: the views per input kind when --views auto
AUTO_VIEWS = {"images": "image", "features": "features"}


def get_loss_class(name: str):
    from nhl_fast.losses import _REGISTRY

    return _REGISTRY.get(name.lower())


def check_loss(name: str, unsupervised: bool) -> None:
    """--unsupervised needs a loss without labels, and such a loss needs --unsupervised."""
    cls = get_loss_class(name)
    if cls is None:
        get_loss(name, (8,))  # raises the registry's 'unknown base_loss' message
    is_unsup = bool(getattr(cls, "unsupervised", False))
    if unsupervised and not is_unsup:
        raise ValueError(f"--unsupervised: --base-loss {name} is supervised (it needs labels); unsupervised losses: "
                         f"{', '.join(available(unsupervised=True))}")
    if is_unsup and not unsupervised:
        raise ValueError(f"--base-loss {name} is unsupervised (two views, no labels): add --unsupervised")


def loss_kwargs(cfg) -> dict:
    """The unsupervised loss's options: --loss-opt KEY=VALUE, and the code memory when asked for."""
    kw = dict(cfg.loss_opts or {})
    if cfg.memory:
        kw.update(memory=cfg.memory, warmup_epochs=cfg.warmup_epochs)
    return kw


def parse_loss_opt(text: str):
    """KEY=VALUE -> (key, int | float | bool | str)."""
    import argparse

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. temperature=0.2), got {text!r}")
    key, value = text.split("=", 1)
    low = value.lower()
    if low in ("true", "false"):
        return key, low == "true"
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def make_views(cfg, data) -> TwoViews:
    kind = cfg.views if cfg.views != "auto" else AUTO_VIEWS.get(data.kind, "none")
    if kind == "image" and len(data.input_shape) != 3:
        raise ValueError(f"--views image needs image inputs (C, H, W), got {tuple(data.input_shape)}")
    return TwoViews(kind)


def two_view_loss(model, objective, views: TwoViews, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The step's loss: both views through backbone + head; z = the backbone features (the head's input)."""
    x1, x2 = views(x)
    z1, u1 = model(x1)
    z2, u2 = model(x2)
    return objective(u1, u_other=u2, z=z1, z_other=z2, indices=idx)


def flat_inputs(split) -> Optional[torch.Tensor]:
    """(N, D) inputs of an in-memory split, None for image lists (decoded lazily: no baselines)."""
    inputs = getattr(split, "inputs", None)
    return None if inputs is None else inputs.flatten(1).float()


def baseline_maps(method: str, data, bits, seed: int, *, topk=None, ties: str = "index") -> dict:
    """{bits: mAP or None} of LSH / ITQ fit on the training inputs (None: ITQ longer than the input)."""
    import nhl_fast as nf
    from nhl_fast.app.data import metric_labels

    train, q, db = flat_inputs(data.train), flat_inputs(data.query), flat_inputs(data.database)
    if train is None:
        raise ValueError(f"{method}: the baselines need in-memory inputs (digits or feature files), not image lists")
    ql, dl = metric_labels(data.query.labels), metric_labels(data.database.labels)
    out = {}
    if method == "lsh":  # nested by construction: one model, every length a prefix
        model = LSH(max(bits), seed=seed).fit(train)
        m = nf.mean_average_precision(model.encode(q), model.encode(db), ql, dl, bits=list(bits), topk=topk, ties=ties)
        return {b: float(v) for b, v in zip(bits, m)}
    for b in bits:  # ITQ: one rotation per length
        if b > train.shape[1]:
            out[b] = None
            continue
        model = ITQ(b, seed=seed).fit(train)
        out[b] = float(nf.mean_average_precision(model.encode(q), model.encode(db), ql, dl, bits=[b], topk=topk,
                                                 ties=ties)[0])
    return out
