"""Encoding splits to packed codes (streamed) and the retrieval evaluation of a model."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

import nhl_fast as nf
from nhl_fast.app.data import HashingData, metric_labels
from nhl_fast.app.progress import Reporter


@torch.no_grad()
def encode_split(model, split, *, batch_size: int = 256, device="cpu", workers: int = 0,
                 reporter: Optional[Reporter] = None, desc: str = "encode"):
    """(packed codes (N, W) int64 on CPU, labels (N, C)): batches stream through the model,
    so memory holds one batch of inputs plus the packed codes (8 bytes per 64 bits per item)."""
    model.eval()
    reporter = reporter or Reporter(quiet=True)
    codes, labels = [], []
    n_batches = (len(split) + batch_size - 1) // batch_size
    for x, y, _ in reporter.bar(split.batches(batch_size, workers=workers), total=n_batches, desc=desc, unit="batch"):
        codes.append(model.encode(x.to(device, non_blocking=True)).cpu())
        labels.append(y)
    return torch.cat(codes), torch.cat(labels)


def retrieval_metrics(q_codes, db_codes, q_labels, db_labels, bits: Sequence[int], *, topk=None,
                      ties: str = "index", radius: int = 2, curves: bool = False, lib=nf) -> dict:
    """mAP (and precision@radius, PR curves when `curves`) per length, all lengths per call.
    lib: nhl_fast, or nhl_fast.distributed when db_codes is this rank's shard of the database."""
    bits = list(bits)
    # class indices only when every row has one label; the ranks' shards keep multi-hot (one kind on every rank)
    ql, dl = (metric_labels(q_labels), metric_labels(db_labels)) if lib is nf else (q_labels, db_labels)
    out = {"bits": bits, "topk": topk, "ties": ties,
           "map": [float(v) for v in lib.mean_average_precision(q_codes, db_codes, ql, dl, bits=bits, topk=topk,
                                                               ties=ties)]}
    if curves:
        out["radius"] = radius
        out["precision_at_radius"] = [float(v) for v in lib.precision_at_radius(q_codes, db_codes, ql, dl, bits=bits,
                                                                               radius=radius)]
        out["pr_curves"] = {}
        for b, (p, r) in zip(bits, pr_curve_per_length(q_codes, db_codes, ql, dl, bits, lib)):
            out["pr_curves"][str(b)] = {"precision": [float(v) for v in p], "recall": [float(v) for v in r]}
    return out


def pr_curve_per_length(q_codes, db_codes, ql, dl, bits, lib=nf):
    """[(precision over radii 0..b, recall over radii 0..b)] per length."""
    res = lib.precision_recall_curve(q_codes, db_codes, ql, dl, bits=list(bits))
    return [(res[0][i][: b + 1], res[1][i][: b + 1]) for i, b in enumerate(bits)]


def evaluate_model(model, data: HashingData, bits, *, topk=None, ties="index", device="cpu", batch_size=256,
                   workers: int = 0, curves: bool = False, radius: int = 2, reporter: Optional[Reporter] = None,
                   ddp=None) -> dict:
    """ddp (nhl_fast.app.ddp.DDPContext): each rank encodes its shard of the database, the metrics are sharded."""
    if ddp is not None:
        ddp.broadcast_buffers(model)  # batch-norm statistics: rank 0's, as DDP's next forward would set them
    qc, ql = encode_split(model, data.query, batch_size=batch_size, device=device, workers=workers,
                          reporter=reporter, desc="encode query")
    dc, dl = encode_split(model, data.database if ddp is None else ddp.shard(data.database), batch_size=batch_size,
                          device=device, workers=workers, reporter=reporter, desc="encode database")
    return retrieval_metrics(qc, dc, ql, dl, bits, topk=topk, ties=ties, radius=radius, curves=curves,
                             lib=nf if ddp is None else nf.distributed)


def table(bits: Sequence[int], rows: dict, fmt: str = "{:.4f}", first: str = "") -> str:
    """A markdown table: one column per code length (or a str column title), one row per entry of `rows`."""
    head = f"| {first} | " + " | ".join(b if isinstance(b, str) else f"{b} bits" for b in bits) + " |"
    sep = "|---|" + "---:|" * len(bits)
    lines = [head, sep]
    for name, vals in rows.items():
        cells = [v if isinstance(v, str) else fmt.format(v) for v in vals]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
