"""The NHL training objective: per-length base losses, dominance-aware adaptive weights,
long-short cascade self-distillation (arXiv 2412.08922; reference code hly1998/NHL).

    total = sum_k w_k * (L_k + distill * D_k)        (D_K = 0; w constant in the backward)

Adaptive weights (reference semantics). g_k is the gradient of O_k = L_k + distill*D_k
w.r.t. the projection weight W (b_max x in). For i < j:
    d_ij  = <g_i[:b_i rows], g_j[:b_i rows]>,  n_i = ||g_i[:b_i rows]||,  tau_i = beta n_i^2 / (K-1)
    a_ij  = tau_i / (-d_ij) if d_ij < -tau_i else 1          (the shorter code i dominates)
    a_ij <- min(a_ij, a_i,i+1)                               (anchor cap)
    w_0 = 1,  w_j = prod_{i<j} a_ij,  w <- K w / sum(w)

How it is computed. The reference runs K extra backward passes and reads W.grad each
time. Here, with z = x W^T + b the pre-activation, g_k = G_k^T X where G_k = dO_k/dz
(B x b_max), so
    <g_i[:b], g_j[:b]> = <G_i[:, :b], (X X^T) G_j[:, :b]>.
The K gradients travel packed, (B, sum b_k): G_k[:, :b_k] side by side (O_k depends on nothing
past b_k). One B x B Gram applied to those columns gives all K(K-1)/2 dots and K norms (the
weight gradients G^T X directly when B > sum b_k), on device, with no host sync.

The base-loss parts dL_k/du: a loss with closed-form gradients (``length_grads``, e.g. CSQ)
returns them packed with its values, without any graph; any other loss is run with autograd and
its K gradients come from ONE batched autograd call over the loss graph only (``is_grads_batched``:
the backbone and the projection are never traversed). If vmap cannot batch one of its ops, the objective
says so once (a RuntimeWarning naming the error) and takes K passes from then on; an out-of-memory error
propagates. ``closed_form = False`` forces the generic path.

Distillation D_k (k < K): ||N(S_{k+1}) - N(S_k)||_F^2 / B^2 with S_k = u_k u_k^T,
N = row L2-normalisation, the teacher S_{k+1} detached; its gradient is closed-form
(reference.cascade_distill: dD/dS from the normalisation, then (A + A^T) u_k).

Everything after the base loss is one op, ``nhl_fast::nhl_objective`` (spec: reference.nhl_objective):
distillation, dots, weights, the weighted total and d total/du (weights constant). On CPU it is
one C++ call (csrc/cpu/nhl_objective_cpu.cpp), on CUDA the Triton kernels (kernels/nhl_objective.py); elsewhere
the torch spec runs. Its gradient
enters autograd through one node (_ClosedFormGrad), so a closed-form step builds no graph
below the layer's output.

faithful=True reproduces the reference step (model_grand_sd.py, RML_E + analysis) with
its quirks, for comparison:
  1. n_i is the norm of the SHORTEST length's gradient, ||g_1[:b_i]||, for every i
     (the reference reads grad_norm[idx][0]).
  2. The final backward accumulates onto the head's leftover gradient of the last
     analysis pass (no zero_grad in between): W and b also receive dO_K/d(W, b),
     unweighted (added here as a value-neutral surrogate term; the backbone is unaffected).
  3. With distillation on, the final sum zips the K weights with the K-1 distillation
     terms, so the longest length's term w_K O_K is dropped from the final objective.
Defaults (chosen on bench/bench_fidelity.py, bench/README.md "Fidelity"): centre losses get ``centers="joint"``
(every prefix separated at once; the reference's per-length centres were what made one nested head lose to K
independent heads) and the adaptive weights use ``weight_rule="bounded"`` (the paper's product rule collapses
with a backbone; bounded equals it where lengths agree); distillation 0.1 stays. Rechecked at 20 epochs with
``"pcgrad"`` and ``length_scale="backbone_bits"`` / ``"inv_bits"`` beside them: the defaults are within noise of
equal weights without distillation everywhere (the cheaper equivalent, ``adaptive=False, distill=0``), PCGrad is
inert (the lengths' head gradients almost never have a negative dot), and no loss scale helps every loss and
backbone. ``"dominance"``, ``"pcgrad"``, every ``length_scale`` and equal weights stay options.

The reference also slices the flattened weight gradient with a hard-coded 2048
(ResNet-50 features); here rows are always in_features wide. (Its RML_E branch for
"CSQ" also overwrites the CSQ criteria with DBDH ones: a base-loss choice, not reproduced.)
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nhl_fast import _checks, reference
from nhl_fast._dispatch import dispatch
from nhl_fast._objective_views import join_views
from nhl_fast.layers import NestedCodes
from nhl_fast.losses import NestedLoss, PerLengthLoss, get_loss, multi_hot
from nhl_fast.weight_rules import WEIGHT_RULES, BoundedWeights, PCGradWeights


def objective_terms(u: Tensor, grads: Optional[Tensor], losses: Tensor, x: Optional[Tensor],
                    relax_deriv: Optional[Tensor], bit_list: Sequence[int], beta: float, distill: float,
                    faithful: bool, closed_form: bool):
    """reference.nhl_objective's outputs: the C++ op on CPU, Triton on CUDA, else the torch spec (NHL_BACKEND
    picks another; one that cannot run falls back to the spec: _dispatch, strict=False)."""
    return dispatch("nhl_objective", u.device, strict=False)(u, grads, losses, x, relax_deriv, list(bit_list), beta,
                                                             distill, faithful, closed_form)


def _out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError, or an allocator's "out of memory" / "not enough memory" RuntimeError."""
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "not enough memory" in text


class _ClosedFormGrad(torch.autograd.Function):
    """total, with d total/du = grad_u added: the terms computed without a graph (closed-form base
    loss, distillation) reach the head through this one node."""

    @staticmethod
    def forward(ctx, total, u, grad_u):
        ctx.save_for_backward(grad_u)
        ctx.u_dtype = u.dtype
        return total.clone()

    @staticmethod
    def backward(ctx, grad_total):
        (grad_u,) = ctx.saved_tensors
        return grad_total, (grad_u * grad_total).to(ctx.u_dtype), None


def relax_derivative(codes: NestedCodes, dtype) -> Optional[Tensor]:
    """(B, b_max) du/dz of the layer's relaxation (None for the identity), no graph."""
    if codes.relax == "tanh":
        u = codes.full.detach().to(dtype)
        return 1 - u * u
    if codes.relax == "sign_ste":
        return (codes.pre.detach().abs() <= 1).to(dtype)
    return None


#: the centres a centre loss gets when none are named (faithful=True: "per_length", the reference's);
#: "joint" (nhl_fast.losses.joint_centers) separates every prefix at once (bench/bench_fidelity.py)
DEFAULT_CENTERS = "joint"
#: length_scale -> the power p of the per-length factor b_k^p / mean(b^p)
LENGTH_SCALES = {"mean": 0.0, "sqrt_bits": 0.5, "bits": 1.0, "backbone_bits": 1.0, "inv_bits": -1.0}
#: the scales that reach only the backbone (the layer's input): the head's W and b train on the losses as defined
BACKBONE_SCALES = ("backbone_bits",)
#: the adaptive weight rule when none is named (faithful=True: "dominance", the paper's). On
#: bench/bench_fidelity.py "bounded" equals dominance wherever the lengths do not conflict (CSQ with joint
#: centres, feature mode) and is better where they do (DPSH + MLP: worst length -0.008 vs -0.015)
DEFAULT_WEIGHT_RULE = "bounded"


def centers_kwargs(base_loss, centers, faithful: bool) -> dict:
    """{"centers": ...} for a registered centre loss (the default when None), {} for any other loss."""
    from nhl_fast.losses._centered import CenteredLoss
    from nhl_fast.losses import _REGISTRY

    if isinstance(base_loss, str) and isinstance(_REGISTRY.get(base_loss.lower()), type) \
            and issubclass(_REGISTRY[base_loss.lower()], CenteredLoss):
        return {"centers": ("per_length" if faithful else DEFAULT_CENTERS) if centers is None else centers}
    if centers is not None:
        raise ValueError(f"centers= applies to the centre losses (csq, dpn, mdsh, shcir), not base_loss={base_loss!r}")
    return {}


class NHLObjective(nn.Module):
    """loss = obj(u_list, labels, indices): the NHL objective over every code length.

    Args:
        base_loss: a registered loss name (``nhl_fast.losses.available()``), a
            :class:`~nhl_fast.losses.NestedLoss`, or any callable ``fn(u_k, labels, indices) -> scalar``.
        bit_list: the code lengths (strictly increasing), as in the layer.
        adaptive: dominance-aware adaptive weights (else all weights are 1).
        beta: the conflict threshold factor (tau_i = beta n_i^2 / (K-1)).
        distill: weight of the long-short cascade distillation (0 turns it off).
        faithful: reproduce the reference code's quirks (see the module docstring).
        centers: the centres of a centre loss (csq, dpn, mdsh, shcir): None picks ``DEFAULT_CENTERS``
            (``"per_length"``, the reference's, when ``faithful``); or any value the loss takes.
        length_scale: ``"mean"`` (each L_k as the loss defines it, the reference), ``"bits"`` (L_k times
            b_k / mean(b): the longer lengths get more say over the shared bits and the backbone) or
            ``"sqrt_bits"`` (times sqrt(b_k) / mean(sqrt(b))), ``"inv_bits"`` (times (1 / b_k) / mean(1 / b):
            the short lengths get the say), or ``"backbone_bits"``: ``"bits"`` for the gradient
            that reaches the backbone (the layer's input) only, the head's W and b training on the losses as
            defined (the weights, distillation and the total's value are those of ``"mean"``; needs the
            NestedCodes of NestedHashLayer; in feature mode, where nothing trains below the head, it is ``"mean"``).
        weight_rule: with ``adaptive``: None picks ``DEFAULT_WEIGHT_RULE`` (``"dominance"`` when ``faithful``);
            ``"dominance"`` (the paper's rule, reference.dominance_weights) or ``"bounded"``
            (nhl_fast.weight_rules: the worst conflict instead of the product, floored at ``weight_floor``,
            smoothed over steps with ``weight_momentum``) or ``"pcgrad"`` (gradient surgery, Yu et al. 2020:
            each length's head-weight gradient projected off those it conflicts with, in a fixed order, then
            summed; nhl_fast.weight_rules.pcgrad_weights).
        **loss_kwargs: passed to the registered loss (e.g. num_classes, num_train).

    ``u_list`` is what :class:`~nhl_fast.NestedHashLayer` returns (a :class:`NestedCodes`
    carrying the layer input and pre-activation, which the exact adaptive weights need).
    A plain list of nested prefixes also works; with ``adaptive=True`` it then needs
    ``x=`` (the head's input) and is taken as a raw linear head (``relax="none"``).

    Unsupervised base losses (``cibhash``, ``greedyhash``, ``bihalf``, ...: two augmented views, no
    labels): ``obj(u_list, u_other=u_list_2, z=z1, z_other=z2)`` with both views' codes from the same
    layer and, for the losses that use them, the latents feeding it. Adaptive weights and
    distillation see both views as one batch of 2B rows (nhl_fast/_objective_views.py).

    After each call: ``last_weights`` (K,), ``last_conflicts`` (K, K) bool (pairs i < j whose
    gradients conflict past tau_i), ``last_grad_dots`` (K, K), ``last_losses`` (K,) and
    ``last_distill`` (K-1,) -- detached tensors, on device (reading them syncs, the step does not).
    """

    def __init__(self, base_loss: Union[str, NestedLoss, Callable], bit_list: Sequence[int] = (8, 16, 32, 64, 128),
                 adaptive: bool = True, beta: float = 1.0, distill: float = 0.1, faithful: bool = False,
                 weight_rule: Optional[str] = None, weight_floor: float = 0.5, weight_momentum: float = 0.9,
                 centers=None, length_scale: str = "mean", **loss_kwargs):
        super().__init__()
        self.bit_list = _checks.increasing_lengths(bit_list, "bit_list")
        loss_kwargs.update(centers_kwargs(base_loss, centers, faithful))
        if isinstance(base_loss, str):
            self.base = get_loss(base_loss, self.bit_list, **loss_kwargs)
        elif isinstance(base_loss, NestedLoss):
            if tuple(base_loss.bit_list) != self.bit_list:
                raise ValueError(f"base_loss was built for bit_list={tuple(base_loss.bit_list)}, "
                                 f"the objective for {self.bit_list}")
            self.base = base_loss
        elif callable(base_loss):
            self.base = PerLengthLoss(base_loss, self.bit_list, **loss_kwargs)
        else:
            raise TypeError(f"base_loss must be a registered name, a NestedLoss or a callable, "
                            f"got {type(base_loss).__name__}")
        if not (isinstance(beta, (int, float)) and beta > 0):
            raise ValueError(f"beta must be a positive number, got {beta!r}")
        if not (isinstance(distill, (int, float)) and distill >= 0):
            raise ValueError(f"distill must be a number >= 0, got {distill!r}")
        self.adaptive, self.beta, self.distill, self.faithful = bool(adaptive), float(beta), float(distill), bool(faithful)
        # weight rules beyond the op's dominance rule (nhl_fast.weight_rules): run on the torch spec
        weight_rule = ("dominance" if faithful else DEFAULT_WEIGHT_RULE) if weight_rule is None else weight_rule
        if weight_rule not in WEIGHT_RULES:
            raise ValueError(f"weight_rule must be one of {WEIGHT_RULES}, got {weight_rule!r}")
        if faithful and weight_rule != "dominance":
            raise ValueError(f"faithful=True reproduces the reference's dominance rule; weight_rule={weight_rule!r} "
                             "cannot be faithful")
        self.weight_rule = weight_rule
        if length_scale not in LENGTH_SCALES:
            raise ValueError(f"length_scale must be one of {tuple(LENGTH_SCALES)}, got {length_scale!r}")
        if faithful and length_scale != "mean":
            raise ValueError("faithful=True reproduces the reference's per-length losses; length_scale must be 'mean'")
        self.length_scale = length_scale
        scale = torch.tensor(self.bit_list, dtype=torch.float64) ** LENGTH_SCALES[length_scale]
        self.register_buffer("_scale", scale / scale.mean() if length_scale != "mean" else None, persistent=False)
        self._backbone_only = length_scale in BACKBONE_SCALES
        self.rule = {"bounded": lambda: BoundedWeights(beta, weight_floor, weight_momentum),
                     "pcgrad": PCGradWeights}.get(weight_rule, lambda: None)()
        self._batched_grad = True
        #: use the base loss's closed-form per-length gradients (``length_grads``, e.g. CSQ) when it
        #: has them; False forces the generic autograd path (any loss goes through it)
        self.closed_form = True
        self._pack_indices: dict = {}  # device -> _pack_index, built once per device
        self.last_weights: Optional[Tensor] = None
        self.last_conflicts: Optional[Tensor] = None
        self.last_grad_dots: Optional[Tensor] = None
        self.last_losses: Optional[Tensor] = None
        self.last_distill: Optional[Tensor] = None
        #: None, or fn(u_list, labels, indices, x) -> the same four over a larger batch: the objective runs on
        #: what it returns (nhl_fast.distributed.GlobalBatch: every rank's batch, for DDP training)
        self.global_batch: Optional[Callable] = None

    def _full_codes(self, u_list, name: str = "u_list") -> Tensor:
        if not isinstance(u_list, (list, tuple)):
            raise TypeError(f"{name} must be the list of codes from NestedHashLayer, got {type(u_list).__name__}")
        if len(u_list) != len(self.bit_list):
            raise ValueError(f"{name} has {len(u_list)} codes, bit_list={self.bit_list} needs {len(self.bit_list)}")
        for u, b in zip(u_list, self.bit_list):
            if not isinstance(u, Tensor) or u.dim() != 2 or u.shape[1] != b:
                got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
                raise ValueError(f"{name} entries must be (B, b_k) tensors for bit_list={self.bit_list}, got {got}")
        return u_list.full if isinstance(u_list, NestedCodes) else u_list[-1]

    def _labels(self, labels: Tensor) -> Tensor:
        if isinstance(self.base, PerLengthLoss):
            return labels  # the user's callable, the user's label convention
        return multi_hot(labels, self.base.num_classes)

    def _base_losses(self, u: Tensor, labels: Tensor, indices: Optional[Tensor], views=None) -> Tensor:
        losses = self.base(u, self._labels(labels), indices) if views is None else views.losses(self.base, u, indices)
        if losses.shape != (len(self.bit_list),):
            raise ValueError(f"base_loss returned shape {tuple(losses.shape)}, expected ({len(self.bit_list)},)")
        return losses

    def _record(self, **values) -> None:
        """Set the last_* attributes. Eager: straight into __dict__ (nn.Module.__setattr__'s checks cost more
        than the kernels at small batches); compiled: plain setattr, which Dynamo tracks."""
        if torch.compiler.is_compiling():
            for name, value in values.items():
                setattr(self, name, value)
        else:
            self.__dict__.update(values)

    def _pack_index(self, device) -> Tensor:
        """(sum b_k,) positions, in a (K * b_max) flattening, of the packed columns [G_1[:, :b_1], ..., G_K[:, :b_K]]."""
        if device not in self._pack_indices:
            b_max = self.bit_list[-1]
            self._pack_indices[device] = torch.cat([torch.arange(b, device=device) + k * b_max
                                             for k, b in enumerate(self.bit_list)])
        return self._pack_indices[device]

    def _loss_grads(self, losses: Tensor, u: Tensor) -> Tensor:
        """(B, sum b_k) packed dL_k/du[:, :b_k] through the base loss graph only (one batched autograd call)."""
        k = losses.shape[0]
        G = None
        if self._batched_grad:
            eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
            try:
                (G,) = torch.autograd.grad(losses, u, eye, retain_graph=True, allow_unused=True,
                                           is_grads_batched=True)
            except RuntimeError as e:  # a loss op vmap cannot batch: K passes over the loss graph from now on
                if _out_of_memory(e):
                    raise  # not a limit of vmap: the caller must see it (smaller batch, more memory)
                self._batched_grad = False
                warnings.warn(f"NHLObjective: the base loss's backward cannot be batched over the {k} lengths "
                              f"(is_grads_batched / vmap: {str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                              f"this objective now computes the {k} per-length gradients with {k} separate backward "
                              "passes (same values, slower)", RuntimeWarning, stacklevel=5)
        if not self._batched_grad:
            parts = [torch.autograd.grad(losses[i], u, retain_graph=True, allow_unused=True)[0] for i in range(k)]
            G = torch.stack([p if p is not None else torch.zeros_like(u) for p in parts])
        if G is None:
            G = u.new_zeros((k,) + tuple(u.shape))
        return G.detach().transpose(0, 1).reshape(u.shape[0], -1).index_select(1, self._pack_index(u.device))

    def _backbone_scaled(self, total: Tensor, codes, losses: Tensor, u: Tensor, grads: Optional[Tensor],
                         weights: Tensor, deriv: Optional[Tensor], acc) -> Tensor:
        """length_scale="backbone_bits": total plus a value-neutral term whose gradient reaches the layer's input
        only: sum_k w_k (s_k - 1) dL_k/du, through the relaxation and W (held constant), so the backbone gets
        sum_k w_k s_k dL_k/du (the head's W and b keep sum_k w_k dL_k/du)."""
        if codes is None or codes.weight is None or codes.input is None:
            raise ValueError(f"length_scale={self.length_scale!r} needs the NestedCodes of NestedHashLayer (it "
                             "routes a gradient to the layer's input)")
        if not codes.input.requires_grad:  # feature mode: nothing below the head trains
            return total
        if grads is None:  # the autograd path without adaptive weights: the K gradients, one batched call
            grads = self._loss_grads(losses, u).to(acc)
        k = len(self.bit_list)
        length = torch.repeat_interleave(torch.arange(k, device=u.device),
                                         torch.tensor(self.bit_list, device=u.device))
        col = self._pack_index(u.device) % self.bit_list[-1]  # u's column of each packed column
        coef = (weights.to(acc) * (self._scale.to(device=u.device, dtype=acc) - 1))[length]
        extra = u.new_zeros(u.shape, dtype=acc).index_add_(1, col, grads.to(acc) * coef)
        if deriv is None:  # forward computes it only for the adaptive weights
            deriv = relax_derivative(codes, acc)
        if deriv is not None:
            extra = extra * deriv
        extra_x = (extra @ codes.weight.detach().to(acc)).to(codes.input.dtype)
        surrogate = (codes.input * extra_x).sum()
        return total + (surrogate - surrogate.detach()).to(total.dtype)

    def forward(self, u_list, labels: Optional[Tensor] = None, indices: Optional[Tensor] = None, *,
                x: Optional[Tensor] = None, u_other=None, z: Optional[Tensor] = None,
                z_other: Optional[Tensor] = None, x_other: Optional[Tensor] = None) -> Tensor:
        views = None
        unsupervised = getattr(self.base, "unsupervised", False)
        if not unsupervised and (labels is None or u_other is not None or z is not None or z_other is not None
                                 or x_other is not None):
            raise TypeError(f"base loss {self.base.name!r} is supervised: pass labels, not u_other/z/z_other/x_other "
                            "(those are for the unsupervised losses)")
        if self.global_batch is not None:
            self._full_codes(u_list)  # check this rank's codes before any communication
            u_list, labels, indices, x = self.global_batch(u_list, labels, indices, x)
            if unsupervised and u_other is not None:  # the second view and the latents travel the same way
                u_other, _, _, x_other = self.global_batch(u_other, None, None, x_other)
                z, z_other = self.global_batch.rows(z), self.global_batch.rows(z_other)
        if unsupervised:  # two views, no labels: one batch of 2B rows (_objective_views)
            u_list, x, views = join_views(u_list, labels, u_other, x, x_other, z, z_other, self.bit_list,
                                          self._full_codes)
        u = self._full_codes(u_list)
        k = len(self.bit_list)
        training = torch.is_grad_enabled() and u.requires_grad
        acc = torch.promote_types(u.dtype, torch.float32)
        codes = u_list if isinstance(u_list, NestedCodes) else None
        adaptive = self.adaptive and k > 1 and training
        inputs = None
        if adaptive:
            inputs = codes.input if codes is not None else x
            if inputs is None:
                raise ValueError("adaptive=True needs the layer input: pass the NestedCodes that NestedHashLayer "
                                 "returns, or x= (the input of a raw linear head)")
            inputs = inputs.detach().to(acc)
        u_acc = u.detach().to(acc)
        closed = training and self.closed_form and hasattr(self.base, "length_grads") and views is None
        scale = None if self._backbone_only else self._scale
        if closed:  # no graph through the base loss: values and packed gradients in closed form
            losses, grads = self.base.length_grads(u_acc, self._labels(labels), indices)
            if losses.shape != (k,):
                raise ValueError(f"base_loss returned shape {tuple(losses.shape)}, expected ({k},)")
            if scale is not None:  # length_scale="bits": each length's values and gradients times s_k
                s_k = scale.to(losses.dtype)
                losses = losses * s_k
                grads = grads * torch.repeat_interleave(s_k, torch.tensor(self.bit_list, device=s_k.device))
        else:
            losses = self._base_losses(u, labels, indices, views)
            if scale is not None:
                losses = losses * scale.to(losses.dtype)
            grads = self._loss_grads(losses, u).to(acc) if adaptive else None  # autograd over the loss graph
        deriv = relax_derivative(codes, acc) if adaptive and codes is not None else None
        use_distill = self.distill > 0 and k > 1
        args = (u_acc, grads, losses.detach().to(acc), inputs, deriv, self.bit_list, self.beta,
                self.distill if use_distill else 0.0, self.faithful, closed)
        if adaptive and self.rule is not None:
            total, grad_u, weights, conflicts, dots, dist = reference.nhl_objective(*args, weight_rule=self.rule)
        else:
            total, grad_u, weights, conflicts, dots, dist = objective_terms(*args)
        self._record(last_losses=losses.detach(), last_distill=dist, last_weights=weights,
                     last_conflicts=conflicts if adaptive else None, last_grad_dots=dots if adaptive else None)
        if not closed:  # the base losses' gradients flow through their own graph
            final = weights
            if self.faithful and adaptive and use_distill:  # quirk 3 (see the module docstring)
                final = F.pad(weights[:-1], (0, 1))
            total = total.to(losses.dtype) + (final.to(losses.dtype) * losses).sum()
        if training and (closed or use_distill):
            total = _ClosedFormGrad.apply(total, u, grad_u)
        if training and self._backbone_only:
            total = self._backbone_scaled(total, codes, losses, u, grads, weights, deriv, acc)
        if self.faithful and adaptive:
            # quirk 2: the head keeps the last analysis pass's gradient dO_K/d(W, b) (D_K = 0)
            if codes is None or codes.weight is None:
                raise ValueError("faithful=True needs the NestedCodes of NestedHashLayer (it touches W and b)")
            g_last = grads[:, -self.bit_list[-1]:]
            if deriv is not None:
                g_last = g_last * deriv
            g_last = g_last.to(codes.weight.dtype)
            xin = codes.input.detach().to(g_last.dtype)
            surrogate = (codes.weight * (g_last.T @ xin)).sum() + (codes.bias * g_last.sum(0)).sum()
            total = total + (surrogate - surrogate.detach()).to(total.dtype)
        return total
