"""The Triton forms of the objective's ops (kernels/csq_grads.py, kernels/cascade_distill.py,
kernels/nhl_objective.py) against their torch spec (nhl_fast.reference), the dispatch that picks them
(nhl_fast._dispatch.dispatch with strict=False), their custom ops (opcheck, torch.compile) and NHLObjective end to end.

Triton runs on CPU tensors under TRITON_INTERPRET=1 (the interpreter is slow: shapes stay tiny) and on CUDA
tensors when a GPU is lent (`pytest -m cuda`). Edges: B = 1, B not a multiple of any block, lengths that are
not multiples of 16 ((3, 8, 13)), both CSQ centre layouts and its tie rule, clamped (zero) Gram rows,
every optional part of the objective."""
import pytest
import torch

import nhl_fast as nf
from nhl_fast import _dispatch, reference
from nhl_fast._dispatch import not_supported_reasons

TRITON_DEVICES = [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d
                  for d in ("cpu", "cuda") if not not_supported_reasons("triton", torch.device(d))
                  and (d == "cpu" or torch.cuda.is_available())]
pytestmark = pytest.mark.skipif(not TRITON_DEVICES, reason="triton cannot run here (set TRITON_INTERPRET=1)")
DTYPES = [torch.float32, torch.float64]
SHORT = (3, 8, 13)  # not multiples of 16
LONG = (8, 16, 32, 64, 128)


def kernels(name):
    import importlib

    return getattr(importlib.import_module(f"nhl_fast.kernels.{name}"), f"{name}_triton")


def assert_close(got, want, dtype, msg=""):
    """Elementwise rtol, atol relative to the output's scale (the clamped-row gradients reach 1e10)."""
    assert got.dtype == want.dtype and got.shape == want.shape, msg
    rtol, atol = (1e-5, 1e-6) if dtype == torch.float32 else (1e-9, 1e-12)
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=rtol, atol=atol * scale, msg=msg)


# ------------------------------------------------------------------ csq_grads


def csq_inputs(batch, bits, nested, dtype, device, seed=0, n_class=5):
    gen = torch.Generator().manual_seed(seed)
    u = 3 * torch.randn(batch, bits[-1], generator=gen, dtype=torch.float64)
    u[0, 0] = 0  # sign(0) = 0 in the quantisation gradient
    u[-1, -1] = 25.0  # saturated: exp(-2|x|) underflows in float32
    labels = (torch.rand(batch, n_class, generator=gen) < 0.4).double()
    labels[0] = 0  # no label: every score is 0, every target the tie sign
    cols = bits[-1] if nested else sum(bits)
    centers = torch.where(torch.rand(n_class, cols, generator=gen) < 0.5, -1.0, 1.0).double()
    centers[1] = -centers[0]  # classes 0 and 1 cancel: a row with both ties on every column
    if batch > 1:
        labels[1] = 0
        labels[1, :2] = 1
    tie = torch.where(torch.rand(cols, generator=gen) < 0.5, -1.0, 1.0).double()
    return [t.to(device=device, dtype=dtype) for t in (u, labels, centers, tie)]


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,bits", [(1, SHORT), (37, SHORT), (20, LONG)])
@pytest.mark.parametrize("nested", [False, True])
def test_csq_grads_matches_spec(device, dtype, batch, bits, nested):
    u, labels, centers, tie = csq_inputs(batch, bits, nested, dtype, device, seed=batch)
    lam = 0.3  # a large quantisation weight: its gradient term matters at the tolerance
    got = kernels("csq_grads")(u, labels, centers, tie, list(bits), lam)
    want = reference.csq_grads(u, labels, centers, tie, bits, lam)
    assert_close(got[0], want[0], dtype, "losses")
    assert_close(got[1], want[1], dtype, "grads")


# ------------------------------------------------------------------ cascade_distill


def codes(batch, width, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, width, generator=gen, dtype=torch.float64).tanh()
    if batch > 2:
        u[1] = 0  # a zero row: its Gram row norm is clamped (the E / r branch)
        u[2, :3] = 0  # zero in the shortest prefix only: clamped for the student, not the teacher
    return u.to(device=device, dtype=dtype)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,bits", [(1, (3, 7)), (5, SHORT), (33, (5, 13, 70)), (20, LONG)])
def test_cascade_distill_matches_spec(device, dtype, batch, bits):
    u = codes(batch, bits[-1], dtype, device, batch)
    dist, grad = kernels("cascade_distill")(u, list(bits))
    ref_dist, ref_grad = reference.cascade_distill(u, bits)
    assert_close(dist, ref_dist, dtype, "dist")
    assert_close(grad, ref_grad, dtype, "grad")
    assert torch.count_nonzero(grad[:, -bits[-1]:]) == 0  # the longest code has no teacher


# ------------------------------------------------------------------ nhl_objective

NAMES = ("total", "grad_u", "weights", "conflicts", "dots", "dist")


def objective_inputs(batch, bits, n_in, dtype, device, seed):
    """Codes, packed per-length gradients whose lengths pull against each other (conflicts), losses, input, du/dz."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, bits[-1], generator=gen, dtype=torch.float64).tanh()
    shared = torch.randn(batch, bits[-1], generator=gen, dtype=torch.float64)
    parts = [(-1) ** k * shared[:, :b] / (k + 1) + 0.3 * torch.randn(batch, b, generator=gen, dtype=torch.float64)
             for k, b in enumerate(bits)]
    grads = torch.cat(parts, 1) * 1e-2
    losses = torch.rand(len(bits), generator=gen, dtype=torch.float64)
    x = torch.randn(batch, n_in, generator=gen, dtype=torch.float64)
    deriv = (torch.rand(batch, bits[-1], generator=gen, dtype=torch.float64) < 0.8).double()
    return [t.to(device=device, dtype=dtype) for t in (u, grads, losses, x, deriv)]


def check_objective(got, want, dtype):
    for name, a, b in zip(NAMES, got, want):
        if name == "conflicts":
            assert a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), name
        else:
            assert_close(a, b, dtype, name)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,n_in,bits", [(1, 7, SHORT), (40, 3, SHORT), (12, 24, (4, 8, 13, 30))])
@pytest.mark.parametrize("relax", [False, True])
@pytest.mark.parametrize("faithful", [False, True])
@pytest.mark.parametrize("distill", [0.0, 0.25])
def test_nhl_objective_matches_spec(device, dtype, batch, n_in, bits, relax, faithful, distill):
    u, grads, losses, x, deriv = objective_inputs(batch, bits, n_in, dtype, device, batch + n_in)
    args = (u, grads, losses, x, deriv if relax else None, list(bits), 0.3, distill, faithful, True)
    want = reference.nhl_objective(*args)
    check_objective(kernels("nhl_objective")(*args), want, dtype)
    if batch > 1:
        assert bool(want[3].any())  # the lengths conflict: the weights are not all 1, the test can fail


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("closed_form", [False, True])
@pytest.mark.parametrize("distill", [0.0, 0.25])
@pytest.mark.parametrize("with_grads,with_x", [(True, True), (True, False), (False, True), (False, False)])
def test_nhl_objective_optional_parts_match_spec(device, closed_form, distill, with_grads, with_x):
    if closed_form and not with_grads:
        pytest.skip("closed_form needs grads")
    u, grads, losses, x, _ = objective_inputs(9, SHORT, 20, torch.float64, device, 5)
    args = (u, grads if with_grads else None, losses, x if with_x else None, None, list(SHORT), 1.0, distill,
            False, closed_form)
    check_objective(kernels("nhl_objective")(*args), reference.nhl_objective(*args), torch.float64)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_nhl_objective_long_lengths_single_length(device):
    u, grads, losses, x, deriv = objective_inputs(17, LONG, 10, torch.float32, device, 3)
    args = (u, grads, losses, x, deriv, list(LONG), 0.5, 0.1, False, True)
    check_objective(kernels("nhl_objective")(*args), reference.nhl_objective(*args), torch.float32)
    # one length: no pair, no weights (dist is empty)
    u, grads, losses, x, _ = objective_inputs(6, (13,), 5, torch.float64, device, 4)
    args = (u, grads, losses, x, None, [13], 1.0, 0.1, False, True)
    check_objective(kernels("nhl_objective")(*args), reference.nhl_objective(*args), torch.float64)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or bool(not_supported_reasons("triton", torch.device("cuda"))),
                    reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("dtype", DTYPES)
def test_training_shapes_on_cuda(dtype):
    """The H200 step's shapes: B = 256, in = 2048, bits 8..128, CSQ, adaptive, distill 0.1."""
    u, grads, losses, x, deriv = objective_inputs(256, LONG, 2048, dtype, "cuda", 0)
    args = (u, grads, losses, x, deriv, list(LONG), 1.0, 0.1, False, True)
    check_objective(kernels("nhl_objective")(*args), reference.nhl_objective(*args), dtype)
    su, labels, centers, tie = csq_inputs(256, LONG, False, dtype, "cuda", n_class=100)
    got, want = kernels("csq_grads")(su, labels, centers, tie, list(LONG), 1e-4), \
        reference.csq_grads(su, labels, centers, tie, LONG, 1e-4)
    assert_close(got[0], want[0], dtype)
    assert_close(got[1], want[1], dtype)


# ------------------------------------------------------------------ dispatch, custom ops, the objective end to end


@pytest.mark.parametrize("name", ["cascade_distill", "nhl_objective", "csq_grads"])
def test_dispatch_picks_triton(name, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("NHL_BACKEND", "triton")
    if "cpu" in TRITON_DEVICES:
        assert _dispatch.dispatch(name, cpu, strict=False) is kernels(name)
    monkeypatch.setenv("NHL_BACKEND", "torch")
    assert _dispatch.dispatch(name, cpu, strict=False) is getattr(reference, name)
    monkeypatch.setenv("NHL_BACKEND", "cuda")  # no CUDA kernel, CPU tensors: the objective's ops never fail
    assert _dispatch.dispatch(name, cpu, strict=False) is getattr(reference, name)
    monkeypatch.setenv("NHL_BACKEND", "auto")
    if not not_supported_reasons("cpp", cpu):
        assert _dispatch.dispatch(name, cpu, strict=False) is getattr(torch.ops.nhl_fast, name)
    if torch.cuda.is_available() and not not_supported_reasons("triton", torch.device("cuda")):
        for backend in ("auto", "triton"):
            monkeypatch.setenv("NHL_BACKEND", backend)
            assert _dispatch.dispatch(name, torch.device("cuda"), strict=False) is kernels(name)


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_custom_ops_opcheck(device):
    ops = torch.ops.nhl_fast
    u = codes(5, 13, torch.float32, device, 1)
    torch.library.opcheck(ops.cascade_distill_triton.default, (u, list(SHORT)))
    su, labels, centers, tie = csq_inputs(5, SHORT, True, torch.float32, device)
    torch.library.opcheck(ops.csq_grads_triton.default, (su, labels, centers, tie, list(SHORT), 1e-4))
    u, grads, losses, x, deriv = objective_inputs(5, SHORT, 4, torch.float32, device, 2)
    torch.library.opcheck(ops.nhl_objective_triton.default,
                          (u, grads, losses, x, deriv, list(SHORT), 0.5, 0.1, False, True))


def objective_step(bits, device, relax, centers, faithful, loss="csq", compile_=False):
    torch.manual_seed(0)
    x = torch.randn(10, 12, dtype=torch.float64, device=device)
    # multi-hot labels: class indices take a range check that torch.compile(fullgraph=True) cannot trace
    labels = torch.nn.functional.one_hot(torch.randint(0, 4, (10,)), 4).double().to(device)
    # the layer's own ops stay on the spec: only the objective's ops change with NHL_BACKEND
    layer = nf.NestedHashLayer(12, bits, relax=relax, backend="torch", dtype=torch.float64).to(device)
    kw = dict(centers=centers) if loss == "csq" else dict(num_train=10)
    obj = nf.NHLObjective(loss, bits, beta=0.05, weight_rule="dominance", distill=0.1, faithful=faithful,
                          num_classes=4, **kw).double()
    obj = obj.to(device)
    fn = torch.compile(obj, fullgraph=True, backend="aot_eager") if compile_ else obj
    loss_value = fn(layer(x), labels, torch.arange(10, device=device))
    loss_value.backward()
    return (loss_value.detach(), obj.last_losses, obj.last_distill, obj.last_weights, obj.last_grad_dots,
            layer.weight.grad, layer.bias.grad)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("relax,centers,faithful,loss,conflicts", [
    ("tanh", "per_length", False, "csq", True), ("tanh", "per_length", True, "csq", True),
    ("sign_ste", "nested", True, "csq", False), ("none", "nested", False, "csq", False),
    ("tanh", None, False, "dsh", None)])  # dsh: the generic path (batched autograd grads, not closed form)
def test_objective_triton_path_matches_reference_path(device, relax, centers, faithful, loss, conflicts,
                                                      monkeypatch):
    results = []
    for backend in ("torch", "triton"):
        monkeypatch.setenv("NHL_BACKEND", backend)
        results.append(objective_step(SHORT, device, relax, centers, faithful, loss))
    for a, b in zip(*results):
        assert_close(b, a, torch.float64)
    if conflicts:  # the weights matter here
        assert not torch.allclose(results[0][3], torch.ones_like(results[0][3]))


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_objective_triton_path_under_torch_compile(device, monkeypatch):
    torch._dynamo.reset()
    monkeypatch.setenv("NHL_BACKEND", "triton")
    want = objective_step(SHORT, device, "tanh", "per_length", False)
    got = objective_step(SHORT, device, "tanh", "per_length", False, compile_=True)
    torch._dynamo.reset()
    for a, b in zip(got, want):
        assert_close(a, b, torch.float64)

