"""Past one machine, on torch.distributed (gloo on CPU, nccl on CUDA; processes started by torchrun).

Sharded search. Every rank holds a contiguous shard of the database; global id = shard offset +
local id, the offsets from one all_gather of the shard sizes (rank order). ``topk`` runs the local
multi-length top-k, all_gathers (distance, global id) packed in one int64 key per candidate
(``distance << 50 | global id << 1``: sorting keys IS the library's order, ascending distance, ties
to the lower global id) and merges: every rank gets the result ``nf.topk`` gives on the
concatenated database. Communication: world * L * Q * k keys per rank, never O(N).

Exact sharded evaluation (``shard="database"``):
* per-distance histograms (all / relevant items) add across ranks: tie-aware AP, precision within a
  radius and PR curves are their closed forms after one all_reduce -- the same numbers as one process;
* index-ordered AP (ties by database index): an item's global rank is N_<d (all ranks) + the items of
  its bin on earlier ranks + its position in its bin here (an exclusive scan over ranks of the
  histograms, from one all_gather); each rank sums the precisions of its relevant items, one
  all_reduce adds them;
* index-ordered AP@k with k <= N / 64: from the merged top-k, each candidate's key carrying its
  relevance bit (computed on the rank that holds its label).
``shard="query"``: every rank holds all of the database and a slice of the queries; the sum of AP.

DDP training: :class:`GlobalBatch` makes :class:`nhl_fast.NHLObjective` see the global batch (codes
all_gathered with gradient, labels, indices and the head's input without), so the pairwise terms,
memory banks and adaptive weights are those of one process with the whole batch.

Failures: every call first exchanges its arguments' summary (all_gather_object), so a rank whose
input is bad makes every rank raise the same ValueError/TypeError, prefixed by that rank; a rank that
dies or runs out of memory inside a collective makes the others raise :class:`RankFailure` (when
the connection drops, or after the process group's timeout).
"""
from __future__ import annotations

import datetime
import os
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist

from nhl_fast import _checks, metrics
from nhl_fast._dispatch import dispatch
from nhl_fast.engine import topk as _local_topk
from nhl_fast.index import NestedHammingIndex
from nhl_fast.layers import NestedCodes, nested_codes
from nhl_fast.reference import relevance

SHARDS = ("database", "query")
_DIST_SHIFT = 50             # key = distance << 50 | global id << 1 | relevant
_MAX_IDS = 1 << (_DIST_SHIFT - 1)
_SENTINEL = torch.iinfo(torch.int64).max  # pads a shard with fewer than k codes: sorts after every real key
_CHUNK = 1 << 22             # elements per temporary tensor (gathered keys or histograms, distances)
TOPK_PATH_MAX_FRACTION = 64  # index-ordered AP@k from the merged top-k when k * this <= N (as the C++ op)


class RankFailure(RuntimeError):
    """A collective failed: another rank died, ran out of memory or raised, or the group's timeout passed."""


# ---------------------------------------------------------------- process group


def _world(group) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("nhl_fast.distributed needs an initialised process group: start the processes with "
                           "torchrun and call nhl_fast.distributed.init() (or torch.distributed.init_process_group)")
    return dist.get_rank(group), dist.get_world_size(group)


def init(device: str | torch.device = "auto", timeout_s: Optional[float] = None) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment):
    nccl when this process trains on CUDA, gloo on CPU; returns this rank's device (cuda:LOCAL_RANK).
    timeout_s: the group's timeout (default: NHL_DIST_TIMEOUT seconds, else torch's default)."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if str(device) == "auto" else device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout_s = timeout_s if timeout_s is not None else float(os.environ.get("NHL_DIST_TIMEOUT", "0")) or None
        kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", **kwargs)
    return device


def _comm_device(group) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")


def _collective(fn: Callable, *args, what: str, group=None, **kwargs):
    """Run one collective; a failure on another rank becomes a RankFailure naming this call."""
    try:
        return fn(*args, group=group, **kwargs)
    except RankFailure:
        raise
    except RuntimeError as e:  # DistBackendError, gloo's connection errors, timeouts
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RankFailure(f"nhl_fast.distributed.{what}: a collective failed on rank {dist.get_rank(group)} of "
                          f"{dist.get_world_size(group)} (another rank died, ran out of memory or raised, or the "
                          f"process group's timeout passed): {first}") from e


def _all_gather(t: torch.Tensor, what: str, group) -> list[torch.Tensor]:
    """The same-shaped tensor of every rank, in rank order, on t's device."""
    x = t.to(_comm_device(group)).contiguous()
    out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    _collective(dist.all_gather, out, x, what=what, group=group)
    return [o.to(t.device) for o in out]


def _all_reduce(t: torch.Tensor, what: str, group) -> torch.Tensor:
    x = t.to(_comm_device(group)).clone()
    _collective(dist.all_reduce, x, what=what, group=group)
    return x.to(t.device)


def _exchange(what: str, group, local: Callable[[], dict]) -> list[dict]:
    """Every rank's `local()` (a small dict), in rank order. A ValueError/TypeError raised by any rank's
    `local` is raised on every rank, prefixed with the rank at fault: no rank is left waiting."""
    rank, world = _world(group)
    try:
        info = {"error": None, **local()}
    except (ValueError, TypeError) as e:
        info = {"error": (type(e).__name__, str(e))}
    infos: list = [None] * world
    _collective(dist.all_gather_object, infos, info, what=what, group=group)
    for r, i in enumerate(infos):
        if i["error"] is not None:
            kind, message = i["error"]
            raise (TypeError if kind == "TypeError" else ValueError)(f"rank {r}: {message}")
    return infos


def _same(infos: list[dict], key: str, message: str, show: bool = True) -> None:
    values = [i[key] for i in infos]
    if any(v != values[0] for v in values):
        differ = [r for r, v in enumerate(values) if v != values[0]]
        raise ValueError(f"{message}; got {', '.join(f'rank {r}: {v}' for r, v in enumerate(values))}" if show else
                         f"{message}: rank(s) {differ} differ from rank 0")


def _checksum(*tensors: torch.Tensor) -> int:
    """A cheap fingerprint (wrapping int64 sums) to tell that every rank passed the same tensors."""
    return sum(int(t.to(torch.int64).sum()) * (i + 1) for i, t in enumerate(tensors))


# ---------------------------------------------------------------- sharded top-k


def _local_keys(q, db, k, bits, offset, backend, flag: Optional[Callable] = None) -> torch.Tensor:
    """(L, Q, k) keys of this shard's best min(k, n) codes, padded with the sentinel."""
    L, n = len(bits), db.shape[0]
    keys = torch.full((L, q.shape[0], k), _SENTINEL, dtype=torch.int64, device=q.device)
    kk = min(k, n)
    if kk:
        d, i = _local_topk(q, db, kk, bits, backend=backend)
        rel = flag(i).to(torch.int64) if flag is not None else 0
        keys[..., :kk] = (d.to(torch.int64) << _DIST_SHIFT) | ((i + offset) << 1) | rel
    return keys


def _merged_keys(q, db, k, bits, offset, backend, group, what: str, flag: Optional[Callable] = None) -> torch.Tensor:
    """(L, Q, k) globally best keys, identical on every rank: queries in chunks bounding the gathered keys."""
    world = dist.get_world_size(group)
    L, Q = len(bits), q.shape[0]
    out = torch.empty(L, Q, k, dtype=torch.int64, device=q.device)
    step = max(1, _CHUNK // (world * L * k))
    for s in range(0, Q, step):
        chunk_flag = (lambda i, s=s: flag(i, slice(s, s + step))) if flag is not None else None
        mine = _local_keys(q[s:s + step], db, k, bits, offset, backend, chunk_flag)
        every = torch.cat(_all_gather(mine, what, group), -1)  # (L, c, world * k), each rank's part sorted
        # selection, not a sort of world * k keys: ~10x less at 64 ranks (keys are unique but for the padding)
        out[:, s:s + step] = torch.topk(every, k, dim=-1, largest=False, sorted=True).values
    return out


def _shard_summary(q, db, bits, extra: Optional[dict] = None) -> dict:
    """Local checks and what the ranks must agree on."""
    q = _checks.packed_codes(q, "q")
    q, db = _checks.query_and_database(q, db, empty_ok=True)
    bits = _checks.bit_lengths(bits, q.shape[1])
    return {"n": db.shape[0], "q": tuple(q.shape), "bits": tuple(bits), "q_sum": _checksum(q), **(extra or {})}


def _offsets(infos: list[dict], rank: int, k: Optional[int], name: str = "k") -> tuple[int, int]:
    """(this shard's offset, N) after checking that the ranks agree on the queries and lengths."""
    _same(infos, "q", "every rank must pass the same queries q (shape)")
    _same(infos, "q_sum", "every rank must pass the same queries q and q_labels (their values differ)", show=False)
    _same(infos, "bits", "every rank must pass the same bits")
    sizes = [i["n"] for i in infos]
    n = sum(sizes)
    if n == 0:
        raise ValueError("db is empty on every rank: the sharded database holds no codes")
    if n >= _MAX_IDS:
        raise ValueError(f"the sharded database holds {n} codes; at most 2^{_DIST_SHIFT - 1} - 1")
    if k is not None:
        _checks.positive_k(k, n, name)
    return sum(sizes[:rank]), n


def topk(q: torch.Tensor, db_shard: torch.Tensor, k: int, bits: Optional[Iterable[int]] = None, group=None, *,
         backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k over a database sharded across the ranks: (L, Q, k) int32 distances and int64 GLOBAL ids.

    Every rank passes the same queries q and its shard (n_r, W) (any n_r >= 0, in rank order: global id =
    codes on earlier ranks + local id) and gets the same result: ``nf.topk`` on the concatenated database.
    """
    rank, _ = _world(group)
    infos = _exchange("topk", group, lambda: _shard_summary(q, db_shard, bits, {"k": _checks.positive_int(k, "k")}))
    _same(infos, "k", "every rank must pass the same k")
    offset, _ = _offsets(infos, rank, k)
    bits = list(infos[0]["bits"])
    keys = _merged_keys(q.contiguous(), db_shard.contiguous(), k, bits, offset, backend, group, "topk")
    return (keys >> _DIST_SHIFT).to(torch.int32), (keys >> 1) & (_MAX_IDS - 1)


def _broadcast_queries(q: Optional[torch.Tensor], src: int, group, device) -> torch.Tensor:
    """Rank src's queries on every rank (the others pass None)."""
    rank, _ = _world(group)

    def summary():
        if rank != src:
            return {}
        return {"shape": tuple(_checks.packed_codes(q, "q").shape)}

    infos = _exchange("ShardedHammingIndex.search", group, summary)
    buf = q.to(device).contiguous() if rank == src else torch.empty(infos[src]["shape"], dtype=torch.int64, device=device)
    x = buf.to(_comm_device(group))
    global_src = dist.get_global_rank(group, src) if group is not None else src
    _collective(dist.broadcast, x, global_src, what="ShardedHammingIndex.search", group=group)
    return x.to(device)


class ShardedHammingIndex:
    """A :class:`~nhl_fast.NestedHammingIndex` per rank, searched as one: exact, global ids in rank order.

    ``add`` appends to this rank's shard (no communication); ``search`` is collective (every rank calls it)
    and returns the same global result everywhere; with ``src=r`` only rank r needs the queries.
    ``save(path)`` / ``load(path)``: one safetensors file per rank; ``path`` may hold ``{rank}`` and
    ``{world}`` (default: ``<path>.rank<r>-of-<world>``), each written atomically.
    """

    def __init__(self, bits: Iterable[int], group=None, device: str | torch.device = "cpu",
                 backend: Optional[str] = None):
        self.group = group
        self.shard = NestedHammingIndex(bits, device=device, backend=backend)

    bits = property(lambda self: self.shard.bits)
    device = property(lambda self: self.shard.device)

    def add(self, packed: torch.Tensor) -> None:
        """Append codes to this rank's shard (local ids ntotal_local .. ntotal_local + n - 1)."""
        self.shard.add(packed)

    @property
    def ntotal_local(self) -> int:
        return self.shard.ntotal

    def offsets(self) -> list[int]:
        """(collective) the first global id of every rank's shard, and the total as the last entry."""
        sizes = [i["n"] for i in _exchange("ShardedHammingIndex.offsets", self.group, lambda: {"n": self.shard.ntotal})]
        return [sum(sizes[:r]) for r in range(len(sizes) + 1)]

    def search(self, q: Optional[torch.Tensor], k: int, bits: Optional[Iterable[int]] = None, src: Optional[int] = None):
        """(collective) (L, Q, k) int32 distances and int64 global ids, the same on every rank."""
        if src is not None:
            q = _broadcast_queries(q, src, self.group, self.device)
        return topk(q.to(self.device), self.shard.codes, k, self.bits if bits is None else bits, group=self.group,
                    backend=self.shard.backend)

    def _path(self, path: str) -> str:
        rank, world = _world(self.group)
        if "{rank}" in path or "{world}" in path:
            return path.format(rank=rank, world=world)
        return f"{path}.rank{rank}-of-{world}"

    def save(self, path: str) -> str:
        """(collective) write this rank's shard (temp file then rename); raises on every rank if any failed."""
        rank, world = _world(self.group)
        mine = self._path(path)

        def write():
            try:
                self.shard.save(mine, metadata={"shard": {"rank": rank, "world": world}})
            except OSError as e:
                raise ValueError(f"{mine}: cannot write the shard ({e})") from None
            return {}

        _exchange("ShardedHammingIndex.save", self.group, write)
        return mine

    @classmethod
    def load(cls, path: str, group=None, device: str | torch.device = "cpu",
             backend: Optional[str] = None) -> "ShardedHammingIndex":
        """(collective) every rank reads its shard file; a missing or bad file on any rank raises on every rank."""
        rank, world = _world(group)
        index = cls.__new__(cls)
        index.group = group
        mine = index._path(path)
        loaded = {}

        def read():
            meta, codes = NestedHammingIndex.read_file(mine)
            shard = meta.get("shard", {"rank": rank, "world": world})
            if shard != {"rank": rank, "world": world}:
                raise ValueError(f"{mine}: holds shard {shard['rank']} of {shard['world']}, this is rank {rank} of {world}")
            loaded["meta"], loaded["codes"] = meta, codes
            return {"bits": tuple(meta["bits"])}

        infos = _exchange("ShardedHammingIndex.load", group, read)
        _same(infos, "bits", "every shard file must hold codes of the same bits")
        index.shard = NestedHammingIndex(loaded["meta"]["bits"], device=device, backend=backend)
        if loaded["codes"].shape[0]:
            index.shard.add(loaded["codes"])
        return index

    def __repr__(self) -> str:
        return f"ShardedHammingIndex(bits={self.bits}, ntotal_local={self.ntotal_local}, device={self.device})"


# ---------------------------------------------------------------- sharded evaluation


def _prepare_shard(q, db, q_labels, db_labels, bits) -> tuple:
    """metrics._prepare for a shard that may be empty: checked tensors in the ops' form and the summary."""
    summary = _shard_summary(q, db, bits)
    bits = list(summary["bits"])
    if len(bits) > _checks.METRIC_MAX_LENGTHS:
        raise ValueError(f"bits: at most {_checks.METRIC_MAX_LENGTHS} code lengths per call, got {len(bits)}")
    ql, dl = metrics.prepare_labels(q, db, q_labels, db_labels)
    summary.update(labels=(ql.dim(), tuple(q_labels.shape[1:])), q_sum=_checksum(q, ql))
    return q.contiguous(), db.contiguous(), ql, dl, bits, summary


def _agree_database(what, group, q, db, q_labels, db_labels, bits, k=None, k_name="topk", **options):
    """Check locally, exchange, check agreement; returns (q, db, ql, dl, bits, offset, N) on every rank."""
    rank, _ = _world(group)
    box = {}

    def local():
        box["t"] = _prepare_shard(q, db, q_labels, db_labels, bits)
        return {**box["t"][-1], "options": (k, *options.values())}

    infos = _exchange(what, group, local)
    _same(infos, "labels", "every rank must pass labels of one kind and width")
    _same(infos, "options", f"every rank must pass the same {', '.join([k_name, *options])}")
    offset, n = _offsets(infos, rank, k, k_name)
    return (*box["t"][:-1], offset, n)


def _histograms(q, db, ql, dl, bits, backend) -> torch.Tensor:
    """(2, L, Q, max(bits) + 1) int64 local (all, relevant) histograms; zeros for an empty shard."""
    if db.shape[0] == 0:
        return torch.zeros(2, len(bits), q.shape[0], max(bits) + 1, dtype=torch.int64, device=q.device)
    return torch.stack(metrics._histograms(q, db, ql, dl, bits, backend))


def _global_histograms(q, db, ql, dl, bits, backend, group, what):
    tot, rel = _all_reduce(_histograms(q, db, ql, dl, bits, backend), what, group)
    return tot, rel


def _ranked_terms(q, db, ql, dl, bits, base: torch.Tensor, k: Optional[int], backend):
    """Sum of precisions (L, Q) float64 and count (L, Q) int64 of this shard's relevant items ranked <= k.

    base (2, L, Q, B): items (relevant items) of every rank that precede bin d here, i.e. N_<d + the bin's
    items on earlier ranks. An item's global rank = base[0, d] + its 1-based position among the items of bin
    d in this shard; its relevant-rank = base[1, d] + its position among the bin's relevant items here.

    No sort of the shard: its items are cut into blocks of T; per block, histograms (one scatter_add), whose
    exclusive cumsum over blocks counts a bin's items before the block; a relevant item adds the items of its
    bin in its own block up to itself (T comparisons). Cost per (length, query): n + (n / T) B + M T for M
    relevant items, T = sqrt(n B / M) (about 2 n sqrt(B M / n)); the relevant items' in-bin order is a sort
    of the M relevant items only.
    """
    L, Q, n = len(bits), q.shape[0], db.shape[0]
    acc = torch.zeros(L, Q, dtype=torch.float64, device=q.device)
    hits = torch.zeros(L, Q, dtype=torch.int64, device=q.device)
    if n == 0:
        return acc, hits
    B = base.shape[-1]
    hamming = dispatch("hamming", q.device, backend)
    step = max(1, _CHUNK // (n * L))
    for s in range(0, Q, step):
        d = hamming(q[s:s + step], db, bits).long()                       # (L, c, n)
        c = d.shape[1]
        qi, item = relevance(ql[s:s + step], dl).nonzero(as_tuple=True)   # M relevant (query, item), item ascending
        m = qi.numel()
        if m == 0:
            continue
        T = int(max(8, min(n, (n * B * c / m) ** 0.5)))
        blocks = (n + T - 1) // T
        block = torch.arange(n, device=q.device) // T
        counts = torch.zeros(L, c * B * blocks, dtype=torch.int64, device=q.device)  # (L, c, B, blocks)
        cell = (torch.arange(c, device=q.device)[:, None] * B + d) * blocks + block  # (L, c, n)
        counts.scatter_add_(1, cell.view(L, -1), torch.ones(1, dtype=torch.int64, device=q.device).expand(L, c * n))
        dr = d[:, qi, item]                                               # (L, M) distances of the relevant items
        at = (qi * B + dr) * blocks + item // T
        running = counts.view(L, c * B, blocks).cumsum(-1).view(L, -1)  # scans along the blocks (contiguous)
        pos = running.gather(1, at) - counts.gather(1, at)                # a bin's items in earlier blocks
        span = max(1, _CHUNK // (L * T))                                  # ... + its block's items up to it
        offsets = torch.arange(T, device=q.device)
        for a in range(0, m, span):
            it, qa = item[a:a + span], qi[a:a + span]
            cols = (it // T * T)[:, None] + offsets                       # (m', T)
            upto = cols <= it[:, None]
            flat_cols = (qa[:, None] * n + cols.clamp(max=n - 1)).view(1, -1).expand(L, -1)
            same = d.view(L, -1).gather(1, flat_cols).view(L, -1, T) == dr[:, a:a + span, None]
            pos[:, a:a + span] += (same & upto).sum(-1)
        key = qi * B + dr                                                 # (L, M): group = (query, bin)
        sorted_key, order = torch.sort(key, dim=-1, stable=True)          # stable: item order within a group
        first = torch.searchsorted(sorted_key, sorted_key)
        j = torch.empty_like(key).scatter_(1, order, torch.arange(1, m + 1, device=q.device) - first)
        b = base[:, :, s:s + step].reshape(2, L, -1)
        flat = qi * B + dr
        rank, rel_rank = b[0].gather(1, flat) + pos, b[1].gather(1, flat) + j
        keep = torch.ones_like(rank, dtype=torch.bool) if k is None else rank <= k
        acc[:, s:s + step].index_add_(1, qi, torch.where(keep, rel_rank.double() / rank.double(), 0.0))
        hits[:, s:s + step].index_add_(1, qi, keep.long())
    return acc, hits


def _index_ap_by_rank(q, db, ql, dl, bits, k, rank, backend, group, what):
    """Index-ordered AP (L, Q) from the exclusive scan over ranks of the histograms (module docstring)."""
    world = dist.get_world_size(group)
    L, Q, B = len(bits), q.shape[0], max(bits) + 1
    acc = torch.zeros(L, Q, dtype=torch.float64, device=q.device)
    hits = torch.zeros(L, Q, dtype=torch.int64, device=q.device)
    step = max(1, _CHUNK // (world * 2 * L * B))
    for s in range(0, Q, step):
        sl = slice(s, s + step)
        mine = _histograms(q[sl], db, ql[sl], dl, bits, backend)
        every = torch.stack(_all_gather(mine, what, group))               # (world, 2, L, c, B)
        total = every.sum(0)
        base = (total.cumsum(-1) - total) + every[:rank].sum(0)         # N_<d, R_<d + earlier ranks' bin d
        acc[:, sl], hits[:, sl] = _ranked_terms(q[sl], db, ql[sl], dl, bits, base, k, backend)
    acc, hits = _all_reduce(acc, what, group), _all_reduce(hits, what, group)
    return torch.where(hits > 0, acc / hits.clamp(min=1).double(), 0.0)


def _candidate_relevance(ql, dl):
    """flag(idx, query slice): (L, c, kk) relevance of the local candidates idx to the queries of the slice."""
    def flag(idx, rows):
        qs = ql[rows]
        if dl.dim() == 1:
            return dl[idx] == qs[None, :, None]
        return ((dl[idx] & qs[None, :, None, :]) != 0).any(-1)
    return flag


def _ap_from_keys(keys: torch.Tensor) -> torch.Tensor:
    """AP@k (L, Q) float64 of merged keys (their relevance bits), as the C++ ApAtK sink."""
    r = (keys & 1).double()
    rank = torch.arange(1, keys.shape[-1] + 1, dtype=torch.float64, device=keys.device)
    found = r.sum(-1)
    return torch.where(found > 0, (r.cumsum(-1) / rank * r).sum(-1) / found.clamp(min=1), 0.0)


def _query_sharded(what, group, local: Callable[[], torch.Tensor], reduction: str):
    """Per-query results of this rank's queries (..., Q_r, ...) on dim 1 -> the mean over every rank's queries."""
    box = {}

    def run():
        box["v"] = local()
        return {"sum": box["v"].sum(1).cpu(), "count": box["v"].shape[1]}

    infos = _exchange(what, group, run)  # the results travel with the summary: a bad shard raises everywhere
    if reduction == "none":
        return box["v"]
    total = sum(i["count"] for i in infos)
    if total == 0:
        raise ValueError("q is empty on every rank: no queries to evaluate")
    acc = torch.zeros_like(infos[0]["sum"])
    for i in infos:  # rank order: the same sum on every rank
        acc = acc + i["sum"]
    return (acc / total).to(box["v"].device)


def _empty_queries(q, q_labels) -> bool:
    return isinstance(q, torch.Tensor) and q.dim() == 2 and q.shape[0] == 0


def _query_local(fn, q, db, q_labels, db_labels, bits, per_query_shape, **kw):
    """fn(...) with reduction="none" on this rank's queries; an empty slice gives (L, 0, ...)."""
    if _empty_queries(q, q_labels):
        _checks.query_and_database(q, db, empty_ok=True)
        bits = _checks.bit_lengths(bits, q.shape[1])
        return torch.zeros(len(bits), 0, *per_query_shape(bits), dtype=torch.float64, device=q.device)
    return fn(q, db, q_labels, db_labels, bits, reduction="none", **kw)


def mean_average_precision(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor,
                           bits: Optional[Iterable[int]] = None, topk: Optional[int] = None, ties: str = "index",
                           reduction: str = "mean", *, shard: str = "database", group=None,
                           backend: Optional[str] = None) -> torch.Tensor:
    """``nf.mean_average_precision`` over data sharded across the ranks (collective; every option).

    shard="database": every rank passes the same queries and labels and its database shard (rank order
    gives the global index order); every rank gets the single-process result, (L,) or (L, Q).
    shard="query": every rank passes the whole database and its slice of the queries; "mean" gives the mAP
    over every rank's queries on every rank, "none" this rank's queries' AP (L, Q_r).
    """
    _checks.choice("shard", shard, SHARDS)
    _checks.choice("ties", ties, metrics.TIES)
    _checks.choice("reduction", reduction, metrics.REDUCTIONS)
    what = "mean_average_precision"
    if shard == "query":
        return _query_sharded(what, group, lambda: _query_local(
            metrics.mean_average_precision, q, db, q_labels, db_labels, bits, lambda b: (), topk=topk, ties=ties,
            backend=backend), reduction)
    rank, _ = _world(group)
    q, db, ql, dl, bits, offset, n = _agree_database(what, group, q, db, q_labels, db_labels, bits, topk,
                                                     ties=ties, reduction=reduction)
    if ties == "average":
        ap = metrics.tie_aware_ap(*_global_histograms(q, db, ql, dl, bits, backend, group, what), topk, backend=backend)
    elif topk is not None and topk * TOPK_PATH_MAX_FRACTION <= n:
        ap = _ap_from_keys(_merged_keys(q, db, topk, bits, offset, backend, group, what, _candidate_relevance(ql, dl)))
    else:
        ap = _index_ap_by_rank(q, db, ql, dl, bits, topk, rank, backend, group, what)
    return metrics._reduce(ap, reduction)


def precision_at_radius(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor,
                        bits: Optional[Iterable[int]] = None, radius: int = 2, reduction: str = "mean", *,
                        shard: str = "database", group=None, backend: Optional[str] = None) -> torch.Tensor:
    """``nf.precision_at_radius`` over sharded data (collective; shard as in mean_average_precision)."""
    _checks.choice("shard", shard, SHARDS)
    _checks.choice("reduction", reduction, metrics.REDUCTIONS)
    metrics.check_radius(radius)
    what = "precision_at_radius"
    if shard == "query":
        return _query_sharded(what, group, lambda: _query_local(
            metrics.precision_at_radius, q, db, q_labels, db_labels, bits, lambda b: (), radius=radius,
            backend=backend), reduction)
    q, db, ql, dl, bits, _, _ = _agree_database(what, group, q, db, q_labels, db_labels, bits, radius=radius,
                                                reduction=reduction)
    tot, rel = _global_histograms(q, db, ql, dl, bits, backend, group, what)
    return metrics._reduce(metrics.radius_precision(tot, rel, radius), reduction)


def precision_recall_curve(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor,
                           bits: Optional[Iterable[int]] = None, reduction: str = "mean", *, shard: str = "database",
                           group=None, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``nf.precision_recall_curve`` over sharded data (collective; shard as in mean_average_precision)."""
    _checks.choice("shard", shard, SHARDS)
    _checks.choice("reduction", reduction, metrics.REDUCTIONS)
    what = "precision_recall_curve"
    if shard == "query":
        pr = _query_sharded(what, group, lambda: _pr_local(q, db, q_labels, db_labels, bits, backend), reduction)
        return (pr[:, :, 0], pr[:, :, 1]) if reduction == "none" else (pr[:, 0], pr[:, 1])
    q, db, ql, dl, bits, _, _ = _agree_database(what, group, q, db, q_labels, db_labels, bits, reduction=reduction)
    precision, recall = metrics.radius_curves(*_global_histograms(q, db, ql, dl, bits, backend, group, what))
    return metrics._reduce(precision, reduction), metrics._reduce(recall, reduction)


def _pr_local(q, db, q_labels, db_labels, bits, backend) -> torch.Tensor:
    """(L, Q_r, 2, B): this rank's queries' precision and recall curves stacked (queries on dim 1)."""
    def fn(*a, **kw):
        p, r = metrics.precision_recall_curve(*a, **kw)
        return torch.stack((p, r), 2)
    return _query_local(fn, q, db, q_labels, db_labels, bits, lambda b: (2, max(b) + 1), backend=backend)


# ---------------------------------------------------------------- DDP: the objective sees the global batch


class _GatherRows(torch.autograd.Function):
    """all_gather of (B_r, ...) rows of uneven B_r, in rank order; backward: the gradient of this rank's rows
    summed over the ranks (all_reduce, then this rank's slice), as torch.distributed.nn's all_gather."""

    @staticmethod
    def forward(ctx, x, sizes, rank, group):
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        total = _all_reduce(grad.contiguous(), "gather_rows (backward)", ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        return total[start:start + ctx.sizes[ctx.rank]], None, None, None


def _gather_padded(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    pad = max(sizes) - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad,) + tuple(x.shape[1:]))]) if pad else x
    parts = _all_gather(padded, "gather_rows", group)
    return torch.cat([p[:b] for p, b in zip(parts, sizes)])


def _row_counts(n: int, group) -> list[int]:
    return [int(v) for v in _all_gather(torch.tensor([n], dtype=torch.int64), "gather_rows", group)]


def gather_rows(x: torch.Tensor, group=None, sizes: Optional[list[int]] = None) -> torch.Tensor:
    """(collective) every rank's rows of x, concatenated in rank order (uneven row counts allowed).
    Differentiable: the gradient reaching this rank's rows is summed over the ranks."""
    rank, _ = _world(group)
    sizes = sizes if sizes is not None else _row_counts(x.shape[0], group)
    if x.requires_grad and torch.is_grad_enabled():
        return _GatherRows.apply(x, sizes, rank, group)
    return _gather_padded(x, sizes, group)


class GlobalBatch:
    """Hook for :class:`nhl_fast.NHLObjective` (``objective.global_batch = GlobalBatch()``): the objective is
    computed on every rank's batch at once, so a run on R ranks with batch B/R each takes the step of one
    process with batch B. Every rank computes the same global objective; the codes travel with their
    gradient (summed over ranks in backward), which DistributedDataParallel's average turns into the
    single-process gradient. Memory banks receive every rank's rows (the global indices), identically on
    every rank; the adaptive weights see the global per-length gradients (the gathered layer input).
    """

    def __init__(self, group=None):
        self.group = group

    def rows(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """(collective) every rank's rows of t with their gradient, in rank order; None stays None."""
        return None if t is None else gather_rows(t, self.group)

    def __call__(self, u_list, labels, indices, x=None):
        group = self.group
        u = u_list.full if isinstance(u_list, NestedCodes) else u_list[-1]
        sizes = _row_counts(u.shape[0], group)
        gather = lambda t: None if t is None else gather_rows(t, group, sizes)  # noqa: E731
        detached = lambda t: None if t is None else gather(t.detach())  # noqa: E731
        if isinstance(u_list, NestedCodes):
            full = gather(u_list.full)
            codes = nested_codes(full, detached(u_list.pre), detached(u_list.input), u_list.relax, u_list.bit_list,
                                 u_list.weight, u_list.bias)
        else:
            full = gather(u)
            codes = [full[:, :v.shape[1]] for v in u_list]
        return codes, detached(labels), detached(indices), detached(x)
