"""A ring buffer of past codes, shared by every code length, used as extra negatives.

MeCoQ (Wang et al., AAAI 2022, arXiv 2109.05205) keeps a queue of past codes and contrasts each
anchor against it once the encoder is warm; CBNS (SIGIR 2021) does the same with embeddings.
Nested, the memory is ONE (M, b_max) buffer: length b_k reads the prefix view ``[:, :b_k]``,
so K lengths cost one buffer and one write. Rows are detached; the oldest are overwritten first.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from nhl_fast import _checks


class CodeMemory(nn.Module):
    """``(size, width)`` ring buffer of detached codes with a warm-up.

    ``push(codes)`` writes rows at the ring pointer (wrapping; of a push larger than the buffer
    only the last ``size`` rows stay); ``prefix(b)`` is the (filled, b) view of the stored rows
    (storage order, oldest first once wrapped: order does not matter to a sum over negatives);
    ``ready`` is True once ``warmup_epochs`` epochs have started and a row is stored
    (``set_epoch`` is called by the training loop; epochs count from 0).
    """

    def __init__(self, size: int, width: int, warmup_epochs: int = 0):
        super().__init__()
        self.size = _checks.positive_int(size, "memory")
        self.width = _checks.positive_int(width, "width")
        _checks.ensure(isinstance(warmup_epochs, int) and not isinstance(warmup_epochs, bool) and warmup_epochs >= 0,
                       ValueError, lambda: f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.register_buffer("codes", torch.zeros(self.size, self.width))
        # pointer and fill count as tensors: saved with the objective's state, no host sync on push
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def ready(self) -> bool:
        return self.epoch >= self.warmup_epochs and int(self.filled) > 0

    @torch.no_grad()
    def push(self, codes: Tensor) -> None:
        _checks.tensor(codes, "codes")
        _checks.ensure(codes.dim() == 2 and codes.shape[1] >= self.width, ValueError,
                       lambda: f"codes must be (n, >= {self.width}), got {tuple(codes.shape)}")
        rows = codes.detach()[-self.size:, : self.width].to(self.codes.dtype)
        n = rows.shape[0]
        if n == 0:
            return
        pos = (self.ptr + torch.arange(n, device=self.codes.device)) % self.size
        # out of place: a loss of this step may hold a view of the old rows for its backward
        self.codes = self.codes.index_copy(0, pos, rows.to(self.codes.device))
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))

    def prefix(self, bits: int) -> Tensor:
        """(filled, bits) view of the stored codes (the first `bits` columns)."""
        return self.codes[: int(self.filled), :bits]

    def extra_repr(self) -> str:
        return f"size={self.size}, width={self.width}, warmup_epochs={self.warmup_epochs}"


def debiased_log_denominator(pos: Tensor, neg_exp: Tensor, n: int, tau: float, prior: float) -> Tensor:
    """log(e(pos) + N_g) of the debiased contrastive loss (Chuang et al., NeurIPS 2020), per anchor.

    pos (...,): the positive's cosine; neg_exp (...,): sum over the n negatives of exp((s_j - 1) / tau)
    (shifted by the largest possible logit 1 / tau, so nothing overflows). With e(s) = exp(s / tau),
        N_g = max((sum_j e(s_j) - n prior e(pos)) / (1 - prior), n exp(-1 / tau)).
    """
    ep = torch.exp((pos - 1) / tau)
    floor = n * torch.exp(torch.tensor(-2.0 / tau, dtype=pos.dtype, device=pos.device))
    ng = torch.maximum((neg_exp - n * prior * ep) / (1 - prior), floor)
    return torch.log(ep + ng) + 1 / tau
