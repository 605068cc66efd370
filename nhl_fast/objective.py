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
The K base-loss parts dL_k/dz come from ONE batched autograd call over the base-loss
graph only (``is_grads_batched``: the backbone and the projection are never traversed;
K passes over that graph if vmap cannot batch one of its ops), the distillation parts
are closed-form (below); then one B x B Gram, applied to the sum(b_k) nonzero columns,
gives all K(K-1)/2 dots and K norms, on device, with no host sync.
When B > sum(b_k) the direct form g_k = G_k^T X is cheaper and is used instead.
A base loss with closed-form gradients (``length_grads`` + ``to_codes``, e.g. CSQ) skips the
batched autograd call and the loss graph: its losses are computed without a graph and the final
backward receives sum_k w_k dL_k/du through the same value-neutral surrogate as distillation
(``closed_form = False`` forces the generic path). The K gradients travel packed, (B, sum b_k):
G_k[:, :b_k] side by side.

Distillation D_k (k < K): ||N(S_{k+1}) - N(S_k)||_F^2 / B^2 with S_k = u_k u_k^T,
N = row L2-normalisation, the teacher S_{k+1} detached. All K Grams come from cumulative
prefix blocks: S_{k+1} = S_k + u[:, b_k:b_{k+1}] u[:, b_k:b_{k+1}]^T (total cost: one
b_max-wide Gram). Its gradient is closed-form (cascade_distill_grad: dD/dS from the
normalisation, then (A + A^T) u_k), used both for the adaptive weights and, through a
value-neutral surrogate term, for the final backward: no autograd graph, no vmap over it.
On CPU the value and the packed gradient of all K-1 pairs come from one fused C++ op
(nhl_fast::cascade_distill, spec reference.cascade_distill); other devices use the torch formula.

faithful=True reproduces the reference step (model_grand_sd.py, RML_E + analysis) with
its quirks, for comparison:
  1. n_i is the norm of the SHORTEST length's gradient, ||g_1[:b_i]||, for every i
     (the reference reads grad_norm[idx][0]).
  2. The final backward accumulates onto the head's leftover gradient of the last
     analysis pass (no zero_grad in between): W and b also receive dO_K/d(W, b),
     unweighted (added here as a value-neutral surrogate term; the backbone is unaffected).
  3. With distillation on, the final sum zips the K weights with the K-1 distillation
     terms, so the longest length's term w_K O_K is dropped from the final objective.
The reference also slices the flattened weight gradient with a hard-coded 2048
(ResNet-50 features); here rows are always in_features wide. (Its RML_E branch for
"CSQ" also overwrites the CSQ criteria with DBDH ones: a base-loss choice, not reproduced.)
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nhl_fast._dispatch import not_supported_reasons
from nhl_fast.layers import NestedCodes, check_bit_list
from nhl_fast.losses import NestedLoss, PerLengthLoss, get_loss, multi_hot
from nhl_fast.reference import relax_grad


def _prefix_grams(u: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(K, B, B) S_k = u[:, :b_k] u[:, :b_k]^T from cumulative blocks (one b_max-wide Gram in total)."""
    bounds = (0,) + tuple(bit_list)
    if torch.is_grad_enabled() and u.requires_grad:  # differentiable form (out= has no autograd)
        return torch.stack([u[:, lo:hi] @ u[:, lo:hi].T for lo, hi in zip(bounds, bounds[1:])]).cumsum(0)
    batch = u.shape[0]
    grams = u.new_empty(len(bit_list), batch, batch)
    torch.mm(u[:, :bit_list[0]], u[:, :bit_list[0]].T, out=grams[0])
    for k in range(1, len(bit_list)):  # S_k = S_{k-1} + block block^T: the add is fused into the GEMM
        block = u[:, bit_list[k - 1]:bit_list[k]]
        torch.addmm(grams[k - 1], block, block.T, out=grams[k])
    return grams


def cascade_distill(u: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(K-1,) similarity-preserving losses D_k between prefix k (student) and k+1 (teacher, detached).

    Differentiable (autograd); the objective itself uses cascade_distill_parts + cascade_distill_grad.
    """
    batch = u.shape[0]
    normed = F.normalize(_prefix_grams(u, bit_list), dim=2)  # row-normalise each (B, B) Gram
    diff = normed[1:].detach() - normed[:-1]
    return (diff * diff).sum((1, 2)) / (batch * batch)


_EPS = 1e-12  # F.normalize's


@torch.no_grad()
def cascade_distill_parts(u: Tensor, bit_list: Sequence[int]):
    """(D (K-1,), N (K, B, B) row-normalised Grams, r (K, B, 1) their clamped row norms), no graph."""
    batch = u.shape[0]
    grams = _prefix_grams(u, bit_list)
    norms = torch.linalg.vector_norm(grams, dim=2, keepdim=True).clamp_min(_EPS)
    normed = grams / norms
    diff = normed[1:] - normed[:-1]
    return (diff * diff).sum((1, 2)) / (batch * batch), normed, norms


@torch.no_grad()
def cascade_distill_grad_packed(u: Tensor, normed: Tensor, norms: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(B, sum b_k) the nonzero columns of every dD_k/du side by side (length k's segment holds
    dD_k/du[:, :b_k]; the longest length's segment is 0). See cascade_distill_grad."""
    batch = u.shape[0]
    student, teacher, r = normed[:-1], normed[1:], norms[:-1]
    e = 2 * (student - teacher) / (batch * batch)
    a = torch.where(r > _EPS, e - student * (e * student).sum(2, keepdim=True), e) / r
    sym = a + a.transpose(1, 2)
    parts = [sym[k] @ u[:, :b] for k, b in enumerate(bit_list[:-1])]  # only the b_k columns D_k depends on
    return torch.cat(parts + [u.new_zeros(batch, bit_list[-1])], dim=1)


@torch.no_grad()
def cascade_distill_grad(u: Tensor, normed: Tensor, norms: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(K, B, b_max) dD_k/du in closed form (row K is 0: the longest code has no teacher).

    With E = dD/dN = 2 (N_k - N_{k+1}) / B^2 and N = S / r row-wise:
    dD/dS = (E - N rowsum(E * N)) / r (just E / r where r was clamped), and S = u_k u_k^T
    gives dD/du_k = (A + A^T) u_k. K - 1 small batched products instead of a vmapped
    backward through K Gram graphs.
    """
    packed = cascade_distill_grad_packed(u, normed, norms, bit_list)
    return unpack_lengths(packed, bit_list)


@torch.compiler.assume_constant_result  # decided once at trace time (fullgraph-safe)
def _cpp_distill(device: torch.device) -> bool:
    """Whether the fused C++ op cascade_distill (value + packed gradient) serves tensors on `device`:
    CPU with the extension built, unless NHL_BACKEND asks for another backend (then the torch formula)."""
    import nhl_fast.ops  # noqa: F401  (registers the op's fake)

    return (device.type == "cpu" and os.environ.get("NHL_BACKEND", "auto") in ("auto", "cpp")
            and not not_supported_reasons("cpp", device))


def fold_lengths(packed: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(B, b_max) sum_k of the packed segments, segment k added onto columns [0, b_k).

    K slice adds: an index_add_ along the columns is several times slower on CPU."""
    out, lo = None, 0
    for b in bit_list:
        part = packed[:, lo:lo + b]
        if out is None:
            out = packed.new_zeros(packed.shape[0], bit_list[-1])
        out[:, :b] += part
        lo += b
    return out


def pack_index(bit_list: Sequence[int], device) -> Tensor:
    """(sum b_k,) positions, in a (K * b_max) flattening, of the packed columns [G_1[:, :b_1], ..., G_K[:, :b_K]]."""
    b_max = bit_list[-1]
    return torch.cat([torch.arange(b, device=device) + k * b_max for k, b in enumerate(bit_list)])


def unpack_lengths(packed: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(K, B, b_max) zero-padded per-length gradients from the (B, sum b_k) packed form."""
    full = packed.new_zeros(len(bit_list), packed.shape[0], bit_list[-1])
    lo = 0
    for i, b in enumerate(bit_list):  # K slice copies: index_copy_ along the columns is slow on CPU
        full[i, :, :b] = packed[:, lo:lo + b]
        lo += b
    return full


def gradient_dots(packed: Tensor, x: Tensor, index: Tensor, bit_list: Sequence[int]) -> Tensor:
    """(K, K) d[i, j] = <g_i[:b_i rows], g_j[:b_i rows]> with g_k = G_k^T x.

    packed: (B, sum b_k) the nonzero columns G_k[:, :b_k] of every length side by side (O_k depends on
    nothing past b_k, so G_k is 0 there); x: (B, in) the layer input; index: pack_index(bit_list).
    Every dot is then a full inner product <G_i, (X X^T) G_j>, and the B x B Gram multiplies only
    the sum(b_k) packed columns.
    """
    k, b_max = len(bit_list), bit_list[-1]
    batch = packed.shape[0]
    left = unpack_lengths(packed, bit_list)  # (K, B, b_max)
    if batch <= packed.shape[1]:  # via the B x B Gram of the input
        right = unpack_lengths((x @ x.T) @ packed, bit_list)
        return left.reshape(k, -1) @ right.reshape(k, -1).T
    g = left.transpose(1, 2) @ x  # (K, b_max, in): the weight gradients themselves (cheaper for huge B)
    return g.reshape(k, -1) @ g.reshape(k, -1).T


def dominance_weights(dots: Tensor, beta: float, faithful: bool = False):
    """(weights (K,), conflicts (K, K) bool) from the gradient dots d[i, j] = <g_i[:b_i], g_j[:b_i]>."""
    k = dots.shape[0]
    # n_i^2 = d[i, i]; faithful: the shortest length's ||g_1[:b_i]||^2 = d[0, 0] (g_1 is 0 beyond b_1)
    norm2 = dots[0, 0].expand(k) if faithful else dots.diagonal()
    tau = beta * norm2 / (k - 1)
    upper = torch.ones(k, k, dtype=torch.bool, device=dots.device).triu(1)
    conflicts = upper & (dots < -tau[:, None])
    alpha = torch.where(conflicts, tau[:, None] / -dots, 1.0)
    anchor = F.pad(alpha.diagonal(1), (0, 1), value=1.0)  # a_{i,i+1}; the last row has no pair
    alpha = torch.where(upper, torch.minimum(alpha, anchor[:, None]), 1.0)
    w = alpha.prod(0)  # w_j = prod_{i<j} a_ij (a_ij = 1 for i >= j, so w_0 = 1)
    return k * w / w.sum(), conflicts


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
        **loss_kwargs: passed to the registered loss (e.g. num_classes, num_train).

    ``u_list`` is what :class:`~nhl_fast.NestedHashLayer` returns (a :class:`NestedCodes`
    carrying the layer input and pre-activation, which the exact adaptive weights need).
    A plain list of nested prefixes also works; with ``adaptive=True`` it then needs
    ``x=`` (the head's input) and is taken as a raw linear head (``relax="none"``).

    After each call: ``last_weights`` (K,), ``last_conflicts`` (K, K) bool (pairs i < j whose
    gradients conflict past tau_i), ``last_grad_dots`` (K, K), ``last_losses`` (K,) and
    ``last_distill`` (K-1,) -- detached tensors, on device (reading them syncs, the step does not).
    """

    def __init__(self, base_loss: Union[str, NestedLoss, Callable], bit_list: Sequence[int] = (8, 16, 32, 64, 128),
                 adaptive: bool = True, beta: float = 1.0, distill: float = 0.1, faithful: bool = False,
                 **loss_kwargs):
        super().__init__()
        self.bit_list = check_bit_list(bit_list)
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
        self._batched_grad = True
        #: use the base loss's closed-form per-length gradients (``length_grads``, e.g. CSQ) when it
        #: has them; False forces the generic autograd path (any loss goes through it)
        self.closed_form = True
        self._masks: dict = {}  # (device, dtype) -> _packing, built once per device
        self.last_weights: Optional[Tensor] = None
        self.last_conflicts: Optional[Tensor] = None
        self.last_grad_dots: Optional[Tensor] = None
        self.last_losses: Optional[Tensor] = None
        self.last_distill: Optional[Tensor] = None

    def _full_codes(self, u_list) -> Tensor:
        if not isinstance(u_list, (list, tuple)):
            raise TypeError(f"u_list must be the list of codes from NestedHashLayer, got {type(u_list).__name__}")
        if len(u_list) != len(self.bit_list):
            raise ValueError(f"u_list has {len(u_list)} codes, bit_list={self.bit_list} needs {len(self.bit_list)}")
        for u, b in zip(u_list, self.bit_list):
            if not isinstance(u, Tensor) or u.dim() != 2 or u.shape[1] != b:
                got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
                raise ValueError(f"u_list entries must be (B, b_k) tensors for bit_list={self.bit_list}, got {got}")
        return u_list.full if isinstance(u_list, NestedCodes) else u_list[-1]

    def _labels(self, labels: Tensor) -> Tensor:
        if isinstance(self.base, PerLengthLoss):
            return labels  # the user's callable, the user's label convention
        return multi_hot(labels, self.base.num_classes)

    def _base_losses(self, u: Tensor, labels: Tensor, indices: Optional[Tensor]) -> Tensor:
        losses = self.base(u, self._labels(labels), indices)
        if losses.shape != (len(self.bit_list),):
            raise ValueError(f"base_loss returned shape {tuple(losses.shape)}, expected ({len(self.bit_list)},)")
        return losses

    def _packing(self, device, dtype):
        """(pack_index, column of each packed column, (K, sum b_k) 0/1 length of each packed column), cached."""
        key = (device, dtype)
        if key not in self._masks:
            index = pack_index(self.bit_list, device)
            seg = torch.cat([torch.full((b,), k, device=device) for k, b in enumerate(self.bit_list)])
            onehot = (seg == torch.arange(len(self.bit_list), device=device)[:, None]).to(dtype)
            self._masks[key] = (index, index % self.bit_list[-1], onehot)
        return self._masks[key]

    def _loss_grads(self, losses: Tensor, u: Tensor) -> Tensor:
        """(K, B, b_max) dL_k/du through the base loss graph only (one batched autograd call)."""
        k = losses.shape[0]
        G = None
        if self._batched_grad:
            eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
            try:
                (G,) = torch.autograd.grad(losses, u, eye, retain_graph=True, allow_unused=True,
                                           is_grads_batched=True)
            except RuntimeError:  # a loss op vmap cannot batch: fall back to K passes over the loss graph
                self._batched_grad = False
        if not self._batched_grad:
            parts = [torch.autograd.grad(losses[i], u, retain_graph=True, allow_unused=True)[0] for i in range(k)]
            G = torch.stack([p if p is not None else torch.zeros_like(u) for p in parts])
        return u.new_zeros((k,) + tuple(u.shape)) if G is None else G

    def forward(self, u_list, labels: Tensor, indices: Optional[Tensor] = None, *, x: Optional[Tensor] = None) -> Tensor:
        u = self._full_codes(u_list)
        k = len(self.bit_list)
        training = torch.is_grad_enabled() and u.requires_grad
        use_distill = self.distill > 0 and k > 1
        acc = torch.promote_types(u.dtype, torch.float32)
        grad_cols = None  # dL/d(loss column layout) in closed form, when the base loss provides it
        packed_layout = False  # the loss's column layout is [u[:, :b_1], ..., u[:, :b_K]] (the packed form)
        if training and self.closed_form and hasattr(self.base, "length_grads") and hasattr(self.base, "to_codes"):
            # no graph through the base loss: its gradient enters the final backward through the
            # value-neutral surrogate below, and the adaptive weights need no batched backward
            losses, grad_cols, scale = self.base.length_grads(u.detach().to(acc), self._labels(labels), indices)
            packed_layout = bool(getattr(self.base, "packed_layout", False))
            if losses.shape != (k,):
                raise ValueError(f"base_loss returned shape {tuple(losses.shape)}, expected ({k},)")
        else:
            losses = self._base_losses(u, labels, indices)
        index, cols, seg = self._packing(u.device, acc)
        if use_distill:
            # D needs no autograd graph: its gradient is closed-form (cascade_distill_grad) and enters
            # the final loss through a value-neutral surrogate term below.
            u_acc = u.detach().to(acc)
            if _cpp_distill(u_acc.device):  # one fused C++ call (the ~40 small torch ops cost more than the math)
                dist, grad_d = torch.ops.nhl_fast.cascade_distill(u_acc, list(self.bit_list))
                grad_d = grad_d if training else None
            else:
                dist, normed, norms = cascade_distill_parts(u_acc, self.bit_list)
                grad_d = cascade_distill_grad_packed(u_acc, normed, norms, self.bit_list) if training else None
        else:
            dist, grad_d = losses.new_zeros(k - 1).detach(), None
        self.last_losses, self.last_distill = losses.detach(), dist
        weights = torch.ones(k, dtype=acc, device=u.device)
        codes = u_list if isinstance(u_list, NestedCodes) else None
        G = None
        if self.adaptive and k > 1 and training:
            inputs = codes.input if codes is not None else x
            if inputs is None:
                raise ValueError("adaptive=True needs the layer input: pass the NestedCodes that NestedHashLayer "
                                 "returns, or x= (the input of a raw linear head)")
            G = self._loss_grads(losses, u) if grad_cols is None else None  # autograd over the loss graph
            with torch.no_grad():  # the weights are constants of the final backward
                # G: (B, sum b_k), every G_k[:, :b_k] side by side (G_k is 0 past b_k)
                if packed_layout:  # the loss's columns are that layout already, each in one length
                    G = grad_cols * scale.sum(0)
                else:
                    if G is None:
                        G = self.base.to_codes(scale[:, None, :] * grad_cols)
                    G = G.to(acc).transpose(0, 1).reshape(u.shape[0], -1).index_select(1, index)
                if grad_d is not None:
                    G = G + self.distill * grad_d
                if codes is not None and codes.relax != "none":
                    G = relax_grad(G, codes.relax, codes.full.index_select(1, cols), codes.pre.index_select(1, cols))
                dots = gradient_dots(G, inputs.to(acc), index, self.bit_list)
                weights, conflicts = dominance_weights(dots, self.beta, self.faithful)
            self.last_conflicts, self.last_grad_dots = conflicts, dots
        else:
            self.last_conflicts, self.last_grad_dots = None, None
        self.last_weights = weights
        final = weights
        if self.faithful and G is not None and use_distill:
            # quirk 3: zip(ws, criterions, outputs, distill_losses) stops at K-1 with distillation on
            final = F.pad(weights[:-1], (0, 1))
        total = (final.to(losses.dtype) * losses).sum()
        grad_u = None  # d total / du of the terms that carry no graph (closed-form loss, distillation)
        if grad_cols is not None:
            per_col = (final.to(acc) @ scale) * grad_cols
            grad_u = fold_lengths(per_col, self.bit_list) if packed_layout else self.base.to_codes(per_col)
        if use_distill:
            coef = self.distill * final[:-1]
            total = total + (coef * dist).sum().to(total.dtype)
            if training:
                # sum_k coef_k dD_k/du: the packed columns scaled per length, added back onto their columns
                scaled = grad_d * (F.pad(coef, (0, 1)).to(acc) @ seg)
                grad_dist = fold_lengths(scaled, self.bit_list)
                grad_u = grad_dist if grad_u is None else grad_u + grad_dist
        if grad_u is not None:
            surrogate = (u * grad_u.to(u.dtype)).sum()
            total = total + (surrogate - surrogate.detach()).to(total.dtype)
        if self.faithful and G is not None:
            # quirk 2: the head keeps the last analysis pass's gradient dO_K/d(W, b)
            if codes is None or codes.weight is None:
                raise ValueError("faithful=True needs the NestedCodes of NestedHashLayer (it touches W and b)")
            g_last = G[:, -self.bit_list[-1]:].to(codes.weight.dtype)  # the longest length's segment  # computed under no_grad: a constant
            xin = codes.input.detach().to(g_last.dtype)
            surrogate = (codes.weight * (g_last.T @ xin)).sum() + (codes.bias * g_last.sum(0)).sum()
            total = total + (surrogate - surrogate.detach()).to(total.dtype)
        return total
