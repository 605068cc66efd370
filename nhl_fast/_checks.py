"""One validator per contract (code lengths, packed codes, real codes, labels, k, choices, ...), shared by
every Python entry point: the public functions (engine, metrics, layers, objective, index, losses) and the
fakes of nhl_fast._ops, which torch.compile and torch.library.opcheck run on fake tensors.

Errors name the argument and what was expected: TypeError for a wrong type or dtype, ValueError for a wrong
shape or value, as csrc/checks.h raises them for the compiled ops. ``op`` names the op in the message of an
op-level check (the fakes: ``"hamming: q must be ..."``); the public functions leave it empty.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch

STANDARD_BITS = (8, 16, 32, 64, 128, 256, 512, 1024)


def ensure(cond, error: type, message: Callable[[], str]) -> None:
    """Raise ``error(message())`` unless ``cond``: for conditions on sizes, which are symbolic on fake tensors
    with dynamic shapes (torch._check_with records them as runtime asserts instead of specialising on them).
    A concrete condition is plain Python (torch._check costs ~15 us a call). Dtypes, dims, devices and
    argument values are never symbolic: they are checked with a plain ``if``."""
    if isinstance(cond, bool):
        if not cond:
            raise error(message())
    else:
        torch._check_with(error, cond, message)


def _at(op: str) -> str:
    return f"{op}: " if op else ""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def tensor(t, name: str, what: str = "a torch.Tensor") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be {what}, got {type(t).__name__}")
    return t


def choice(name: str, value, allowed, op: str = ""):
    """`value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{_at(op)}{name}={value!r} must be one of {tuple(allowed)}")
    return value


def positive_int(value, name: str) -> int:
    """An int >= 1 (not a bool)."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# ---------------------------------------------------------------- code lengths


def increasing_lengths(bits, name: str = "bit_list", op: str = "") -> tuple[int, ...]:
    """A non-empty, strictly increasing sequence of int code lengths >= 1 (each code a prefix of the next).
    Nothing is coerced: 16.0 or "16" is a TypeError."""
    try:
        bits = tuple(bits)
    except TypeError:
        raise TypeError(f"{_at(op)}{name} must be an int or a sequence of ints, got {type(bits).__name__}") from None
    if not bits:
        raise ValueError(f"{_at(op)}{name} must not be empty")
    for b in bits:
        if not _is_int(b):
            raise TypeError(f"{_at(op)}{name} must contain ints, got {b!r}")
    if bits[0] < 1:
        raise ValueError(f"{_at(op)}{name}={bits}: every length must be >= 1")
    if any(a >= b for a, b in zip(bits, bits[1:])):
        raise ValueError(f"{_at(op)}{name}={bits} must be strictly increasing (each code is a prefix of the next)")
    return bits


def bit_lengths(bits: Optional[Iterable[int]], words, name: str = "bits", op: str = "") -> tuple[int, ...]:
    """Strictly increasing code lengths in [1, 64*words]; None = the standard lengths that fit (public only)."""
    if bits is None:
        fit = tuple(b for b in STANDARD_BITS if b <= 64 * words)
        return fit if fit else (64 * words,)
    bits = increasing_lengths((bits,) if _is_int(bits) else bits, name, op)
    ensure(bits[-1] <= 64 * words, ValueError,
           lambda: f"{_at(op)}{name}={bits}: every length must be in [1, {64 * words}] (64 x {words} words)")
    return bits


# ---------------------------------------------------------------- codes


def _matrix(t, name: str, op: str, dtype_ok: bool, dtype_wanted: str, shape: str, empty_ok: bool,
            need_columns: bool) -> torch.Tensor:
    """A 2-D tensor of an accepted dtype, with rows unless empty_ok and with columns when need_columns."""
    at = _at(op)
    tensor(t, at + name)
    if not dtype_ok(t.dtype):
        raise TypeError(f"{at}{name} must be {dtype_wanted}, got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{at}{name} must be 2-D {shape}, got shape {tuple(t.shape)}")
    rows, columns = t.shape
    if not empty_ok:
        ensure(rows != 0, ValueError, lambda: f"{at}{name} is empty: it has no rows (shape {tuple(t.shape)})")
    if need_columns:
        ensure(columns != 0, ValueError, lambda: f"{at}{name} is empty: it has no columns (shape {tuple(t.shape)})")
    return t


def packed_codes(t, name: str, op: str = "", empty_ok: bool = False) -> torch.Tensor:
    """Packed codes: a 2-D int64 tensor (N, W), W >= 1, and N >= 1 unless empty_ok."""
    return _matrix(t, name, op, lambda d: d == torch.int64, "int64 packed codes (use nhl_fast.pack)",
                   "(N, W) packed codes", empty_ok, need_columns=True)


def query_and_database(q, db, op: str = "", empty_ok: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and database: packed codes with the same number of words, on one device."""
    q, db = packed_codes(q, "q", op, empty_ok), packed_codes(db, "db", op, empty_ok)
    ensure(q.shape[1] == db.shape[1], ValueError, lambda: f"{_at(op)}q and db must have the same number of words, "
                                                          f"got q {tuple(q.shape)} and db {tuple(db.shape)}")
    if q.device != db.device:
        raise ValueError(f"{_at(op)}q and db must be on the same device, got q on {q.device} and db on {db.device}")
    return q, db


def positive_k(k, n, name: str = "k", op: str = "") -> int:
    """k (or topk) nearest of n database codes: an int in [1, n]."""
    if not _is_int(k):
        raise TypeError(f"{_at(op)}{name} must be an int, got {type(k).__name__}")
    message = lambda: f"{_at(op)}{name}={k} must be in [1, N] with N={n} database codes"  # noqa: E731
    ensure(k >= 1, ValueError, message)
    ensure(k <= n, ValueError, message)
    return k


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def real_codes(codes, name: str = "codes", op: str = "", empty_ok: bool = False, values: bool = True) -> torch.Tensor:
    """Codes to pack: a 2-D floating-point or bool tensor; no NaN (checked when `values`, outside torch.compile)."""
    _matrix(codes, name, op, lambda d: d in FLOAT_DTYPES or d == torch.bool, "a floating-point or bool tensor",
            "(N, bits)", empty_ok, need_columns=not empty_ok)
    if values and codes.dtype != torch.bool and not torch.compiler.is_compiling() and bool(torch.isnan(codes).any()):
        raise ValueError(f"{_at(op)}{name} contains NaN: a NaN has no sign to pack")
    return codes


# ---------------------------------------------------------------- metrics: limits of the kernels, labels

METRIC_MAX_WORDS = 64  # csrc/checks.h kMetricMaxWords: codes of up to 4096 bits
METRIC_MAX_LENGTHS = 64  # kMetricMaxLengths


def metric_limits(db: torch.Tensor, bits, op: str = "") -> None:
    """The metric kernels' limits: at most 64 code lengths per call, a database of 1 to 2^32 - 1 codes."""
    at = _at(op)
    if len(bits) > METRIC_MAX_LENGTHS:
        raise ValueError(f"{at}bits: at most {METRIC_MAX_LENGTHS} code lengths per call, got {len(bits)}")
    ensure(db.shape[0] >= 1, ValueError, lambda: f"{at}db is empty: it has no codes (shape {tuple(db.shape)})")
    ensure(db.shape[0] < 1 << 32, ValueError, lambda: f"{at}db: at most 2^32 - 1 codes per call, got {db.shape[0]}")


def labels(t, name: str = "labels", *, rows: Optional[int] = None, of: str = "", device=None,
           num_classes: Optional[int] = None, zero_one: bool = True) -> torch.Tensor:
    """Labels as the public functions take them: 1-D integer class indices (N,) or a 2-D multi-hot matrix (N, C)
    (bool, integer or floating point). rows/of/device: one row per code of `of`, on its device. num_classes:
    indices in [0, num_classes) and C == num_classes. zero_one: a 2-D matrix holds only 0 and 1. The value checks
    read the data, so they are skipped under torch.compile."""
    tensor(t, name, "a torch.Tensor (class indices (N,) or multi-hot (N, C))")
    if t.dim() not in (1, 2):
        raise ValueError(f"{name} must be 1-D class indices (N,) or a 2-D multi-hot matrix (N, C), "
                         f"got shape {tuple(t.shape)}")
    if rows is not None:
        ensure(t.shape[0] == rows, ValueError, lambda: f"{name} has {t.shape[0]} rows but {of} has {rows} codes")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on the device of {of} ({device}), got {t.device}")
    eager = not torch.compiler.is_compiling()
    if t.dim() == 1:
        if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
            raise TypeError(f"{name}: 1-D labels are class indices and must be an integer dtype, got {t.dtype}")
        if num_classes is not None and eager and t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} class indices must be in [0, {num_classes})")
        return t
    if t.dtype.is_complex:
        raise TypeError(f"{name}: multi-hot labels must be bool, integer or floating point, got {t.dtype}")
    ensure(t.shape[1] != 0, ValueError, lambda: f"{name} has no label columns (shape {tuple(t.shape)})")
    if num_classes is not None:
        ensure(t.shape[1] == num_classes, ValueError,
               lambda: f"{name} has {t.shape[1]} columns, expected num_classes={num_classes}")
    if zero_one and eager and t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):
        raise ValueError(f"{name}: a 2-D label matrix must be multi-hot (only 0 and 1)")
    return t


def packed_labels(q_labels: torch.Tensor, db_labels: torch.Tensor, nq, ndb, op: str) -> None:
    """The metric ops' labels: int64, both 1-D class indices or both 2-D packed multi-hot words (the same
    number, >= 1), one row per code (csrc/checks.h check_labels)."""
    at = _at(op)
    for name, t in (("q_labels", q_labels), ("db_labels", db_labels)):
        if t.dtype != torch.int64:
            raise TypeError(f"{at}{name} must be int64 (class indices or packed multi-hot words), got {t.dtype}")
    if q_labels.dim() not in (1, 2):
        raise ValueError(f"{at}q_labels must be 1-D (Q,) class indices or 2-D (Q, words) packed multi-hot labels, "
                         f"got shape {tuple(q_labels.shape)}")
    if db_labels.dim() != q_labels.dim():
        raise ValueError(f"{at}db_labels must be {q_labels.dim()}-D like q_labels (one kind of labels), "
                         f"got shape {tuple(db_labels.shape)}")
    for name, t, n in (("q_labels", q_labels, nq), ("db_labels", db_labels, ndb)):
        ensure(t.shape[0] == n, ValueError, lambda: f"{at}{name} must have one row per code ({n}), "
                                                    f"got shape {tuple(t.shape)}")
    if q_labels.dim() == 2:
        ensure(q_labels.shape[1] >= 1, ValueError, lambda: f"{at}q_labels has no label words")
        ensure(db_labels.shape[1] == q_labels.shape[1], ValueError,
               lambda: f"{at}q_labels and db_labels must have the same number of label words, "
                       f"got {tuple(q_labels.shape)} and {tuple(db_labels.shape)}")


# ---------------------------------------------------------------- tensors of a given shape and dtype


def dtype(t: torch.Tensor, name: str, want: torch.dtype, op: str = "", like: str = "") -> torch.Tensor:
    """`t` has dtype `want` (`like` names the argument whose dtype that is)."""
    if t.dtype != want:
        wanted = like + "'s dtype " + str(want) if like else str(want)
        raise TypeError(f"{_at(op)}{name} must have {wanted}, got {t.dtype}")
    return t


def shaped(t: torch.Tensor, name: str, shape: tuple, want: Optional[torch.dtype] = None, op: str = "",
           like: str = "") -> torch.Tensor:
    """`t` has `shape` (None: any size there), and dtype `want` when given (`like`: whose dtype)."""
    if want is not None:
        dtype(t, name, want, op, like)
    def message():
        shown = ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "")
        return f"{_at(op)}{name} must have shape ({shown}), got {tuple(t.shape)}"

    if t.dim() != len(shape):
        raise ValueError(message())
    for have, size in zip(t.shape, shape):
        if size is not None:
            ensure(have == size, ValueError, message)
    return t


def floating(t: torch.Tensor, name: str, dtypes=FLOAT_DTYPES, op: str = "") -> torch.Tensor:
    if t.dtype not in dtypes:
        raise TypeError(f"{_at(op)}{name} must be {' or '.join(str(d).replace('torch.', '') for d in dtypes)}, "
                        f"got {t.dtype}")
    return t


def projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, op: str) -> None:
    """x (B, in) W^T (b_max, in) + b (b_max,), one floating dtype (csrc/checks.h check_projection_args)."""
    at = _at(op)
    for name, t, dim, shape in (("x", x, 2, "(B, in_features)"), ("weight", weight, 2, "(b_max, in_features)"),
                                ("bias", bias, 1, "(b_max,)")):
        if t.dim() != dim:
            raise ValueError(f"{at}{name} must be {dim}-D {shape}, got shape {tuple(t.shape)}")
    ensure(x.shape[1] == weight.shape[1], ValueError,
           lambda: f"{at}x has {x.shape[1]} features, weight expects {weight.shape[1]} (in_features)")
    ensure(bias.shape[0] == weight.shape[0], ValueError,
           lambda: f"{at}bias must have b_max={weight.shape[0]} entries (weight's rows), got {bias.shape[0]}")
    floating(x, "x", op=op)
    for name, t in (("weight", weight), ("bias", bias)):
        dtype(t, name, x.dtype, op, like="x")


def relaxed_codes(u: torch.Tensor, bits, op: str) -> tuple[int, ...]:
    """The objective ops' codes: u (B, b_max) float32/float64 and bits strictly increasing, ending at b_max
    (csrc/checks.h check_codes)."""
    if u.dim() != 2:
        raise ValueError(f"{op}: u must be 2-D (B, b_max), got shape {tuple(u.shape)}")
    floating(u, "u", (torch.float32, torch.float64), op)
    bits = increasing_lengths(bits, "bits", op)
    ensure(bits[-1] == u.shape[1], ValueError,
           lambda: f"{op}: bits={list(bits)} must end at u's width b_max={u.shape[1]}")
    return bits


def sorted_nce_args(u: torch.Tensor, v: torch.Tensor, z: torch.Tensor, z_anchor: torch.Tensor, bits, m, tau,
                    sort_tau, op: str) -> tuple[int, ...]:
    """The sorted_nce ops' arguments (csrc/checks.h check_sorted_nce): anchors' codes u (B, b_max), candidates'
    codes v (N, b_max), candidates' latents z (N, d), anchors' latents z_anchor (B, d), one float dtype;
    B >= 1, N >= 2, m in [1, N - 1], tau > 0, one sort_tau > 0 per length."""
    bits = relaxed_codes(u, bits, op)
    dtype(v, "v", u.dtype, op, like="u")
    ensure((v.dim() == 2) and (v.shape[1] == u.shape[1]), ValueError,
           lambda: f"{op}: v must be (N, b_max) with b_max = {u.shape[1]} (u's width), got {tuple(v.shape)}")
    if z.dim() != 2:
        raise ValueError(f"{op}: z must be 2-D (N, d), got shape {tuple(z.shape)}")
    dtype(z, "z", u.dtype, op, like="u")
    ensure((z.shape[0] == v.shape[0]) & (z.shape[1] >= 1), ValueError,
           lambda: f"{op}: z must be (N, d) with N = {v.shape[0]} (v's rows) and d >= 1, got {tuple(z.shape)}")
    dtype(z_anchor, "z_anchor", u.dtype, op, like="u")
    ensure((z_anchor.dim() == 2) and (z_anchor.shape[0] == u.shape[0]) and (z_anchor.shape[1] == z.shape[1]),
           ValueError, lambda: f"{op}: z_anchor must be (B, d) = ({u.shape[0]}, {z.shape[1]}) (u's rows, z's width), "
                               f"got {tuple(z_anchor.shape)}")
    ensure(u.shape[0] >= 1, ValueError, lambda: f"{op}: needs B >= 1 anchors, got B = {u.shape[0]}")
    ensure(v.shape[0] >= 2, ValueError, lambda: f"{op}: needs N >= 2 candidates, got N = {v.shape[0]}")
    if not _is_int(m):
        raise TypeError(f"{op}: m must be an int, got {type(m).__name__}")
    ensure((m >= 1) & (m < v.shape[0]), ValueError,
           lambda: f"{op}: m={m} positives must be in [1, N - 1] = [1, {v.shape[0] - 1}]")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"{op}: tau={tau} must be a finite number > 0")
    if len(sort_tau) != len(bits):
        raise ValueError(f"{op}: sort_tau must have one value per length ({len(bits)}), got {len(sort_tau)}")
    if not all(t > 0 and math.isfinite(t) for t in sort_tau):
        raise ValueError(f"{op}: sort_tau={list(sort_tau)} must be finite numbers > 0")
    return bits


def csq_grads_args(u: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, tie: torch.Tensor, bits,
                   op: str = "csq_grads") -> tuple[int, ...]:
    """csq_grads' arguments (its fake and its Triton launcher; C++: csq_grads_cpu's checks): relaxed codes u,
    labels (B, C), centers (C, sum b_k) or (C, b_max), tie one sign per centre column, all in u's dtype."""
    bits = relaxed_codes(u, bits, op)
    batch, b_max, total = u.shape[0], u.shape[1], sum(bits)
    shaped(labels, "labels", (batch, None), u.dtype, op, like="u")
    shaped(centers, "centers", (labels.shape[1], None), u.dtype, op, like="u")
    ensure((centers.shape[1] == total) | (centers.shape[1] == b_max), ValueError,
           lambda: f"{op}: centers must be (C, sum b_k) = (C, {total}) (a centre per length) or (C, b_max) = "
                   f"(C, {b_max}) (nested centres), got shape {tuple(centers.shape)}")
    shaped(tie, "tie", (centers.shape[1],), u.dtype, op, like="u")
    return bits


def objective_args(u: torch.Tensor, grads: Optional[torch.Tensor], losses: torch.Tensor, x: Optional[torch.Tensor],
                   relax_deriv: Optional[torch.Tensor], bits, beta: float, distill: float, closed_form: bool,
                   op: str = "nhl_objective") -> tuple[int, ...]:
    """nhl_objective's arguments (its fake and its Triton launcher; C++: nhl_objective_cpu's checks)."""
    bits = relaxed_codes(u, bits, op)
    batch, b_max = u.shape
    shaped(losses, "losses", (len(bits),), op=op)
    if closed_form and grads is None:
        raise ValueError(f"{op}: closed_form needs grads")
    if not beta > 0 or not distill >= 0:
        raise ValueError(f"{op}: beta must be > 0 and distill >= 0, got beta={beta}, distill={distill}")
    if grads is not None:
        shaped(grads, "grads", (batch, sum(bits)), u.dtype, op, like="u")
    if x is not None:
        shaped(x, "x", (batch, None), u.dtype, op, like="u")
    if relax_deriv is not None:
        shaped(relax_deriv, "relax_deriv", (batch, b_max), u.dtype, op, like="u")
    return bits
