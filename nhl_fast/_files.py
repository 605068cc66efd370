"""Index files: packed codes + a JSON header in one safetensors file, written to a temp file then renamed.

safetensors is not a library dependency (the app extra has it); the indexes import it only to save or load.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch


def _needs(what: str) -> str:
    return (f"{what}.save/load need the safetensors package, which the library does not depend on: "
            "pip install safetensors (or the app extra: pip install 'nhl-fast[app]')")


def write_codes(path: str, codes: torch.Tensor, key: str, header: dict, what: str) -> None:
    """codes under "codes", header as JSON under metadata[key]; never a torn file at `path`."""
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise ImportError(_needs(what)) from e
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"codes": codes.cpu().contiguous()}, tmp, metadata={key: json.dumps(header)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_codes(path: str, key: str, what: str) -> tuple[dict, torch.Tensor]:
    """(header, codes) of a file written by write_codes; ValueError naming `what` when it is not one."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as e:
        raise ImportError(_needs(what)) from e
    try:
        with safe_open(path, framework="pt") as f:
            header = json.loads((f.metadata() or {})[key])
            codes = f.get_tensor("codes")
    except (KeyError, ValueError, OSError, SafetensorError) as e:
        raise ValueError(f"{path}: not a {what} file ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a {what} file (its header is not a JSON object)")
    return header, codes
