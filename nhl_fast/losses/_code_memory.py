"""A ring buffer of past codes, shared by every code length, used as extra negatives.

MeCoQ (Wang et al., AAAI 2022, arXiv 2109.05205) keeps a queue of past codes and contrasts each
anchor against it once the encoder is warm; CBNS (SIGIR 2021) does the same with embeddings.
Nested, the memory is ONE (M, b_max) buffer: length b_k reads the prefix view ``[:, :b_k]``,
so K lengths cost one buffer and one write. Rows are detached; the oldest are overwritten first.
A loss that also contrasts latent features (sortednce) stores each row's latent beside its code, in a second
(M, d) buffer of the same ring (created at the first push that carries latents: d is known only then).
"""
from __future__ import annotations

from typing import Optional

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
    ``push(codes, latents)`` also stores one (d,) latent per row in ``latents`` (``size, d``), created at the
    first such push in the latents' dtype; ``stored_latents()`` is its (filled, d) view, in the codes' order.
    A memory's pushes either always or never carry latents (``latents`` is None until then).
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
        self.register_buffer("latents", None)  # (size, d), at the first push with latents
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def ready(self) -> bool:
        return self.epoch >= self.warmup_epochs and int(self.filled) > 0

    @torch.no_grad()
    def push(self, codes: Tensor, latents: Optional[Tensor] = None) -> None:
        _checks.tensor(codes, "codes")
        _checks.ensure(codes.dim() == 2 and codes.shape[1] >= self.width, ValueError,
                       lambda: f"codes must be (n, >= {self.width}), got {tuple(codes.shape)}")
        if latents is not None:
            _checks.tensor(latents, "latents")
            _checks.ensure(latents.dim() == 2 and latents.shape[0] == codes.shape[0] and latents.shape[1] >= 1
                           and (self.latents is None or latents.shape[1] == self.latents.shape[1]), ValueError,
                           lambda: f"latents must be (n, d) with n = {codes.shape[0]} (codes' rows)"
                                   + ("" if self.latents is None else f" and d = {self.latents.shape[1]}")
                                   + f", got {tuple(latents.shape)}")
        _checks.ensure((latents is None) == (self.latents is None) or int(self.filled) == 0, ValueError,
                       lambda: "latents must be given with every push or with none")
        rows = codes.detach()[-self.size:, : self.width].to(self.codes.dtype)
        n = rows.shape[0]
        if n == 0:
            return
        pos = (self.ptr + torch.arange(n, device=self.codes.device)) % self.size
        # out of place: a loss of this step may hold a view of the old rows for its backward
        self.codes = self.codes.index_copy(0, pos, rows.to(self.codes.device))
        if latents is not None:
            lat = latents.detach()[-self.size:]
            if self.latents is None:
                self.latents = torch.zeros(self.size, lat.shape[1], dtype=lat.dtype, device=self.codes.device)
            self.latents = self.latents.index_copy(0, pos, lat.to(self.latents.device, self.latents.dtype))
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))

    def prefix(self, bits: int) -> Tensor:
        """(filled, bits) view of the stored codes (the first `bits` columns)."""
        return self.codes[: int(self.filled), :bits]

    def stored_latents(self) -> Tensor:
        """(filled, d) view of the stored latents, row for row with ``prefix``."""
        _checks.ensure(self.latents is not None, ValueError,
                       lambda: "this memory holds no latents (push(codes, latents))")
        return self.latents[: int(self.filled)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the latents buffer exists once pushed to: give a fresh memory its shape before loading a stored one
        key = prefix + "latents"
        if self.latents is None and state_dict.get(key) is not None:
            self.latents = torch.zeros_like(state_dict[key], device=self.codes.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
