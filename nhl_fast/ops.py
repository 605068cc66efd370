"""Python-side op registration: fake (meta) kernels for the compiled ops, the Triton
ops as torch custom ops (so torch.compile and opcheck see them), and autograd.

Each op has one fake shared by its compiled and Triton forms.
"""
from __future__ import annotations

import importlib

import torch
from torch import Tensor

from nhl_fast._dispatch import extension

_EXT, _ = extension()  # loads the schemas of csrc/nhl_ops.cpp when the extension exists


def _kernel(name: str):
    """The Triton launcher module kernels/<name>.py (imported lazily: triton is optional)."""
    return importlib.import_module(f"nhl_fast.kernels.{name}")


# ---------------------------------------------------------------- fakes


def _pack_fake(codes: Tensor) -> Tensor:
    return codes.new_empty((codes.shape[0], (codes.shape[1] + 63) // 64), dtype=torch.int64)


def _unpack_fake(packed: Tensor, bits: int) -> Tensor:
    return packed.new_empty((packed.shape[0], bits), dtype=torch.float32)


def _hamming_fake(q: Tensor, db: Tensor, bits: list[int]) -> Tensor:
    return q.new_empty((len(bits), q.shape[0], db.shape[0]), dtype=torch.int32)


def _topk_fake(q: Tensor, db: Tensor, k: int, bits: list[int]) -> tuple[Tensor, Tensor]:
    shape = (len(bits), q.shape[0], k)
    return q.new_empty(shape, dtype=torch.int32), q.new_empty(shape, dtype=torch.int64)


if _EXT is not None:
    torch.library.register_fake("nhl_fast::pack")(_pack_fake)
    torch.library.register_fake("nhl_fast::unpack")(_unpack_fake)
    torch.library.register_fake("nhl_fast::hamming")(_hamming_fake)
    torch.library.register_fake("nhl_fast::topk")(_topk_fake)


# ---------------------------------------------------------------- Triton ops


@torch.library.custom_op("nhl_fast::pack_triton", mutates_args=())
def pack_triton(codes: Tensor) -> Tensor:
    return _kernel("pack").pack_triton(codes)


@torch.library.custom_op("nhl_fast::unpack_triton", mutates_args=())
def unpack_triton(packed: Tensor, bits: int) -> Tensor:
    return _kernel("unpack").unpack_triton(packed, bits)


@torch.library.custom_op("nhl_fast::hamming_triton", mutates_args=())
def hamming_triton(q: Tensor, db: Tensor, bits: list[int]) -> Tensor:
    return _kernel("hamming").hamming_triton(q, db, bits)


@torch.library.custom_op("nhl_fast::topk_triton", mutates_args=())
def topk_triton(q: Tensor, db: Tensor, k: int, bits: list[int]) -> tuple[Tensor, Tensor]:
    return _kernel("topk").topk_triton(q, db, k, bits)


pack_triton.register_fake(_pack_fake)
unpack_triton.register_fake(_unpack_fake)
hamming_triton.register_fake(_hamming_fake)
topk_triton.register_fake(_topk_fake)


# ---------------------------------------------------------------- layer: nested_projection, project_and_pack
# One fake and one autograd formula serve the compiled op and its Triton twin. The
# backward is one GEMM pair whatever the number of code lengths: every length is a
# prefix of the same output, so their gradients already sum in grad_u.


def _nested_projection_fake(x: Tensor, weight: Tensor, bias: Tensor, relax: str) -> tuple[Tensor, Tensor]:
    shape = (x.shape[0], weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape)


def _project_and_pack_fake(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
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


if _EXT is not None:
    torch.library.register_fake("nhl_fast::nested_projection")(_nested_projection_fake)
    torch.library.register_fake("nhl_fast::project_and_pack")(_project_and_pack_fake)
    torch.library.register_autograd("nhl_fast::nested_projection", _nested_projection_backward,
                                    setup_context=_nested_projection_setup)


@torch.library.custom_op("nhl_fast::nested_projection_triton", mutates_args=())
def nested_projection_triton(x: Tensor, weight: Tensor, bias: Tensor, relax: str) -> tuple[Tensor, Tensor]:
    return _kernel("nested_projection").nested_projection_triton(x, weight, bias, relax)


@torch.library.custom_op("nhl_fast::project_and_pack_triton", mutates_args=())
def project_and_pack_triton(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return _kernel("project_and_pack").project_and_pack_triton(x, weight, bias)


nested_projection_triton.register_fake(_nested_projection_fake)
nested_projection_triton.register_autograd(_nested_projection_backward, setup_context=_nested_projection_setup)
project_and_pack_triton.register_fake(_project_and_pack_fake)

# ---------------------------------------------------------------- metrics (distance_histogram, index_ap)

from typing import Optional  # noqa: E402  (kept in this block: custom_op resolves the annotation)


def _distance_histogram_fake(q: Tensor, db: Tensor, q_labels: Tensor, db_labels: Tensor,
                             bits: list[int]) -> tuple[Tensor, Tensor]:
    shape = (len(bits), q.shape[0], max(bits) + 1)
    return q.new_empty(shape, dtype=torch.int64), q.new_empty(shape, dtype=torch.int64)


def _index_ap_fake(q: Tensor, db: Tensor, q_labels: Tensor, db_labels: Tensor, bits: list[int],
                   topk: Optional[int]) -> tuple[Tensor, Tensor]:
    shape = (len(bits), q.shape[0])
    return q.new_empty(shape, dtype=torch.float64), q.new_empty(shape, dtype=torch.int64)


def _tie_ap_fake(tot: Tensor, rel: Tensor, topk: Optional[int]) -> Tensor:
    return tot.new_empty(tot.shape[:2], dtype=torch.float64)


if _EXT is not None:
    torch.library.register_fake("nhl_fast::distance_histogram")(_distance_histogram_fake)
    torch.library.register_fake("nhl_fast::index_ap")(_index_ap_fake)
    torch.library.register_fake("nhl_fast::tie_ap")(_tie_ap_fake)


@torch.library.custom_op("nhl_fast::distance_histogram_triton", mutates_args=())
def distance_histogram_triton(q: Tensor, db: Tensor, q_labels: Tensor, db_labels: Tensor,
                              bits: list[int]) -> tuple[Tensor, Tensor]:
    return _kernel("distance_histogram").distance_histogram_triton(q, db, q_labels, db_labels, bits)


@torch.library.custom_op("nhl_fast::index_ap_triton", mutates_args=())
def index_ap_triton(q: Tensor, db: Tensor, q_labels: Tensor, db_labels: Tensor, bits: list[int],
                    topk: Optional[int]) -> tuple[Tensor, Tensor]:
    return _kernel("index_ap").index_ap_triton(q, db, q_labels, db_labels, bits, topk)


distance_histogram_triton.register_fake(_distance_histogram_fake)
index_ap_triton.register_fake(_index_ap_fake)


# --- objective: cascade_distill, nhl_objective, csq_grads (C++ on CPU, Triton on CUDA: _dispatch.cpp_or_reference) ---


def _cascade_distill_fake(u: Tensor, bits: list[int]) -> tuple[Tensor, Tensor]:
    return u.new_empty((len(bits) - 1,)), u.new_empty((u.shape[0], sum(bits)))


def _nhl_objective_fake(u: Tensor, grads: Optional[Tensor], losses: Tensor, x: Optional[Tensor],
                        relax_deriv: Optional[Tensor], bits: list[int], beta: float, distill: float, faithful: bool,
                        closed_form: bool):
    k = len(bits)
    return (u.new_empty(()), u.new_empty(u.shape), u.new_empty((k,)), u.new_empty((k, k), dtype=torch.bool),
            u.new_empty((k, k)), u.new_empty((k - 1,)))


def _csq_grads_fake(u: Tensor, labels: Tensor, centers: Tensor, tie: Tensor, bits: list[int],
                    lambda_: float) -> tuple[Tensor, Tensor]:
    return u.new_empty((len(bits),)), u.new_empty((u.shape[0], sum(bits)))


if _EXT is not None:
    torch.library.register_fake("nhl_fast::cascade_distill")(_cascade_distill_fake)
    torch.library.register_fake("nhl_fast::csq_grads")(_csq_grads_fake)
    torch.library.register_fake("nhl_fast::nhl_objective")(_nhl_objective_fake)


@torch.library.custom_op("nhl_fast::cascade_distill_triton", mutates_args=())
def cascade_distill_triton(u: Tensor, bits: list[int]) -> tuple[Tensor, Tensor]:
    return _kernel("cascade_distill").cascade_distill_triton(u, bits)


@torch.library.custom_op("nhl_fast::nhl_objective_triton", mutates_args=())
def nhl_objective_triton(u: Tensor, grads: Optional[Tensor], losses: Tensor, x: Optional[Tensor],
                         relax_deriv: Optional[Tensor], bits: list[int], beta: float, distill: float, faithful: bool,
                         closed_form: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _kernel("nhl_objective").nhl_objective_triton(u, grads, losses, x, relax_deriv, bits, beta, distill,
                                                         faithful, closed_form)


@torch.library.custom_op("nhl_fast::csq_grads_triton", mutates_args=())
def csq_grads_triton(u: Tensor, labels: Tensor, centers: Tensor, tie: Tensor, bits: list[int],
                     lambda_: float) -> tuple[Tensor, Tensor]:
    return _kernel("csq_grads").csq_grads_triton(u, labels, centers, tie, bits, lambda_)


cascade_distill_triton.register_fake(_cascade_distill_fake)
nhl_objective_triton.register_fake(_nhl_objective_fake)
csq_grads_triton.register_fake(_csq_grads_fake)
