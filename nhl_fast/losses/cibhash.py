"""CIBHash: Qiu, Su, Ou, Yu, Chen, "Unsupervised Hashing with Contrastive Information Bottleneck",
IJCAI 2021 (arXiv 2105.06138; reference code qiuzx2/CIBHash, model/CIBHash.py)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from nhl_fast.losses import register
from nhl_fast.losses._code_memory import CodeMemory
from nhl_fast.losses._common import prefix_sum
from nhl_fast.losses._views import nested_nt_xent, sign_ste
from nhl_fast.losses.base import UnsupervisedNestedLoss

_LOG_EPS = 1e-8  # the reference's log(p + 1e-8)


def _bernoulli_kl(p: Tensor, q: Tensor) -> Tensor:
    """Elementwise KL(Bern(p) || Bern(q)), q detached (the reference's compute_kl)."""
    q = q.detach()
    return (p * (torch.log(p + _LOG_EPS) - torch.log(q + _LOG_EPS))
            + (1 - p) * (torch.log(1 - p + _LOG_EPS) - torch.log(1 - q + _LOG_EPS)))


@register("cibhash")
class CIBHashLoss(UnsupervisedNestedLoss):
    """Nested CIBHash: NT-Xent over stochastic straight-through codes + symmetric Bernoulli KL.

    u, u_other are the head's raw outputs (``relax="none"``) of two views. Per length b_k:
        p = sigmoid(u[:, :b_k]),  h = sign(p - r) forward, identity backward,  r ~ U(0, 1)
        (r = 1/2 in eval mode or with ``stochastic=False``; r is drawn once for b_max columns,
        so every length sees the prefix of the same sample)
        L_k = NTXent_tau([h; h'])  +  beta * (KL(p || p'.detach()) + KL(p' || p.detach())) / 2
    NT-Xent: cosine similarities, 2B anchors, positive = the other view, negatives = the other
    2B - 2 codes (+ the code memory); KL summed over the b_k bits, averaged over the batch.

    Published defaults (reference code): temperature 0.3, beta (``weight``) 0.001; Adam lr 1e-3,
    batch 64 (``--batch_size``), encoder 4096 -> 1024 -> b on frozen VGG-16 fc7 features.

    Additions (off by default): ``memory=M`` keeps ONE (M, b_max) ring buffer of past view-1
    codes (MeCoQ's queue, AAAI 2022) read by every length through prefix views, used as extra
    negatives once ``warmup_epochs`` epochs have passed (the loop calls ``set_epoch``);
    ``debiased=pi`` replaces the negatives' sum by the debiased estimate of Chuang et al. 2020
    with positive prior pi (MeCoQ's choice; 0 = plain InfoNCE).
    """

    def __init__(self, bit_list, num_classes: Optional[int] = None, num_train: Optional[int] = None, *,
                 temperature: float = 0.3, beta: float = 0.001, stochastic: bool = True, memory: int = 0,
                 warmup_epochs: int = 0, debiased: float = 0.0):
        super().__init__(bit_list, num_classes=num_classes, num_train=num_train)
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not (isinstance(beta, (int, float)) and beta >= 0):
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        if not (isinstance(debiased, (int, float)) and 0 <= debiased < 1):
            raise ValueError(f"debiased (the positive prior pi+) must be in [0, 1), got {debiased!r}")
        self.temperature, self.beta, self.debiased = float(temperature), float(beta), float(debiased)
        self.stochastic = bool(stochastic)
        self.memory = CodeMemory(int(memory), self.bit_list[-1], warmup_epochs) if memory else None

    def forward(self, u: Tensor, u_other: Tensor, indices: Optional[Tensor] = None, *,
                z: Optional[Tensor] = None, z_other: Optional[Tensor] = None) -> Tensor:
        self.check_views(u, u_other, z, z_other)
        b_max = self.bit_list[-1]
        p, q = torch.sigmoid(u[:, :b_max]), torch.sigmoid(u_other[:, :b_max])
        if self.stochastic and self.training:
            h, h2 = sign_ste(p - torch.rand_like(p)), sign_ste(q - torch.rand_like(q))
        else:
            h, h2 = sign_ste(p - 0.5), sign_ste(q - 0.5)
        mem = self.memory.prefix(b_max) if self.memory is not None and self.memory.ready else None
        contrast = nested_nt_xent(h, h2, self.bit_list, self.temperature, mem, self.debiased)
        kl = (prefix_sum(_bernoulli_kl(p, q), self.bit_list).mean(0)
              + prefix_sum(_bernoulli_kl(q, p), self.bit_list).mean(0)) / 2
        if self.memory is not None and self.training and torch.is_grad_enabled():
            self.memory.push(h)
        return contrast + self.beta * kl

    def extra_repr(self) -> str:
        return (f"bit_list={self.bit_list}, temperature={self.temperature}, beta={self.beta}, "
                f"stochastic={self.stochastic}, debiased={self.debiased}")
