"""Result plots (matplotlib, Agg: no display needed), each written atomically as a PNG."""
from __future__ import annotations

import io
from typing import Mapping, Optional, Sequence

from nhl_fast.app.checkpoint import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _finish(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def map_vs_bits(path: str, series: Mapping[str, tuple], title: str = "mAP per code length") -> str:
    """series: label -> (bits, mean mAP[, std]); one line per label, error bars when std is given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, s in series.items():
        bits, mean = list(s[0]), list(s[1])
        std = list(s[2]) if len(s) > 2 and s[2] is not None else None
        ax.errorbar(bits, mean, yerr=std, marker="o", capsize=3, label=label)
    all_bits = sorted({b for s in series.values() for b in s[0]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_bits, [str(b) for b in all_bits])
    _finish(ax, "code length (bits)", "mAP", title)
    return _save(fig, path)


def pr_curves(path: str, curves: Mapping[int, tuple]) -> str:
    """curves: bits -> (precision, recall) over Hamming radii 0..b."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for bits, (precision, recall) in curves.items():
        ax.plot(list(recall), list(precision), marker=".", label=f"{bits} bits")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    _finish(ax, "recall", "precision", "precision-recall over Hamming radius")
    return _save(fig, path)


def loss_curve(path: str, epochs: Sequence[int], losses: Sequence[float],
               per_length: Optional[Mapping[int, Sequence[float]]] = None) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(list(epochs), list(losses), lw=2, color="k", label="total (weighted)")
    for bits, vals in (per_length or {}).items():
        ax.plot(list(epochs), list(vals), lw=1, label=f"{bits} bits")
    _finish(ax, "epoch", "training loss", "training loss")
    return _save(fig, path)


def weight_curves(path: str, epochs: Sequence[int], weights: Mapping[int, Sequence[float]]) -> str:
    """Per-length adaptive weights (epoch means) of the NHL objective."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for bits, vals in weights.items():
        ax.plot(list(epochs), list(vals), marker=".", label=f"{bits} bits")
    _finish(ax, "epoch", "weight (mean over the epoch)", "dominance-aware adaptive weights")
    return _save(fig, path)


def compare_times(path: str, methods: Sequence[str], mean_s: Sequence[float], std_s: Sequence[float]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.barh(list(methods), list(mean_s), xerr=list(std_s), capsize=3)
    ax.set_xlabel("total training time (s)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
