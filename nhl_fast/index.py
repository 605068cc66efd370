"""NestedHammingIndex: an exact multi-length Hamming index over packed codes.

Codes are added in batches (the database grows by amortised doubling, like a vector), and
`search` runs the engine's one-pass multi-length top-k over everything added so far.
`save`/`load` use safetensors, written to a temp file then renamed.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from nhl_fast import _checks
from nhl_fast._files import read_codes, write_codes
from nhl_fast.engine import topk
from nhl_fast.mih import MultiIndexHammingIndex  # noqa: F401  (the exact sub-linear index; its code is in mih.py)



class NestedHammingIndex:
    """Exact top-k over nested code lengths: index.add(packed); index.search(q, k) -> (L, Q, k)."""

    def __init__(self, bits: Iterable[int], device: str | torch.device = "cpu", backend: Optional[str] = None):
        self.bits = _checks.increasing_lengths(bits, "bits")
        self.words = (self.bits[-1] + 63) // 64
        self.device = torch.device(device)
        self.backend = backend
        self._codes = torch.empty(0, self.words, dtype=torch.int64, device=self.device)
        self.ntotal = 0

    def add(self, packed: torch.Tensor) -> None:
        """Append (n, W) int64 packed codes; their ids are ntotal .. ntotal + n - 1."""
        packed = _checks.packed_codes(packed, "packed")
        if packed.shape[1] != self.words:
            raise ValueError(f"packed has {packed.shape[1]} words per code, the index holds {self.words} "
                             f"({self.bits[-1]}-bit codes)")
        n = packed.shape[0]
        if self.ntotal + n > self._codes.shape[0]:  # amortised doubling: adds stay O(n) overall
            grown = torch.empty(max(2 * self._codes.shape[0], self.ntotal + n), self.words,
                                dtype=torch.int64, device=self.device)
            grown[: self.ntotal] = self._codes[: self.ntotal]
            self._codes = grown
        self._codes[self.ntotal: self.ntotal + n] = packed.to(self.device)
        self.ntotal += n

    @property
    def codes(self) -> torch.Tensor:
        """(ntotal, W) view of the stored codes."""
        return self._codes[: self.ntotal]

    def search(self, q: torch.Tensor, k: int, bits: Optional[Iterable[int]] = None):
        """(L, Q, k) int32 distances and int64 ids per length (ascending distance, ties by lower id)."""
        if self.ntotal == 0:
            raise ValueError("the index is empty: add codes before searching")
        bits = self.bits if bits is None else bits
        return topk(q.to(self.device), self.codes, k, bits, backend=self.backend)

    def reset(self) -> None:
        self._codes = self._codes[:0]
        self.ntotal = 0

    def save(self, path: str, *, metadata: Optional[dict] = None) -> None:
        """Write codes + config to a safetensors file (temp file then rename: never a torn file).
        metadata: extra JSON-able entries stored with the config (the sharded index records its shard)."""
        write_codes(path, self.codes, "nhl_fast_index", {**(metadata or {}), "bits": list(self.bits)},
                    "NestedHammingIndex")

    @staticmethod
    def read_file(path: str) -> tuple[dict, torch.Tensor]:
        """(metadata, codes) of a file written by save; ValueError naming the file when it is not one."""
        meta, codes = read_codes(path, "nhl_fast_index", "NestedHammingIndex")
        try:
            _checks.increasing_lengths(meta["bits"], "bits")
            _checks.packed_codes(codes, "codes", empty_ok=True)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a NestedHammingIndex file ({e})") from None
        return meta, codes

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu", backend: Optional[str] = None) -> "NestedHammingIndex":
        meta, codes = cls.read_file(path)
        index = cls(meta["bits"], device=device, backend=backend)
        if codes.shape[0]:
            index.add(codes)
        return index

    def __repr__(self) -> str:
        return f"NestedHammingIndex(bits={self.bits}, ntotal={self.ntotal}, device={self.device})"
