"""MultiIndexHammingIndex: exact sub-linear Hamming top-k by multi-index hashing, one set of tables for every length.

Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012 / TPAMI 2014) cuts the code into m disjoint
substrings with one hash table each; a code within distance r of the query has some substring within
floor(r / m) of the query's (pigeonhole), so the search probes every key within a growing radius of each
query substring, verifies the candidates by popcount and stops once the k-th best distance is within the
radius already proven complete (csrc/kernels/mih.h). The result is exactly ``nf.topk``'s, ties included.

Nested codes: the substrings are cut along the code and (where one is near) at the nested lengths, so the
prefix of length b holds the first few substrings whole; the search at length b uses those, and the bits past
them are only verified (pigeonhole holds on any subset of the bits). A length shorter than the first
substring (8 or 16 bits at large N, where buckets hold N / 2^b codes and hashing cannot help) is answered by
the flat ``nf.topk``, as is any (query, length) whose search runs past ``flat_fraction * N`` probes and
candidates (large k, or codes too dense for the radius to stay small) -- both exact.

Memory: the codes, plus per table its ids (4 bytes a code) and a directory of 2^w + 1 offsets; a
substring indexes at most floor(log2 N) - 2 of its bits (then the directory is at most N bytes), so the
tables of the default m stay within 2x the 64-bit codes (``memory_bytes()``).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Union

import torch

from nhl_fast import _checks
from nhl_fast._dispatch import extension
from nhl_fast._files import read_codes, write_codes
from nhl_fast.engine import topk

FORMAT = "nhl_fast.MultiIndexHammingIndex"
VERSION = 1
PILOT = 32  # queries searched first to learn whether hashing pays at a length


def plan_substrings(n: int, bits: Sequence[int], tables: Union[None, int, Sequence[int]] = None) -> list[tuple[int, int]]:
    """The substrings (start, width) for a database of n codes and the nested lengths `bits`.

    tables: None -> m = round(b / log2 n) pieces of the longest length b (the paper's choice; fewer where the
    tables would pass 2x the codes: at most 3 for 64-bit codes), each cut
    moved onto a nested length when one is within log2(n) / 4 bits; an int -> that many pieces; a sequence
    -> the cut positions themselves (increasing, the last one <= the longest length). Each substring indexes
    the first min(piece, max(4, floor(log2 n) - 2)) bits of its piece.
    """
    b_max = bits[-1]
    log_n = math.log2(max(n, 2))
    cap = int(min(26, max(4, math.floor(log_n) - 2)))
    if tables is None or isinstance(tables, int):
        if tables is None:
            # the paper's m, capped so the tables (4 bytes an id + the directory) stay within 2x the codes
            per_table = 4 + 4 * 2 ** cap / max(n, 1)
            m = max(1, min(round(b_max / log_n), math.floor(16 * ((b_max + 63) // 64) / per_table)))
        else:
            m = tables
        m = min(m, b_max, 64)
        cuts = [round(i * b_max / m) for i in range(1, m + 1)]
        for i in range(m - 1):  # snap to a nested length nearby, keeping the cuts increasing
            prev = cuts[i - 1] if i else 0
            near = [b for b in bits if prev < b < cuts[i + 1] and abs(b - cuts[i]) <= log_n / 4]
            if near:
                cuts[i] = min(near, key=lambda b: abs(b - cuts[i]))
    else:
        cuts = list(tables)
    starts = [0] + cuts[:-1]
    return [(s, min(c - s, cap)) for s, c in zip(starts, cuts)]


def _tables_arg(tables):
    if tables is None:
        return None
    if isinstance(tables, bool) or not (isinstance(tables, int) or isinstance(tables, (list, tuple))):
        raise TypeError(f"tables must be None, an int (number of substrings) or a list of cut positions, got {tables!r}")
    if isinstance(tables, int):
        if not 1 <= tables <= 64:
            raise ValueError(f"tables={tables}: the number of substrings must be in 1..64")
        return tables
    cuts = [int(c) for c in tables]
    if not cuts or len(cuts) > 64 or any(b <= a for a, b in zip([0] + cuts, cuts)):
        raise ValueError(f"tables={list(tables)}: cut positions must be 1..64 strictly increasing positive ints")
    return cuts


def _mih_ext():
    ext, why = extension()
    if ext is None or not hasattr(ext, "mih_search"):
        raise RuntimeError(f"MultiIndexHammingIndex needs the compiled extension with mih_search: "
                           f"{why or 'rebuild nhl_fast._C'}")
    return ext


class MultiIndexHammingIndex:
    """Exact top-k over nested code lengths by multi-index hashing: index.add(packed); index.search(q, k).

    bits: the nested lengths searched by default (any lengths up to the longest work in ``search``).
    tables: None (m from N and the longest length, as in the paper), an int m, or a list of cut positions.
    flat_fraction: a (query, length) whose work (buckets probed + candidates verified) passes this fraction of
    N is answered by the flat scan instead (None: never).
    """

    def __init__(self, bits: Iterable[int] = (8, 16, 32, 64, 128), tables: Union[None, int, Sequence[int]] = None,
                 *, flat_fraction: Optional[float] = 0.01):
        self.bits = _checks.increasing_lengths(bits, "bits")
        self.words = (self.bits[-1] + 63) // 64
        self.tables = _tables_arg(tables)
        if isinstance(self.tables, list) and self.tables[-1] > self.bits[-1]:
            raise ValueError(f"tables={self.tables}: the last cut must be <= the longest length {self.bits[-1]}")
        if flat_fraction is not None and not (isinstance(flat_fraction, (int, float)) and flat_fraction > 0):
            raise ValueError(f"flat_fraction must be a positive number or None, got {flat_fraction!r}")
        self.flat_fraction = flat_fraction
        self._codes = torch.empty(0, self.words, dtype=torch.int64)
        self._pending: list[torch.Tensor] = []
        self._built = None  # (substrings, offsets, ids) for the codes as they are now
        self.last_stats: dict = {}

    # ------------------------------------------------------------ contents

    @property
    def ntotal(self) -> int:
        return self._codes.shape[0] + sum(p.shape[0] for p in self._pending)

    @property
    def codes(self) -> torch.Tensor:
        """(ntotal, W) the stored codes in id order."""
        if self._pending:
            self._codes = torch.cat([self._codes] + self._pending)
            self._pending = []
        return self._codes

    def add(self, packed: torch.Tensor) -> None:
        """Append (n, W) int64 packed codes; their ids are ntotal .. ntotal + n - 1 (tables rebuilt at the next search)."""
        packed = _checks.packed_codes(packed, "packed")
        if packed.shape[1] != self.words:
            raise ValueError(f"packed has {packed.shape[1]} words per code, the index holds {self.words} "
                             f"({self.bits[-1]}-bit codes)")
        if packed.device.type != "cpu":
            raise ValueError(f"packed must be a CPU tensor (the index runs on the CPU), got {packed.device}")
        if self.ntotal + packed.shape[0] >= 2 ** 31:
            raise ValueError("MultiIndexHammingIndex holds fewer than 2^31 codes")
        self._pending.append(packed.contiguous().clone())
        self._built = None

    def remove(self, ids) -> int:
        """Remove the codes of these ids; the codes after them move down (ids stay dense, as in faiss
        IndexFlat.remove_ids). Returns how many were removed."""
        ids = torch.as_tensor(ids)
        if ids.numel() == 0:
            return 0
        if ids.dtype in (torch.bool, torch.float16, torch.float32, torch.float64) or ids.is_complex():
            raise TypeError(f"ids must be integer ids, got dtype {ids.dtype}")
        ids = ids.reshape(-1).to(torch.int64)
        n = self.ntotal
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise ValueError(f"ids must be in [0, {n}), got values in [{int(ids.min())}, {int(ids.max())}]")
        keep = torch.ones(n, dtype=torch.bool)
        keep[ids] = False
        removed = n - int(keep.sum())
        if removed:
            self._codes = self.codes[keep].contiguous()
            self._built = None
        return removed

    def reset(self) -> None:
        self._codes = self._codes[:0]
        self._pending = []
        self._built = None

    # ------------------------------------------------------------ tables

    def substrings(self) -> list[tuple[int, int]]:
        """The (start, width) of each table for the codes held now."""
        return plan_substrings(self.ntotal, self.bits, self.tables)

    def _tables(self):
        if self._built is None:
            codes = self.codes
            subs = self.substrings()
            offsets, ids = _mih_ext().mih_build(codes, [s for s, _ in subs], [w for _, w in subs])
            self._built = (subs, offsets, ids)
        return self._built

    def build(self) -> None:
        """Build the tables now (search builds them when the codes changed since the last build)."""
        if self.ntotal == 0:
            raise ValueError("the index is empty: add codes before building")
        self._tables()

    def memory_bytes(self) -> dict:
        """Bytes held: the codes and the tables (ids + offsets; built at the next search if stale)."""
        codes = self.codes
        tables = 0
        if self._built is not None:
            tables = self._built[1].numel() * 4 + self._built[2].numel() * 4
        return {"codes": codes.numel() * 8, "tables": tables}

    # ------------------------------------------------------------ search

    def search(self, q: torch.Tensor, k: int, bits: Optional[Iterable[int]] = None):
        """(L, Q, k) int32 distances and int64 ids per length: exactly ``nf.topk(q, codes, k, bits)``."""
        n = self.ntotal
        if n == 0:
            raise ValueError("the index is empty: add codes before searching")
        q = _checks.packed_codes(q, "q", empty_ok=True)
        if q.shape[1] != self.words:
            raise ValueError(f"q has {q.shape[1]} words per code, the index holds {self.words}")
        bits = _checks.bit_lengths(self.bits if bits is None else bits, self.words, "bits")
        k = _checks.positive_k(k, n)
        q = q.cpu().contiguous()
        Q, L = q.shape[0], len(bits)
        dist = torch.empty(L, Q, k, dtype=torch.int32)
        idx = torch.empty(L, Q, k, dtype=torch.int64)
        if Q == 0:
            return dist, idx
        subs, offsets, ids = self._tables()
        budget = -1 if self.flat_fraction is None else int(self.flat_fraction * n) + 64
        inside = [sum(1 for s, w in subs if s + w <= b) for b in bits]
        hashed = [l for l in range(L) if inside[l] > 0 and (budget < 0 or k < budget)]
        flat = [l for l in range(L) if l not in hashed]
        codes = self.codes
        stats = {"flat_lengths": [bits[l] for l in flat], "fallback": {bits[l]: 0 for l in hashed},
                 "work_mean": {}}
        redo = {l: [] for l in hashed}  # query rows each hashed length hands to the flat scan
        work_sum = {l: 0.0 for l in hashed}
        # A pilot of PILOT queries first: a length where most of them give up (random codes, large k) sends
        # the other queries straight to the flat scan instead of paying the budget for each.
        pilot = Q if budget < 0 or Q <= 2 * PILOT else PILOT
        for lo, hi in ((0, pilot), (pilot, Q)):
            if not hashed or lo >= hi:
                continue
            d, i, gave_up, work = _mih_ext().mih_search(
                q[lo:hi], codes, offsets, ids, [s for s, _ in subs], [w for _, w in subs],
                [bits[l] for l in hashed], [inside[l] for l in hashed], k, budget)
            for j, l in enumerate(hashed):
                dist[l, lo:hi], idx[l, lo:hi] = d[j], i[j]
                work_sum[l] += float(work[j].double().sum())
                redo[l].append(gave_up[j].nonzero().flatten() + lo)
            if lo == 0 and hi < Q:
                given_up = [l for j, l in enumerate(hashed) if 2 * int(gave_up[j].sum()) > hi]
                for l in given_up:
                    redo[l].append(torch.arange(hi, Q))
                hashed = [l for l in hashed if l not in given_up]
        for l, rows in redo.items():
            rows = torch.cat(rows) if rows else torch.empty(0, dtype=torch.int64)
            stats["fallback"][bits[l]] = int(rows.numel())
            stats["work_mean"][bits[l]] = work_sum[l] / Q
            if rows.numel():  # these queries probe too much: the flat scan is cheaper and as exact
                fd, fi = topk(q[rows], codes, k, [bits[l]])
                dist[l, rows], idx[l, rows] = fd[0], fi[0]
        if flat:
            fd, fi = topk(q, codes, k, [bits[l] for l in flat])
            for j, l in enumerate(flat):
                dist[l], idx[l] = fd[j], fi[j]
        self.last_stats = stats
        return dist, idx

    # ------------------------------------------------------------ files

    def save(self, path: str) -> None:
        """Write codes + config to a safetensors file (temp file then rename: never a torn file).

        The tables are not stored: load rebuilds them (a counting sort, seconds at 10^7 codes)."""
        meta = {"format": FORMAT, "version": VERSION, "bits": list(self.bits), "tables": self.tables,
                "flat_fraction": self.flat_fraction, "ntotal": self.ntotal}
        write_codes(path, self.codes, "nhl_fast_mih", meta, "MultiIndexHammingIndex")

    @classmethod
    def load(cls, path: str) -> "MultiIndexHammingIndex":
        meta, codes = read_codes(path, "nhl_fast_mih", "MultiIndexHammingIndex")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a MultiIndexHammingIndex file (format {meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise ValueError(f"{path}: MultiIndexHammingIndex file version {meta.get('version')!r}, this library "
                             f"reads version {VERSION}")
        try:
            index = cls(meta["bits"], meta["tables"], flat_fraction=meta["flat_fraction"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: corrupt MultiIndexHammingIndex header ({e})") from None
        if codes.dtype != torch.int64 or codes.dim() != 2 or codes.shape[1] != index.words \
                or codes.shape[0] != meta.get("ntotal"):
            raise ValueError(f"{path}: corrupt MultiIndexHammingIndex file (codes {tuple(codes.shape)} {codes.dtype}, "
                             f"header says {meta.get('ntotal')} codes of {index.words} words)")
        if codes.shape[0]:
            index.add(codes)
        return index

    def __repr__(self) -> str:
        return f"MultiIndexHammingIndex(bits={self.bits}, tables={self.tables}, ntotal={self.ntotal})"
