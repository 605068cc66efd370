"""Checkpoints: one safetensors file holding the weights, with the JSON config in its header.

One file per checkpoint keeps saving atomic: it is written to a temporary file in the
same directory, flushed to disk, then renamed over the old one (os.replace), so a crash
or Ctrl-C mid-save never leaves a half-written or lost checkpoint. A resumable
checkpoint also holds the optimizer state (its tensors as ``optim/<param>/<name>``,
the rest in the header), the epoch, the history and the RNG states.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

FORMAT = "nhl_fast.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the reason."""


@dataclass
class Checkpoint:
    config: dict
    model: dict                      # parameter name -> tensor
    state: dict = field(default_factory=dict)   # epoch, history, best, ... (resumable checkpoints)
    optimizer: Optional[dict] = None  # an optimizer state_dict
    rng: dict = field(default_factory=dict)     # name -> uint8 state tensor
    objective: dict = field(default_factory=dict)  # the objective's buffers (loss memory banks, centres)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file + fsync + os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _flatten_optimizer(sd: dict) -> tuple[dict, dict]:
    tensors, rest = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"optim/{pid}/{k}"] = v
            else:
                rest.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": rest}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for key, t in tensors.items():
        _, pid, name = key.split("/", 2)
        state.setdefault(int(pid), {})[name] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str, config: dict, model_state: dict, *, state: Optional[dict] = None,
                    optimizer_state: Optional[dict] = None, rng: Optional[dict] = None,
                    objective_state: Optional[dict] = None) -> None:
    from safetensors.torch import save

    tensors = {f"model/{k}": v.detach().cpu().contiguous().clone() for k, v in model_state.items()}
    meta = {"format": FORMAT, "config": json.dumps(config), "state": json.dumps(state or {})}
    if optimizer_state is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        tensors.update({k: v.detach().cpu().contiguous().clone() for k, v in opt_tensors.items()})
        meta["optimizer"] = json.dumps(opt_meta)
    for name, t in (objective_state or {}).items():
        tensors[f"objective/{name}"] = t.detach().cpu().contiguous().clone()
    for name, t in (rng or {}).items():
        tensors[f"rng/{name}"] = t.detach().cpu().contiguous().clone()
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; CheckpointError (file untouched) if it is not one."""
    from safetensors import safe_open

    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    if os.path.isdir(path):
        for name in ("best.safetensors", "last.safetensors"):
            if os.path.exists(os.path.join(path, name)):
                return load_checkpoint(os.path.join(path, name))
        raise CheckpointError(f"{path}: directory holds no best.safetensors or last.safetensors")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # truncated, overwritten, not safetensors at all
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated safetensors file: "
                              f"{type(e).__name__}: {e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file but not an nhl_fast checkpoint "
                              f"(header format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        config, state = json.loads(meta["config"]), json.loads(meta.get("state", "{}"))
        opt_meta = json.loads(meta["optimizer"]) if "optimizer" in meta else None
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: checkpoint header is damaged ({type(e).__name__}: {e})") from e
    groups: dict = {"model": {}, "optim": {}, "rng": {}, "objective": {}}
    for k, v in tensors.items():
        head, _, rest = k.partition("/")
        groups.setdefault(head, {})[rest] = v
    optimizer = _unflatten_optimizer({f"optim/{k}": v for k, v in groups["optim"].items()}, opt_meta) \
        if opt_meta is not None else None
    return Checkpoint(config=config, model=groups["model"], state=state, optimizer=optimizer, rng=groups["rng"],
                      objective=groups["objective"])
