"""The C++ ops behind NHLObjective's CPU step: nhl_fast::nhl_objective (distillation, gradient dots, dominance
weights, total and d total/du in one call) and nhl_fast::csq_grads (CSQ's losses and packed closed-form gradients),
each against its torch spec in nhl_fast.reference; opcheck; bad input; the objective on both paths."""
import pytest
import torch

import nhl_fast as nf
from nhl_fast import reference
from nhl_fast._dispatch import not_supported_reasons

pytestmark = pytest.mark.skipif(bool(not_supported_reasons("cpp", torch.device("cpu"))),
                                reason="the C++ extension is not built")

BITS = (4, 8, 13, 30)


def _inputs(batch, bits, n_in, dtype, seed, conflict=True):
    """Codes, packed per-length gradients whose lengths pull against each other (conflicts), losses, input."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, bits[-1], generator=gen, dtype=torch.float64).tanh()
    parts = []
    for k, b in enumerate(bits):  # length k's gradient: a shared direction, sign flipped per length
        shared = torch.randn(batch, bits[-1], generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        noise = 0.3 * torch.randn(batch, b, generator=gen, dtype=torch.float64)
        parts.append(((-1) ** k if conflict else 1) * shared[:, :b] / (k + 1) + noise)
    grads = torch.cat(parts, 1) * 1e-2
    losses = torch.rand(len(bits), generator=gen, dtype=torch.float64)
    x = torch.randn(batch, n_in, generator=gen, dtype=torch.float64)
    deriv = (torch.rand(batch, bits[-1], generator=gen, dtype=torch.float64) < 0.8).to(torch.float64)
    return [t.to(dtype) for t in (u, grads, losses, x, deriv)]


NAMES = ("total", "grad_u", "weights", "conflicts", "dots", "dist")


def _check(got, want, dtype):
    tol = dict(rtol=2e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    for name, a, b in zip(NAMES, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if name == "conflicts":
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, **tol, msg=name)


# (batch, n_in): B <= sum b_k takes the input Gram (>= 96 rows: its upper blocks; float32 >= 2M multiply-adds:
# oneDNN), B > sum b_k the weight gradients directly
SHAPES = [(1, 7), (12, 24), (40, 3), (70, 5), (128, 2048)]


@pytest.mark.parametrize("batch,n_in", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relax", [False, True])
@pytest.mark.parametrize("faithful", [False, True])
@pytest.mark.parametrize("kernels", ["default", "generic"])
def test_nhl_objective_matches_spec(batch, n_in, dtype, relax, faithful, kernels, monkeypatch):
    monkeypatch.setenv("NHL_OBJECTIVE_KERNELS", kernels)  # see test_nhl_objective_float32_kernels_large
    u, grads, losses, x, deriv = _inputs(batch, BITS, n_in, dtype, batch + n_in)
    args = (u, grads, losses, x, deriv if relax else None, list(BITS), 0.3, 0.1, faithful, True)
    got = torch.ops.nhl_fast.nhl_objective(*args)
    want = reference.nhl_objective(*args)
    _check(got, want, dtype)
    if batch > 1:
        assert bool(want[3].any())  # the lengths conflict: the weights are not all 1, the test can fail
        assert not torch.allclose(want[2], torch.ones_like(want[2]))


@pytest.mark.parametrize("closed_form", [False, True])
@pytest.mark.parametrize("distill", [0.0, 0.25])
@pytest.mark.parametrize("with_grads,with_x", [(True, True), (True, False), (False, True), (False, False)])
def test_nhl_objective_optional_parts_match_spec(closed_form, distill, with_grads, with_x):
    if closed_form and not with_grads:
        pytest.skip("closed_form needs grads")
    u, grads, losses, x, _ = _inputs(9, BITS, 20, torch.float64, 5)
    args = (u, grads if with_grads else None, losses, x if with_x else None, None, list(BITS), 1.0, distill,
            False, closed_form)
    _check(torch.ops.nhl_fast.nhl_objective(*args), reference.nhl_objective(*args), torch.float64)


@pytest.mark.parametrize("batch,n_in", [(128, 2048), (70, 1100), (5, 33), (1, 16), (300, 40)])
@pytest.mark.parametrize("kernels", ["default", "generic"])
def test_nhl_objective_float32_kernels_large(batch, n_in, kernels, monkeypatch):
    # float32 against the spec in float64. On an AVX-512 CPU the default path takes kernels/gemm_avx512.h (the
    # input Gram's upper tiles: edge tiles at B % 4 != 0, row tails, n_in past one 1024 chunk; (x x^T) Gz; the
    # prefix Grams; (A + A^T) u); "generic" the BLAS path (128 rows: the Gram from its upper blocks through
    # oneDNN when torch has it). B = 300 > sum b_k: the weight gradients themselves.
    monkeypatch.setenv("NHL_OBJECTIVE_KERNELS", kernels)
    bits = [8, 16, 32, 64, 128]
    u, grads, losses, x, deriv = _inputs(batch, tuple(bits), n_in, torch.float32, 3)
    got = torch.ops.nhl_fast.nhl_objective(u, grads, losses, x, deriv, bits, 0.5, 0.1, False, True)
    want = reference.nhl_objective(u.double(), grads.double(), losses.double(), x.double(), deriv.double(), bits,
                                   0.5, 0.1, False, True)
    torch.testing.assert_close(got[4].double(), want[4], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[2].double(), want[2], rtol=1e-5, atol=0)
    torch.testing.assert_close(got[1].double(), want[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[5].double(), want[5], rtol=1e-5, atol=1e-9)


def test_nhl_objective_opcheck_and_empty_batch():
    u, grads, losses, x, deriv = _inputs(6, BITS, 10, torch.float32, 1)
    torch.library.opcheck(torch.ops.nhl_fast.nhl_objective.default,
                          (u, grads, losses, x, deriv, list(BITS), 0.5, 0.1, False, True))
    empty = torch.zeros(0, BITS[-1])
    out = torch.ops.nhl_fast.nhl_objective(empty, torch.zeros(0, sum(BITS)), torch.zeros(len(BITS)),
                                           torch.zeros(0, 10), None, list(BITS), 1.0, 0.1, False, True)
    assert out[1].shape == (0, BITS[-1]) and torch.equal(out[2], torch.ones(len(BITS)))


def test_nhl_objective_bad_input():
    u, grads, losses, x, deriv = _inputs(6, BITS, 10, torch.float32, 1)
    op = torch.ops.nhl_fast.nhl_objective
    with pytest.raises(ValueError, match="grads must have shape"):
        op(u, grads[:, 1:], losses, x, None, list(BITS), 1.0, 0.1, False, True)
    with pytest.raises(ValueError, match="losses must be"):
        op(u, grads, losses[1:], x, None, list(BITS), 1.0, 0.1, False, True)
    with pytest.raises(ValueError, match="x must be"):
        op(u, grads, losses, x[1:], None, list(BITS), 1.0, 0.1, False, True)
    with pytest.raises(TypeError, match="dtype"):
        op(u, grads.double(), losses, x, None, list(BITS), 1.0, 0.1, False, True)
    with pytest.raises(ValueError, match="closed_form needs grads"):
        op(u, None, losses, x, None, list(BITS), 1.0, 0.1, False, True)
    with pytest.raises(ValueError, match="bits"):
        op(u, grads, losses, x, None, [4, 8, 13, 29], 1.0, 0.1, False, True)
    with pytest.raises(TypeError, match="float32 or float64"):
        op(u.half(), grads, losses, x, None, list(BITS), 1.0, 0.1, False, True)


# ----------------------------------------------------------------------------- csq_grads


def _csq_inputs(batch, bits, shared, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    u = 3 * torch.randn(batch, bits[-1], generator=gen, dtype=torch.float64)
    u[0, :3] = 0  # sign(0) = 0, as autograd's abs
    labels = (torch.rand(batch, 4, generator=gen) < 0.4).double()
    if batch > 1:
        labels[1] = torch.tensor([1.0, 1.0, 0.0, 0.0])  # multi-label: centres cancel where they disagree (ties)
    centers = torch.randn(4, bits[-1] if shared else sum(bits), generator=gen, dtype=torch.float64).sign()
    centers[1] = -centers[0]
    tie = torch.randn(centers.shape[1], generator=gen, dtype=torch.float64).sign()
    return [t.to(dtype) for t in (u, labels, centers, tie)]


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("bits", [(8, 16, 32, 64, 128), (3, 13, 30), (5,)])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csq_grads_matches_spec_and_autograd(batch, bits, shared, dtype):
    u, labels, centers, tie = _csq_inputs(batch, bits, shared, dtype, batch)
    losses, packed = torch.ops.nhl_fast.csq_grads(u, labels, centers, tie, list(bits), 1e-2)
    want_l, want_g = reference.csq_grads(u, labels, centers, tie, bits, 1e-2)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(losses, want_l, **tol)
    torch.testing.assert_close(packed, want_g, **tol)
    if dtype == torch.float64:  # the spec's closed form == autograd through the registered CSQ loss
        loss = nf.losses.get_loss("csq", bits, num_classes=4, lambda_=1e-2,
                                  centers=centers[:, :bits[-1]] if shared else list(centers.split(bits, 1))).double()
        loss.tie.copy_(tie)
        leaf = u.clone().requires_grad_()
        auto = loss(leaf, labels)
        torch.testing.assert_close(auto.detach(), want_l)
        lo = 0
        for k, b in enumerate(bits):
            (g,) = torch.autograd.grad(auto[k], leaf, retain_graph=True)
            torch.testing.assert_close(want_g[:, lo:lo + b], g[:, :b])
            lo += b


def test_csq_grads_opcheck_and_bad_input():
    u, labels, centers, tie = _csq_inputs(6, BITS, False, torch.float32, 0)
    torch.library.opcheck(torch.ops.nhl_fast.csq_grads.default, (u, labels, centers, tie, list(BITS), 1e-4))
    op = torch.ops.nhl_fast.csq_grads
    with pytest.raises(ValueError, match="centers must be"):
        op(u, labels, centers[:, 1:], tie[1:], list(BITS), 1e-4)
    with pytest.raises(ValueError, match="labels must be"):
        op(u, labels[1:], centers, tie, list(BITS), 1e-4)
    with pytest.raises(ValueError, match="tie must be"):
        op(u, labels, centers, tie[1:], list(BITS), 1e-4)
    with pytest.raises(TypeError, match="dtype"):
        op(u, labels.double(), centers, tie, list(BITS), 1e-4)


# ----------------------------------------------------------------------------- the objective on both paths


@pytest.mark.parametrize("relax", ["none", "tanh"])
def test_objective_cpp_and_torch_paths_agree(monkeypatch, relax):
    bits = (8, 16, 32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 40, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (12,), generator=gen)
    results = []
    for backend in ("cpp", "torch"):  # the objective's ops follow NHL_BACKEND; the layer stays on cpp
        monkeypatch.setenv("NHL_BACKEND", backend)
        torch.manual_seed(1)
        layer = nf.NestedHashLayer(40, bits, relax=relax, dtype=torch.float64, backend="cpp")
        obj = nf.NHLObjective("csq", bits, beta=0.05, weight_rule="dominance", distill=0.1, num_classes=4).double()
        loss = obj(layer(x), labels)
        loss.backward()
        results.append((loss.detach(), obj.last_distill, obj.last_weights, obj.last_grad_dots, layer.weight.grad.clone(),
                        layer.bias.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
