"""Python-side op registration, loaded by ``import nhl_fast``: one fake per op (shared by its compiled form,
csrc/nhl_ops.cpp, which names this module as its fakes' home with m.set_python_module, and its Triton twin),
the Triton twins as torch custom ops ``nhl_fast::<op>_triton`` (so torch.compile and opcheck see them), and
the autograd formula of nested_projection.

Each fake checks its inputs with the op's validators (nhl_fast._checks: symbolic conditions become
torch._check asserts), so a torch.compile or opcheck run on fake tensors rejects what the kernels reject,
with the same exception types (TypeError for dtypes, ValueError for shapes and values).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from nhl_fast import _checks as C
from nhl_fast._dispatch import OPS, extension, triton_launcher
from nhl_fast.reference import RELAXES

_EXT, _ = extension()  # loads the schemas of csrc/nhl_ops.cpp when the extension exists

# Schemas of the Triton twins: those of csrc/nhl_ops.cpp (tests/test_house.py compares them).
TRITON_SCHEMAS = {
    "pack": "(Tensor codes) -> Tensor",
    "unpack": "(Tensor packed, int bits) -> Tensor",
    "hamming": "(Tensor q, Tensor db, int[] bits) -> Tensor",
    "topk": "(Tensor q, Tensor db, int k, int[] bits) -> (Tensor, Tensor)",
    "nested_projection": "(Tensor x, Tensor weight, Tensor bias, str relax) -> (Tensor, Tensor)",
    "project_and_pack": "(Tensor x, Tensor weight, Tensor bias) -> Tensor",
    "distance_histogram": "(Tensor q, Tensor db, Tensor q_labels, Tensor db_labels, int[] bits) -> (Tensor, Tensor)",
    "index_ap": "(Tensor q, Tensor db, Tensor q_labels, Tensor db_labels, int[] bits, int? topk) -> (Tensor, Tensor)",
    "cascade_distill": "(Tensor u, int[] bits) -> (Tensor, Tensor)",
    "csq_grads": "(Tensor u, Tensor labels, Tensor centers, Tensor tie, int[] bits, float lambda_) -> (Tensor, Tensor)",
    "nhl_objective": "(Tensor u, Tensor? grads, Tensor losses, Tensor? x, Tensor? relax_deriv, int[] bits, "
                     "float beta, float distill, bool faithful, bool closed_form) "
                     "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "sorted_nce": "(Tensor u, Tensor v, Tensor z, Tensor z_anchor, int[] bits, int m, float tau, float[] sort_tau, "
                  "bool hard) -> Tensor",
    "sorted_nce_backward": "(Tensor grad, Tensor u, Tensor v, Tensor z, Tensor z_anchor, int[] bits, int m, "
                           "float tau, float[] sort_tau, bool hard) -> (Tensor, Tensor, Tensor, Tensor)",
}


# ---------------------------------------------------------------- engine


def _pack_fake(codes: Tensor) -> Tensor:
    C.real_codes(codes, "codes", "pack", empty_ok=True, values=False)
    return codes.new_empty((codes.shape[0], (codes.shape[1] + 63) // 64), dtype=torch.int64)


def _unpack_fake(packed: Tensor, bits: int) -> Tensor:
    C.packed_codes(packed, "packed", "unpack", empty_ok=True)
    (bits,) = C.bit_lengths([bits], packed.shape[1], "bits", "unpack")
    return packed.new_empty((packed.shape[0], bits), dtype=torch.float32)


def _hamming_fake(q: Tensor, db: Tensor, bits: list[int]) -> Tensor:
    C.query_and_database(q, db, "hamming", empty_ok=True)
    C.bit_lengths(bits, q.shape[1], "bits", "hamming")
    return q.new_empty((len(bits), q.shape[0], db.shape[0]), dtype=torch.int32)


def _topk_fake(q: Tensor, db: Tensor, k: int, bits: list[int]) -> tuple[Tensor, Tensor]:
    C.query_and_database(q, db, "topk", empty_ok=True)
    C.bit_lengths(bits, q.shape[1], "bits", "topk")
    C.positive_k(k, db.shape[0], "k", "topk")
    shape = (len(bits), q.shape[0], k)
    return q.new_empty(shape, dtype=torch.int32), q.new_empty(shape, dtype=torch.int64)


# ---------------------------------------------------------------- layer: nested_projection, project_and_pack
# The backward is one GEMM pair whatever the number of code lengths: every length is a prefix of the same
# output, so their gradients already sum in grad_u.


def _nested_projection_fake(x: Tensor, weight: Tensor, bias: Tensor, relax: str) -> tuple[Tensor, Tensor]:
    C.projection(x, weight, bias, "nested_projection")
    C.choice("relax", relax, RELAXES, "nested_projection")
    shape = (x.shape[0], weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape)


def _project_and_pack_fake(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    C.projection(x, weight, bias, "project_and_pack")
    return x.new_empty((x.shape[0], (weight.shape[0] + 63) // 64), dtype=torch.int64)


def _nested_projection_setup(ctx, inputs, output) -> None:
    x, weight, _, relax = inputs
    u, z = output
    ctx.relax = relax
    # tanh' comes from u, the clipped straight-through mask from z: keep only what is needed.
    ctx.save_for_backward(x, weight, u if relax == "tanh" else None, z if relax == "sign_ste" else None)


def _nested_projection_backward(ctx, grad_u, grad_z):
    from nhl_fast.reference import relax_grad

    x, weight, u, z = ctx.saved_tensors
    g = relax_grad(grad_u, ctx.relax, u, z) if grad_u is not None else None
    if grad_z is not None:
        g = grad_z if g is None else g + grad_z
    grad_x = g @ weight if ctx.needs_input_grad[0] else None
    grad_w = g.T @ x if ctx.needs_input_grad[1] else None
    grad_b = g.sum(0) if ctx.needs_input_grad[2] else None
    return grad_x, grad_w, grad_b, None


# ---------------------------------------------------------------- metrics: distance_histogram, index_ap, tie_ap


def _metric_inputs(op: str, q: Tensor, db: Tensor, q_labels: Tensor, db_labels: Tensor, bits: list[int]) -> None:
    C.query_and_database(q, db, op, empty_ok=True)
    C.bit_lengths(bits, q.shape[1], "bits", op)
    C.ensure(q.shape[1] <= C.METRIC_MAX_WORDS, ValueError,
             lambda: f"{op}: q and db must have at most {C.METRIC_MAX_WORDS} words, got W={q.shape[1]}")
    C.metric_limits(db, bits, op)
    C.packed_labels(q_labels, db_labels, q.shape[0], db.shape[0], op)


def _distance_histogram_fake(q: Tensor, db: Tensor, q_labels: Tensor, db_labels: Tensor,
                             bits: list[int]) -> tuple[Tensor, Tensor]:
    _metric_inputs("distance_histogram", q, db, q_labels, db_labels, bits)
    shape = (len(bits), q.shape[0], max(bits) + 1)
    return q.new_empty(shape, dtype=torch.int64), q.new_empty(shape, dtype=torch.int64)


def _index_ap_fake(q: Tensor, db: Tensor, q_labels: Tensor, db_labels: Tensor, bits: list[int],
                   topk: Optional[int]) -> tuple[Tensor, Tensor]:
    _metric_inputs("index_ap", q, db, q_labels, db_labels, bits)
    if topk is not None:
        C.positive_k(topk, db.shape[0], "topk", "index_ap")
    shape = (len(bits), q.shape[0])
    return q.new_empty(shape, dtype=torch.float64), q.new_empty(shape, dtype=torch.int64)


def _tie_ap_fake(tot: Tensor, rel: Tensor, topk: Optional[int]) -> Tensor:
    C.shaped(tot, "tot", (None, None, None), torch.int64, "tie_ap")
    C.shaped(rel, "rel", tuple(tot.shape), torch.int64, "tie_ap")
    if topk is not None and topk < 1:
        raise ValueError(f"tie_ap: topk={topk} must be >= 1")
    return tot.new_empty(tot.shape[:2], dtype=torch.float64)


# ---------------------------------------------------------------- objective: cascade_distill, nhl_objective, csq_grads


def _cascade_distill_fake(u: Tensor, bits: list[int]) -> tuple[Tensor, Tensor]:
    bits = C.relaxed_codes(u, bits, "cascade_distill")
    if len(bits) < 2:
        raise ValueError(f"cascade_distill: bits={list(bits)}: needs at least 2 lengths")
    return u.new_empty((len(bits) - 1,)), u.new_empty((u.shape[0], sum(bits)))


def _nhl_objective_fake(u: Tensor, grads: Optional[Tensor], losses: Tensor, x: Optional[Tensor],
                        relax_deriv: Optional[Tensor], bits: list[int], beta: float, distill: float, faithful: bool,
                        closed_form: bool):
    k = len(C.objective_args(u, grads, losses, x, relax_deriv, bits, beta, distill, closed_form))
    return (u.new_empty(()), u.new_empty(u.shape), u.new_empty((k,)), u.new_empty((k, k), dtype=torch.bool),
            u.new_empty((k, k)), u.new_empty((k - 1,)))


def _csq_grads_fake(u: Tensor, labels: Tensor, centers: Tensor, tie: Tensor, bits: list[int],
                    lambda_: float) -> tuple[Tensor, Tensor]:
    bits = C.csq_grads_args(u, labels, centers, tie, bits)
    return u.new_empty((len(bits),)), u.new_empty((u.shape[0], sum(bits)))


# ---------------------------------------------------------------- unsupervised: sorted_nce, sorted_nce_backward


def _sorted_nce_fake(u: Tensor, v: Tensor, z: Tensor, z_anchor: Tensor, bits: list[int], m: int, tau: float,
                     sort_tau: list[float], hard: bool) -> Tensor:
    bits = C.sorted_nce_args(u, v, z, z_anchor, bits, m, tau, sort_tau, "sorted_nce")
    return u.new_empty((len(bits),))


def _sorted_nce_backward_fake(grad: Tensor, u: Tensor, v: Tensor, z: Tensor, z_anchor: Tensor, bits: list[int],
                              m: int, tau: float, sort_tau: list[float], hard: bool):
    op = "sorted_nce_backward"
    bits = C.sorted_nce_args(u, v, z, z_anchor, bits, m, tau, sort_tau, op)
    C.shaped(grad, "grad", (len(bits),), u.dtype, op, like="u")
    return u.new_empty(u.shape), v.new_empty(v.shape), z.new_empty(z.shape), z_anchor.new_empty(z_anchor.shape)


def _sorted_nce_setup(ctx, inputs, output) -> None:
    u, v, z, z_anchor, *args = inputs
    ctx.args = args  # bits, m, tau, sort_tau, hard: the backward recomputes everything else
    ctx.save_for_backward(u, v, z, z_anchor)


def _sorted_nce_backward_of(backward_op: str):
    """The autograd formula of a sorted_nce form: its own backward op (the C++ one, or the Triton twin's)."""
    def backward(ctx, grad):
        du, dv, dz, da = getattr(torch.ops.nhl_fast, backward_op)(grad.contiguous(), *ctx.saved_tensors, *ctx.args)
        return du, dv, dz, da, None, None, None, None, None

    return backward


# ---------------------------------------------------------------- registration

FAKES = {
    "pack": _pack_fake, "unpack": _unpack_fake, "hamming": _hamming_fake, "topk": _topk_fake,
    "nested_projection": _nested_projection_fake, "project_and_pack": _project_and_pack_fake,
    "distance_histogram": _distance_histogram_fake, "index_ap": _index_ap_fake, "tie_ap": _tie_ap_fake,
    "cascade_distill": _cascade_distill_fake, "nhl_objective": _nhl_objective_fake, "csq_grads": _csq_grads_fake,
    "sorted_nce": _sorted_nce_fake, "sorted_nce_backward": _sorted_nce_backward_fake,
}
_AUTOGRAD = {"nested_projection": (_nested_projection_backward, _nested_projection_setup)}


def _triton_twin(name: str):
    """nhl_fast::<name>_triton: a custom op calling kernels/<name>.py's launcher (imported on first call)."""
    def run(*args):
        return triton_launcher(name)(*args)

    run.__name__ = f"{name}_triton"
    return torch.library.custom_op(f"nhl_fast::{name}_triton", run, mutates_args=(), schema=TRITON_SCHEMAS[name])


for _name, _row in OPS.items():  # every op of the table: its fake (and autograd) on each form it has
    _forms = [f"nhl_fast::{_row['cpp']}"] if _EXT is not None else []
    if _row["triton"] is not None:
        _forms.append(_triton_twin(_name))
    for _form in _forms:
        torch.library.register_fake(_form)(FAKES[_name])
        if _name in _AUTOGRAD:
            torch.library.register_autograd(_form, _AUTOGRAD[_name][0], setup_context=_AUTOGRAD[_name][1])

# sorted_nce: each form differentiates through its own backward op (registered above, with its fake)
for _form in ([OPS["sorted_nce"]["cpp"]] if _EXT is not None else []) + [OPS["sorted_nce"]["triton"]]:
    torch.library.register_autograd(f"nhl_fast::{_form}", _sorted_nce_backward_of(_form.replace("sorted_nce",
                                    "sorted_nce_backward", 1)), setup_context=_sorted_nce_setup)
