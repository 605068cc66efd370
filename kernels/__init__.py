"""Triton kernels of nhl_fast, one op per file (imported lazily: triton is optional)."""
from __future__ import annotations

import contextlib
import functools

import torch


def on_tensor_device(launcher):
    """Run `launcher` with its first tensor argument's GPU current: Triton launches on the
    current CUDA device, not the tensors', so inputs on cuda:1 would otherwise run on cuda:0."""
    @functools.wraps(launcher)
    def wrapped(*args, **kwargs):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        guard = torch.cuda.device(first.device) if first is not None and first.is_cuda else contextlib.nullcontext()
        with guard:
            return launcher(*args, **kwargs)
    return wrapped
