"""Input validation shared by the public functions: clear errors that name the argument."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

STANDARD_BITS = (8, 16, 32, 64, 128, 256, 512, 1024)


def packed_codes(t, name: str) -> torch.Tensor:
    """A packed-code argument: a 2-D int64 tensor (N, W) with N >= 1 and W >= 1."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of packed codes, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 packed codes (use nhl_fast.pack), got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, W) packed codes, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has no codes (shape {tuple(t.shape)})")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no words (shape {tuple(t.shape)})")
    return t


def query_and_database(q, db) -> tuple[torch.Tensor, torch.Tensor]:
    q, db = packed_codes(q, "q"), packed_codes(db, "db")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"q and db must have the same number of words, got q {tuple(q.shape)} and db {tuple(db.shape)}")
    if q.device != db.device:
        raise ValueError(f"q and db must be on the same device, got q on {q.device} and db on {db.device}")
    return q, db


def bit_lengths(bits: Optional[Iterable[int]], words: int, name: str = "bits") -> tuple[int, ...]:
    """Strictly increasing code lengths in [1, 64*words]; None = the standard lengths that fit."""
    if bits is None:
        fit = tuple(b for b in STANDARD_BITS if b <= 64 * words)
        return fit if fit else (64 * words,)
    bits = increasing_lengths((bits,) if isinstance(bits, int) else bits, name)
    if bits[-1] > 64 * words:
        raise ValueError(f"{name}={bits}: every length must be in [1, {64 * words}] (64 x {words} words)")
    return bits


def increasing_lengths(bits, name: str = "bit_list") -> tuple[int, ...]:
    """A non-empty, strictly increasing sequence of code lengths >= 1 (each code a prefix of the next)."""
    try:
        bits = tuple(bits)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(bits).__name__}") from None
    if not bits:
        raise ValueError(f"{name} must not be empty")
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int):
            raise TypeError(f"{name} must contain ints, got {b!r}")
    if bits[0] < 1:
        raise ValueError(f"{name}={bits}: every length must be >= 1")
    if any(a >= b for a, b in zip(bits, bits[1:])):
        raise ValueError(f"{name}={bits} must be strictly increasing (each code is a prefix of the next)")
    return bits


def positive_k(k, n: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k < 1 or k > n:
        raise ValueError(f"{name}={k} must be in [1, N] with N={n} database codes")
    return k


def real_codes(codes, name: str = "codes") -> torch.Tensor:
    """Codes to pack: a 2-D real or bool tensor with no NaN."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(codes).__name__}")
    if not (codes.dtype.is_floating_point or codes.dtype == torch.bool):
        raise TypeError(f"{name} must be a floating-point or bool tensor, got dtype {codes.dtype}")
    if codes.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, bits), got shape {tuple(codes.shape)}")
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(codes.shape)})")
    if codes.dtype.is_floating_point and not torch.compiler.is_compiling() and bool(torch.isnan(codes).any()):
        raise ValueError(f"{name} contains NaN: a NaN has no sign to pack")
    return codes


def same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")

