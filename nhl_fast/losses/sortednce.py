"""SortedNCE: the contrastive loss of NSH, Naturally-Sorted Hashing, every code length in one fused call."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from nhl_fast import _checks
from nhl_fast._dispatch import dispatch
from nhl_fast.losses import register
from nhl_fast.losses._code_memory import CodeMemory
from nhl_fast.losses.base import UnsupervisedNestedLoss


#: SoftSort temperature on D in [0, 1] (see the class docstring: measured on digits)
SORT_TAU = 0.05


def sorted_code_term(u: Tensor, v: Tensor, bits: Sequence[int]) -> Tensor:
    """(K,) the NSH script's extra term ||B - P B||^2 of both views, P the hard SoftSort rows of each length:
    Q_k = (1/(2B)) sum_i sum_r (||sg(u_r) - u_{s_i(r)}||^2 + ||sg(v_r) - v_{s_i(r)}||^2) on the first b_k columns,
    s_i(r) the candidate at rank r of anchor i (ascending D_ij = (b - <u_i, v_j>_b) / (2b), a tie to its lowest
    index, as the op's hard rows). Computed from the (B, B) rank counts M_rj = #{i: s_i(r) = j}, no (B, B, B)."""
    n = u.shape[0]
    out = []
    for b in bits:
        ub, vb = u[:, :b], v[:, :b]
        with torch.no_grad():
            q, idx = torch.sort((b - ub @ vb.T) / (2 * b), dim=1, stable=True)
            new = torch.ones_like(q, dtype=torch.bool)
            new[:, 1:] = q[:, 1:] != q[:, :-1]
            rank = torch.arange(n, device=u.device).expand(n, n)
            first = torch.where(new, rank, torch.zeros_like(rank)).cummax(dim=1).values  # start of each tie
            s = idx.gather(1, first)                                                     # s[i, r] = j
            counts = torch.zeros(n, n, dtype=u.dtype, device=u.device).scatter_add_(
                1, s.T.contiguous(), torch.ones(n, n, dtype=u.dtype, device=u.device))    # M[r, j]
        total = u.new_zeros(())
        for x in (ub, vb):
            sq = (x * x).sum(1)
            total = total + n * sq.detach().sum() + (counts.sum(0) * sq).sum() - 2 * (counts * (x.detach() @ x.T)).sum()
        out.append(total / (2 * n))
    return torch.stack(out)


@register("sortednce")
class SortedNCE(UnsupervisedNestedLoss):
    """L_k = (1/B) sum_i (1/m) sum_{r<m} -log( exp(c_ir/tau) / (exp(c_ir/tau) + sum_{r'>=m} exp(c_ir'/tau)) ).

    Source: Yu, Shen, Wang, Zhang & Torr, "Learning to Hash Naturally Sorts", IJCAI 2022 (arXiv 2201.13322),
    Algorithm 1, with SoftSort (Prillo & Eisenschlos, ICML 2020) as the sorter. For anchor i and length b:
      s_ij = (b - <u_i, v_j>_b) / (2b)           relaxed Hamming distance (1 - the paper's code similarity S)
      Pt_i = softmax_j(-|sort(s_i)_r - s_ij| / tau_s)   the SoftSort rows, ascending distance;
      P_i  = Pt_i (soft) or onehot(argmax_j) + Pt_i - sg(Pt_i) (hard: straight-through, the default)
      E_i  = P_i z                               z's rows in the order of their codes' distance to u_i
      c_ir = cos(E_ir, z_other_i)                against the anchor's other-view latent
    and the first m ranks of each sorted list are its positives, the rest negatives (a one-hot over n - m + 1
    logits per positive, the paper's pseudo-code). As there: distances between u (view 1) and u_other (view 2),
    the gathered latents z (view 1), the anchor latent z_other (view 2); ``symmetric=True`` averages this with
    the views swapped (not in the paper). A tie between distances gives the hard rows the lower index
    (argmax's first maximum), so tied candidates repeat, as in SoftSort's reference code.

    Defaults and where they come from. The authors' code was not found; the public NSH training script found is
    an unofficial reproduction, github.com/DimpleCrq/NSH (train.py, utils.py), whose README says it does not
    converge. From it: m = 2 positives, tau = 0.1, hard (straight-through) SoftSort. Its SoftSort input is the
    paper's similarity s = <b1, b2> / (2 bit) + 0.5 = 1 - D in [0, 1] (train.py: ``s = torch.matmul(b1, b2.T) /
    (2 * bit) + 0.5``, then ``SoftSort(bit)(s)``), so |s_r - s_j| = |D_r - D_j| and the script's temperature maps
    onto ours one to one: sort_tau = the code length b (kept as ``sort_tau="bits"``). At that temperature every
    logit is at most 1/b in size, the rows are ~uniform and the codes get almost no gradient (on digits: chance
    mAP, 0.104 at every length). The default here is instead one temperature on D for every length,
    ``sort_tau=SORT_TAU`` = 0.05, measured on the digits compare (bench/README.md). A float ``sort_tau`` sets
    any other; SoftSort on the raw inner products <u_i, v_j> in [-b, b] with temperature t is sort_tau = t / (2b).

    Options from the same script, off by default (measured, bench/README.md): ``quant_weight`` adds its extra
    term ||B - P B||^2 of both views (its weight there: 1; ``sorted_code_term``, with the hard rows P of each
    length, so no gradient through the sort; the script also passes its straight-through gradient to P), and
    ``projection=d_p`` contrasts a learned projection of the latents (its latent head: Linear(d, d_p), ReLU,
    Linear(d_p, d_p), LayerNorm; the script uses d_p = 1024) instead of z itself. Not taken from the script:
    its hash head's ``torch.sign`` (no gradient reaches the hash head), and its cross-entropy applied to the
    softmax output with an extra 1 / batch size (a second softmax); the loss above is the plain InfoNCE.
    Measured on the digits compare (bench/README.md): ``sort_tau=0.05, tau=0.3, projection=512``, nested 8..128 bits
    0.54-0.73 mAP: above ITQ from 32 bits and cibhash at 64 and 128, below both at 8 and 16 bits. The latent
    head is created at the first call (its input width).

    Code memory (off by default): ``memory=M`` keeps ONE ring of the candidates' past (code, latent) pairs
    (MeCoQ's queue, AAAI 2022; CBNS's memory, SIGIR 2021): the codes u_other[:, :b_max] in an (M, b_max) buffer
    read by every length through prefix views, and their latents z (after ``projection``, if any) in an (M, d)
    buffer, both detached, pushed after each training forward. Once ``warmup_epochs`` epochs have passed (the
    loop calls ``set_epoch``) the stored pairs are appended to each anchor's candidates: N = B + filled rows are
    sorted per anchor, so they serve as extra negatives (or, if nearer than the batch's, as positives). With
    ``symmetric=True`` the same rows extend the swapped direction's candidates. ``debiased`` (cibhash's debiased
    negatives) is not supported here: the positives are ranks of a sort, not one known pair.

    Needs the latents: ``forward(u, u_other, z=..., z_other=...)`` with z, z_other (B, d) the backbone features
    that feed the hash layer. The op (``sorted_nce``: C++ on CPU, Triton on GPU, the materialised reference
    otherwise; B anchors against N >= 2 candidates) never builds the (B, N, N) permutations or the (B, N, d)
    sorted latents; one call serves all K lengths (distances from cumulative prefix Grams).
    """

    def __init__(self, bit_list: Sequence[int], num_classes: Optional[int] = None, num_train: Optional[int] = None,
                 *, m: int = 2, tau: float = 0.1, sort_tau: Union[str, float] = SORT_TAU, hard: bool = True,
                 symmetric: bool = False, quant_weight: float = 0.0, projection: int = 0, memory: int = 0,
                 warmup_epochs: int = 0, debiased: float = 0.0, backend: Optional[str] = None):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        self.m = _checks.positive_int(m, "m")
        if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 0):
            raise ValueError(f"tau must be a number > 0, got {tau!r}")
        self.tau = float(tau)
        if sort_tau == "bits":
            self.sort_tau = [float(b) for b in self.bit_list]
        elif isinstance(sort_tau, (int, float)) and not isinstance(sort_tau, bool) and sort_tau > 0:
            self.sort_tau = [float(sort_tau)] * len(self.bit_list)
        else:
            raise ValueError(f"sort_tau must be 'bits' or a number > 0, got {sort_tau!r}")
        if not isinstance(hard, bool) or not isinstance(symmetric, bool):
            raise TypeError("hard and symmetric must be bools")
        if not (isinstance(quant_weight, (int, float)) and not isinstance(quant_weight, bool) and quant_weight >= 0):
            raise ValueError(f"quant_weight must be a number >= 0, got {quant_weight!r}")
        self.quant_weight = float(quant_weight)
        if not (isinstance(projection, int) and not isinstance(projection, bool) and projection >= 0):
            raise ValueError(f"projection must be an int >= 0 (0: none), got {projection!r}")
        # the latent head of the NSH script (hidden -> ReLU -> linear -> LayerNorm), input width taken at first call
        self.projection = (nn.Sequential(nn.LazyLinear(projection), nn.ReLU(), nn.Linear(projection, projection),
                                         nn.LayerNorm(projection)) if projection else None)
        self.hard, self.symmetric, self.backend = hard, symmetric, backend
        if debiased:
            raise ValueError(f"sortednce: debiased={debiased!r} is not supported (the debiased negatives are "
                             f"cibhash's); leave it at 0")
        if not (isinstance(memory, int) and not isinstance(memory, bool) and memory >= 0):
            raise ValueError(f"memory must be an int >= 0 (0: none), got {memory!r}")
        self.memory = CodeMemory(memory, self.bit_list[-1], warmup_epochs) if memory else None

    def forward(self, u: Tensor, u_other: Tensor, indices: Optional[Tensor] = None, *,
                z: Optional[Tensor] = None, z_other: Optional[Tensor] = None) -> Tensor:
        if z is None or z_other is None:
            raise ValueError("sortednce contrasts latent features: pass z= and z_other=, the (B, d) backbone "
                             "features of the two views")
        self.check_views(u, u_other, z, z_other)
        if self.m >= u.shape[0]:
            raise ValueError(f"sortednce: m={self.m} positives need a batch of B > m samples, got B={u.shape[0]}")
        b_max = self.bit_list[-1]
        dtype = torch.promote_types(u.dtype, z.dtype)
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32
        u, u_other = u[:, :b_max].to(dtype), u_other[:, :b_max].to(dtype)
        if self.projection is not None:
            z, z_other = self.projection(z), self.projection(z_other)
        z, z_other = z.to(dtype), z_other.to(dtype)
        op = dispatch("sorted_nce", u.device, self.backend)
        args = (list(self.bit_list), self.m, self.tau, self.sort_tau, self.hard)
        mem = None
        if self.memory is not None and self.memory.ready:
            mem = (self.memory.prefix(b_max).to(u.device, dtype), self.memory.stored_latents().to(u.device, dtype))

        def direction(a, b, za, zb):  # candidates (b, za) sorted by distance to anchors a (+ the script's term)
            code_term = self.quant_weight * sorted_code_term(a, b, self.bit_list) if self.quant_weight else 0
            if mem is not None:
                b, za = torch.cat([b, mem[0]]), torch.cat([za, mem[1]])
            return op(a, b, za, zb, *args) + code_term

        loss = direction(u, u_other, z, z_other)
        if self.symmetric:
            loss = (loss + direction(u_other, u, z_other, z)) / 2
        if self.memory is not None and self.training and torch.is_grad_enabled():
            self.memory.push(u_other, z)  # the first direction's candidates: codes and the latents contrasted
        return loss
