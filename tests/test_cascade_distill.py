"""The fused C++ op nhl_fast::cascade_distill (distillation value + closed-form packed gradient)
against the torch formula (reference.cascade_distill) and against autograd of the per-pair formula; opcheck."""
import os
import sys

import pytest
import torch

from nhl_fast import reference
from nhl_fast._dispatch import not_supported_reasons

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from reference_head import sp_distill  # noqa: E402  (the reference code's rendition, shared with bench/)

pytestmark = pytest.mark.skipif(bool(not_supported_reasons("cpp", torch.device("cpu"))),
                                reason="the C++ extension is not built")

CASES = [(1, (3, 7)), (5, (8, 16, 32, 64, 128)), (33, (5, 13, 70)), (64, (8, 16, 32, 64, 128))]


def _codes(batch, width, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, width, generator=gen, dtype=torch.float64).tanh()
    if batch > 2:
        u[1] = 0  # a zero row: its Gram row norm is clamped (the E / r branch)
        u[2, :3] = 0  # zero in the shortest prefixes only
    return u.to(dtype)


@pytest.mark.parametrize("batch,bits", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernels", ["default", "generic"])
def test_matches_torch_formula(batch, bits, dtype, kernels, monkeypatch):
    # float32 on an AVX-512 CPU: kernels/gemm_avx512.h (prefix Grams, (A + A^T) u); "generic" forces the
    # portable path (float64 always takes it)
    monkeypatch.setenv("NHL_OBJECTIVE_KERNELS", kernels)
    u = _codes(batch, bits[-1], dtype, batch)
    dist, grad = torch.ops.nhl_fast.cascade_distill(u, list(bits))
    ref_dist, ref_grad = reference.cascade_distill(u, bits)
    assert dist.dtype == dtype and grad.shape == (batch, sum(bits))
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dist, ref_dist, **tol)
    torch.testing.assert_close(grad, ref_grad, **tol)


@pytest.mark.parametrize("batch,bits", CASES)
@pytest.mark.parametrize("impl", ["op", "spec"])
def test_gradient_matches_autograd(batch, bits, impl):
    """The op and its torch spec (values, packed gradients) against autograd of the per-pair formula."""
    u = _codes(batch, bits[-1], torch.float64, 100 + batch)
    fn = torch.ops.nhl_fast.cascade_distill if impl == "op" else reference.cascade_distill
    dist, grad = fn(u, list(bits))
    leaf = u.clone().requires_grad_()
    auto = torch.stack([sp_distill(leaf[:, :a], leaf[:, :b].detach()) for a, b in zip(bits, bits[1:])])
    torch.testing.assert_close(dist, auto.detach(), rtol=1e-10, atol=1e-12)
    lo = 0
    for k, b in enumerate(bits):
        seg = grad[:, lo:lo + b]
        if k == len(bits) - 1:
            assert torch.count_nonzero(seg) == 0  # the longest code has no teacher
        else:
            (g,) = torch.autograd.grad(auto[k], leaf, retain_graph=True)
            torch.testing.assert_close(seg, g[:, :b], rtol=1e-9, atol=1e-12)
            assert torch.count_nonzero(g[:, b:]) == 0  # D_k depends on nothing past b_k
        lo += b


def test_opcheck():
    u = _codes(9, 20, torch.float32, 3)
    torch.library.opcheck(torch.ops.nhl_fast.cascade_distill.default, (u, [4, 11, 20]))


def test_empty_batch_and_bad_input():
    dist, grad = torch.ops.nhl_fast.cascade_distill(torch.zeros(0, 16), [8, 16])
    assert dist.shape == (1,) and grad.shape == (0, 24) and dist.item() == 0
    with pytest.raises(ValueError, match="bits"):
        torch.ops.nhl_fast.cascade_distill(torch.zeros(4, 16), [8, 12])  # bits[-1] != width
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.nhl_fast.cascade_distill(torch.zeros(4, 16, dtype=torch.int64), [8, 16])
