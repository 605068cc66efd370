"""`nhl-fast train`: backbone + NestedHashLayer trained with NHLObjective, evaluated per length.

A run directory holds ``best.safetensors`` (best mean mAP over the lengths),
``last.safetensors`` (resumable: optimizer, epoch, history, RNG; rewritten every epoch
and on Ctrl-C), ``config.json``, ``metrics.json`` and the plots.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch

from nhl_fast.app import plots
from nhl_fast.app.backbones import default_backbone
from nhl_fast.app.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from nhl_fast.app.data import HashingData, load_data
from nhl_fast.app.evaluate import evaluate_model, table
from nhl_fast.app.model import build_model
from nhl_fast.app.progress import Reporter
from nhl_fast.objective import NHLObjective


@dataclass
class TrainConfig:
    data: str = "digits"
    split: Optional[str] = None
    image_root: Optional[str] = None
    resize: int = 256
    crop: int = 224
    backbone: Optional[str] = None          # None: the data's default (mlp for digits, cnn for images, identity for features)
    weights: Optional[str] = None
    base_loss: str = "csq"
    bits: tuple = (8, 16, 32, 64, 128)
    adaptive: bool = True
    distill: float = 0.1
    beta: float = 1.0
    centers: Optional[str] = None           # centre losses (csq, dpn, mdsh, shcir): None = the objective's default
    weight_rule: Optional[str] = None       # adaptive weights: None = the default | bounded | dominance | pcgrad
    length_scale: str = "mean"              # per-length losses as defined (mean) or times b_k / mean(b) (bits)
    faithful: bool = False                  # reproduce the reference step's quirks (NHLObjective faithful=True)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    eval_every: int = 0                     # 0: about 5 evaluations per run
    topk: Optional[int] = None              # None: mAP over the full ranking
    ties: str = "index"
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    out: Optional[str] = None
    # --unsupervised (issue 16): two random views per batch, labels only evaluate (app/unsupervised.py)
    unsupervised: bool = False
    views: str = "auto"                     # image | features | none | auto (by the data's kind)
    memory: int = 0                         # code-memory rows (losses that take memory=), 0: none
    warmup_epochs: int = 0
    loss_opts: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        cfg.bits = tuple(cfg.bits)
        return cfg


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    return torch.device(device)


def load_training_data(cfg: TrainConfig) -> HashingData:
    return load_data(cfg.data, split=cfg.split, image_root=cfg.image_root, resize=cfg.resize, crop=cfg.crop)


def model_config(cfg: TrainConfig, data: HashingData) -> dict:
    """What eval/encode need to rebuild the model and reload the data (stored in every checkpoint)."""
    d = asdict(cfg)
    d.update(bits=list(cfg.bits), backbone=cfg.backbone or data.backbone or default_backbone(data.kind),
             input_shape=list(data.input_shape), num_classes=data.num_classes, data_name=data.name,
             data_kind=data.kind)
    return d


def make_objective(cfg: TrainConfig, data: HashingData) -> NHLObjective:
    from nhl_fast.app.unsupervised import check_loss, loss_kwargs

    check_loss(cfg.base_loss, cfg.unsupervised)
    kwargs = loss_kwargs(cfg) if cfg.unsupervised else dict(num_classes=data.num_classes, num_train=len(data.train),
                                                            **loss_kwargs(cfg))
    try:
        return NHLObjective(cfg.base_loss, bit_list=tuple(cfg.bits), adaptive=cfg.adaptive, beta=cfg.beta,
                            distill=cfg.distill, faithful=cfg.faithful, weight_rule=cfg.weight_rule,
                            centers=cfg.centers, length_scale=cfg.length_scale, **kwargs)
    except TypeError as e:  # an option this loss does not take
        raise ValueError(f"--base-loss {cfg.base_loss}: {e} (check --loss-opt / --memory)") from None


def _rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "shuffle": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(gen: torch.Generator, rng: dict) -> None:
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "shuffle" in rng:
        gen.set_state(rng["shuffle"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


@dataclass
class RunState:
    epoch: int = 0                                  # epochs completed
    history: list = field(default_factory=list)     # one dict per epoch
    best_map: float = -1.0
    best_epoch: int = 0
    train_time_s: float = 0.0


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a resumable checkpoint."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def fit(cfg: TrainConfig, data: Optional[HashingData] = None, *, reporter: Optional[Reporter] = None,
        resume: Optional[str] = None, final_curves: bool = True, ddp=None) -> dict:
    """Train (or resume) one model; with cfg.out write checkpoints, metrics.json and plots there.

    ddp: a nhl_fast.app.ddp.DDPContext (under torchrun): data-parallel training, sharded evaluation, only
    rank 0 writes. Returns the result dict written to metrics.json (final evaluation of the best model included).
    """
    reporter = reporter or Reporter()
    device = resolve_device(cfg.device) if ddp is None else ddp.device
    run = RunState()
    ckpt = None
    if resume:
        ckpt = load_checkpoint(resume)
        if ckpt.optimizer is None:
            raise ValueError(f"--resume {resume}: this checkpoint holds no optimizer state (resume from last.safetensors)")
        keep = {"epochs": cfg.epochs or ckpt.config["epochs"], "device": cfg.device, "out": cfg.out or ckpt.config.get("out"),
                "workers": cfg.workers}
        cfg = TrainConfig.from_dict({**ckpt.config, **keep})
        run = RunState(**{k: ckpt.state[k] for k in ("epoch", "history", "best_map", "best_epoch", "train_time_s")})
    data = data or load_training_data(cfg)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    mcfg = model_config(cfg, data)
    model = build_model(mcfg, weights=None if ckpt else cfg.weights).to(device)
    objective = make_objective(cfg, data).to(device)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(objective.parameters()), lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)
    trained = model if ddp is None else ddp.wrap(model, objective)  # DDP: the objective sees the global batch
    if ckpt is not None:
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.optimizer)
        if ckpt.objective:
            objective.load_state_dict(ckpt.objective)
        _set_rng_state(gen, ckpt.rng)
        reporter.info(f"resumed from {resume} at epoch {run.epoch}/{cfg.epochs}")
    out = cfg.out if ddp is None or ddp.rank == 0 else None  # files: rank 0 only
    if out:
        os.makedirs(out, exist_ok=True)
        atomic_write_json(os.path.join(out, "config.json"), mcfg)
    eval_every = cfg.eval_every or max(1, math.ceil(cfg.epochs / 5))
    reporter.info(data.describe() + (f" ({'; '.join(data.notes)})" if data.notes else ""))
    reporter.info(f"model: {mcfg['backbone']} backbone + NestedHashLayer{tuple(cfg.bits)}, {cfg.base_loss} loss"
                  f"{' (unsupervised: two views, labels only evaluate)' if cfg.unsupervised else ''}, "
                  f"adaptive={cfg.adaptive}, distill={cfg.distill}, device={device}")

    def save_last(path_name="last.safetensors"):
        if not out:
            return None
        path = os.path.join(out, path_name)
        save_checkpoint(path, mcfg, model.state_dict(), state={**asdict(run), "kind": "resumable"},
                        optimizer_state=optimizer.state_dict(), rng=_rng_state(gen),
                        objective_state=objective.state_dict())
        return path

    views = None
    if cfg.unsupervised:
        from nhl_fast.app.unsupervised import make_views, two_view_loss

        views = make_views(cfg, data)
    best_state = None
    epochs_bar = reporter.bar(total=cfg.epochs, initial=run.epoch, desc="epochs", unit="ep", leave=True)
    try:
        for epoch in range(run.epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            n_batches = (math.ceil(len(data.train) / cfg.batch_size) if ddp is None
                         else ddp.n_batches(data.train, cfg.batch_size))
            loss_sum = torch.zeros((), device=device)
            w_sum = torch.zeros(len(cfg.bits), device=device)
            steps = 0
            if hasattr(objective.base, "set_epoch"):  # the code memory's warm-up counts epochs from 0
                objective.base.set_epoch(epoch - 1)
            ours = (data.train.batches(cfg.batch_size, shuffle=True, generator=gen, workers=cfg.workers) if ddp is None
                    else ddp.batches(data.train, cfg.batch_size, epoch=epoch, seed=cfg.seed, workers=cfg.workers))
            batches = reporter.bar(ours, total=n_batches, desc=f"epoch {epoch}", unit="batch")
            for x, y, idx in batches:
                x, y, idx = x.to(device, non_blocking=True), y.to(device), idx.to(device)
                if x.shape[0] < 2:  # batch norm and pairwise losses need two samples
                    continue
                if views is None:
                    _, u = trained(x)
                    loss = objective(u, y, idx)
                else:  # labels unused: two views, z = backbone features
                    loss = two_view_loss(trained, objective, views, x, idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                w_sum += objective.last_weights.detach().to(device)
                steps += 1
                if ddp is not None and ddp.stop_requested():  # Ctrl-C on any rank: every rank stops here
                    raise KeyboardInterrupt
                if reporter.bars and steps % 10 == 0:  # the only host syncs: for the bar, and only when drawn
                    batches.set_postfix(loss=f"{loss_sum.item() / steps:.4f}",
                                        w=" ".join(f"{v:.2f}" for v in (w_sum / steps).tolist()))
            run.train_time_s += time.perf_counter() - t0
            rec = {"epoch": epoch, "loss": loss_sum.item() / max(steps, 1),
                   "weights": (w_sum / max(steps, 1)).tolist(), "time_s": time.perf_counter() - t0}
            if epoch % eval_every == 0 or epoch == cfg.epochs:
                res = evaluate_model(model, data, cfg.bits, topk=cfg.topk, ties=cfg.ties, device=device,
                                     workers=cfg.workers, ddp=ddp)
                rec["map"] = res["map"]
                mean_map = sum(res["map"]) / len(res["map"])
                if mean_map > run.best_map:
                    run.best_map, run.best_epoch = mean_map, epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if out:
                        save_checkpoint(os.path.join(out, "best.safetensors"), mcfg, best_state,
                                        state={"kind": "best", "epoch": epoch, "map": res["map"]})
                reporter.info(f"epoch {epoch:3d}  loss {rec['loss']:.4f}  mAP " +
                              "  ".join(f"{b}:{m:.3f}" for b, m in zip(cfg.bits, res["map"])))
            run.history.append(rec)
            run.epoch = epoch
            save_last()
            epochs_bar.update(1)
            epochs_bar.set_postfix(loss=f"{rec['loss']:.4f}")
    except KeyboardInterrupt:
        path = save_last()
        epochs_bar.close()
        raise Interrupted(path or "") from None
    epochs_bar.close()

    # Final evaluation of the best model (from this session, or from disk when resumed past the best epoch).
    if best_state is None and cfg.out and os.path.exists(os.path.join(cfg.out, "best.safetensors")):
        best_state = load_checkpoint(os.path.join(cfg.out, "best.safetensors")).model
    if best_state is not None:
        model.load_state_dict(best_state)
    final = evaluate_model(model, data, cfg.bits, topk=cfg.topk, ties=cfg.ties, device=device,
                           curves=final_curves, workers=cfg.workers, ddp=ddp)
    result = {"config": mcfg, "data": data.describe(), "best_epoch": run.best_epoch, "epochs": run.epoch,
              "train_time_s": run.train_time_s, "final": final, "history": run.history}
    if out:
        atomic_write_json(os.path.join(out, "metrics.json"), result)
        if final_curves:
            write_plots(out, result)
    return result


def write_plots(out: str, result: dict) -> list:
    bits = result["final"]["bits"]
    hist = result["history"]
    epochs = [h["epoch"] for h in hist]
    paths = [
        plots.map_vs_bits(os.path.join(out, "map_vs_bits.png"), {"NHL": (bits, result["final"]["map"])}),
        plots.pr_curves(os.path.join(out, "pr_curves.png"),
                        {int(b): (c["precision"], c["recall"]) for b, c in result["final"]["pr_curves"].items()}),
        plots.loss_curve(os.path.join(out, "loss.png"), epochs, [h["loss"] for h in hist]),
        plots.weight_curves(os.path.join(out, "weights.png"), epochs,
                            {b: [h["weights"][i] for h in hist] for i, b in enumerate(bits)}),
    ]
    return paths


def summary(result: dict) -> str:
    f = result["final"]
    k = "all" if f["topk"] is None else f["topk"]
    rows = {f"mAP@{k}": f["map"]}
    if "precision_at_radius" in f:
        rows[f"P@r{f['radius']}"] = f["precision_at_radius"]
    return table(f["bits"], rows, first=result["config"]["data_name"])
