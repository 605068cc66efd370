"""NestedHashLayer and its ops (nested_projection, project_and_pack): every backend vs the reference."""
import pytest
import torch
import torch.nn.functional as F

import nhl_fast as nf
from nhl_fast import reference as R
from nhl_fast._dispatch import implementation as op
from tests.conftest import backend_params

RELAXES = ("none", "tanh", "sign_ste")


def _operands(b, n_in, bits, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n_in, generator=g, dtype=dtype).to(device)
    w = torch.randn(bits, n_in, generator=g, dtype=dtype).to(device)
    bias = torch.randn(bits, generator=g, dtype=dtype).to(device)
    return x, w, bias


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("relax", RELAXES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projection_values_and_grads_match_reference(backend, device, relax, dtype):
    # 70 outputs: two words, neither a multiple of 64 nor of the Triton tile.
    x, w, b = _operands(5, 19, 70, dtype, device)
    x = x.T.contiguous().T  # a non-contiguous (column-major) input
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    refs = [t.clone().requires_grad_() for t in (x, w, b)]
    u, z = op("nested_projection", backend)(*leaves, relax)
    ur, zr = R.nested_projection(*refs, relax)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z, zr, **tol)
    torch.testing.assert_close(u, ur, **tol)
    # a loss over several prefixes and over z itself: the gradients of all lengths add up in one GEMM pair
    gu = torch.randn(u.shape, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(device)
    loss = lambda uu, zz: (uu[:, :8] * gu[:, :8]).sum() + (uu * gu).sum() + 0.5 * (zz[:, :16] ** 2).sum()
    loss(u, z).backward()
    loss(ur, zr).backward()
    for got, want in zip(leaves, refs):
        torch.testing.assert_close(got.grad, want.grad, **tol)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("relax", ["none", "tanh"])
def test_projection_gradcheck(backend, device, relax):
    x, w, b = (t.requires_grad_() for t in _operands(3, 4, 10, torch.float64, device))
    fn = op("nested_projection", backend)
    assert torch.autograd.gradcheck(lambda *a: fn(*a, relax), (x, w, b))


@pytest.mark.parametrize("backend,device", backend_params())
def test_sign_ste_gradcheck_of_z_and_ste_rule(backend, device):
    x, w, b = (t.requires_grad_() for t in _operands(3, 4, 10, torch.float64, device))
    fn = op("nested_projection", backend)
    assert torch.autograd.gradcheck(lambda *a: fn(*a, "sign_ste")[1], (x, w, b))  # the z output (grad_u is None)
    # u = sign(z): straight-through gradient where |z| <= 1, zero elsewhere
    u, z = fn(x, w, b, "sign_ste")
    (gx,) = torch.autograd.grad(u.sum(), x)
    mask = (z.detach().abs() <= 1).double()
    torch.testing.assert_close(gx, mask @ w.detach())
    assert set(u.detach().unique().tolist()) <= {-1.0, 1.0}


def test_opcheck_compiled_ops():
    x, w, b = _operands(4, 6, 70, torch.float32)
    for relax in RELAXES:
        torch.library.opcheck(torch.ops.nhl_fast.nested_projection.default,
                              (x, w.requires_grad_(), b.requires_grad_(), relax))
    torch.library.opcheck(torch.ops.nhl_fast.project_and_pack.default, (x, w.detach(), b.detach()))


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if "triton" in p.id])
def test_opcheck_triton_ops(backend, device):
    x, w, b = _operands(3, 5, 20, torch.float32, device)
    torch.library.opcheck(torch.ops.nhl_fast.nested_projection_triton.default,
                          (x, w.requires_grad_(), b.requires_grad_(), "tanh"))
    torch.library.opcheck(torch.ops.nhl_fast.project_and_pack_triton.default, (x, w.detach(), b.detach()))


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("relax", RELAXES)
def test_layer_returns_prefix_views_of_one_output(backend, device, relax):
    torch.manual_seed(0)
    bits = (3, 8, 24, 70)  # any increasing lengths, not only powers of two
    layer = nf.NestedHashLayer(19, bits, relax=relax, backend=backend).to(device)
    x = torch.randn(5, 19, device=device)
    codes = layer(x)
    assert isinstance(codes, list) and len(codes) == len(bits)
    for u, b in zip(codes, bits):
        assert u.shape == (5, b)
        assert u.data_ptr() == codes.full.data_ptr()  # a view of the one output, not a copy
    assert codes.input is x and codes.relax == relax
    # the nested-prefix property: code k is exactly what a separate head W[:b_k], b[:b_k] gives
    for u, b in zip(codes, bits):
        sep = R.relax(F.linear(x, layer.weight[:b], layer.bias[:b]), relax)
        torch.testing.assert_close(u, sep, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", backend_params())
def test_encode_equals_pack_of_sign_with_exact_zeros(backend, device):
    # Small integers make many projections exactly 0; torch.sign maps them to 0, which packs as bit 0.
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-1, 2, (37, 6), generator=g).double()
    w = torch.randint(-1, 2, (70, 6), generator=g).double()
    b = torch.randint(-1, 2, (70,), generator=g).double()
    w[5] = 0
    b[5] = 0  # a column that is 0 for every row
    layer = nf.NestedHashLayer(6, (8, 16, 70), backend=backend, dtype=torch.float64).to(device)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    x = x.to(device)
    z = F.linear(x, layer.weight, layer.bias)
    assert (z == 0).sum() > 100
    packed = layer.encode(x)
    assert packed.dtype == torch.int64 and packed.shape == (37, 2)
    assert torch.equal(packed, R.pack(torch.sign(z)))
    assert torch.equal(packed, nf.pack(z, backend="torch"))
    # unpack(encode(x)) is the sign_ste forward: 0 -> -1
    assert torch.equal(nf.unpack(packed, 70, backend="torch").to(device), torch.where(z > 0, 1.0, -1.0).float())


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.id != "triton-cpu"])
def test_encode_streams_many_rows(backend, device):
    # more rows than one chunk of the C++ (14979 rows at 70 bits) and reference (65536) kernels
    # (the Triton interpreter is too slow for this size; Triton has no chunks: tiles stay in registers)
    torch.manual_seed(0)
    layer = nf.NestedHashLayer(4, (8, 70), backend=backend).to(device)
    x = torch.randn(70001, 4, device=device)
    packed = layer.encode(x)
    assert torch.equal(packed, R.pack(F.linear(x, layer.weight, layer.bias)))


@pytest.mark.parametrize("backend,device", backend_params())
def test_encode_empty_and_float32(backend, device):
    layer = nf.NestedHashLayer(9, (8, 64, 65), backend=backend).to(device)
    assert layer.encode(torch.empty(0, 9, device=device)).shape == (0, 2)
    x = torch.randn(17, 9, device=device)
    assert torch.equal(layer.encode(x), R.pack(F.linear(x, layer.weight, layer.bias)))


def test_init_modes():
    torch.manual_seed(5)
    layer = nf.NestedHashLayer(40, (8, 16))
    torch.manual_seed(5)
    lin = torch.nn.Linear(40, 16)
    assert torch.equal(layer.weight, lin.weight) and torch.equal(layer.bias, lin.bias)
    normal = nf.NestedHashLayer(2048, (8, 128), init="normal")
    assert torch.count_nonzero(normal.bias) == 0
    assert abs(normal.weight.std().item() - 0.01) < 5e-4


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(bit_list=()), ValueError, "bit_list must not be empty"),
    (dict(bit_list=(16, 8)), ValueError, "strictly increasing"),
    (dict(bit_list=(8, 8, 16)), ValueError, "strictly increasing"),
    (dict(bit_list=(0, 8)), ValueError, ">= 1"),
    (dict(bit_list=(8, 16.0)), TypeError, "ints"),
    (dict(bit_list=8), TypeError, "sequence of ints"),
    (dict(relax="relu"), ValueError, "relax"),
    (dict(init="xavier"), ValueError, "init"),
])
def test_bad_constructor_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        nf.NestedHashLayer(16, **kwargs)
    with pytest.raises(ValueError, match="in_features"):
        nf.NestedHashLayer(0)


def test_lengths_above_in_features_are_allowed():
    layer = nf.NestedHashLayer(4, (8, 100))
    assert layer(torch.randn(3, 4))[-1].shape == (3, 100)


def test_bad_inputs():
    layer = nf.NestedHashLayer(16, (8, 16))
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        layer(torch.randn(4, 15))
    with pytest.raises(ValueError, match="in_features=16"):
        layer.encode(torch.randn(4, 17))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(16))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(4, 16, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(4, 16, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([[0.0] * 16])
    with pytest.raises(ValueError, match="relax"):
        torch.ops.nhl_fast.nested_projection(torch.randn(2, 3), torch.randn(4, 3), torch.randn(4), "relu")
    with pytest.raises(ValueError, match="features"):
        torch.ops.nhl_fast.project_and_pack(torch.randn(2, 3), torch.randn(4, 5), torch.randn(4))


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("relax", RELAXES)
def test_layer_under_torch_compile_fullgraph(backend, relax):
    torch.manual_seed(0)
    layer = nf.NestedHashLayer(12, (8, 16, 70), relax=relax, backend=backend)
    x = torch.randn(6, 12)
    compiled = torch.compile(layer, fullgraph=True)
    got, want = compiled(x), layer(x)
    assert isinstance(got, nf.NestedCodes) and got.input is x
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    sum(u.square().sum() for u in got).backward()
    grad = layer.weight.grad.clone()
    layer.zero_grad()
    sum(u.square().sum() for u in want).backward()
    torch.testing.assert_close(grad, layer.weight.grad)
    assert torch.equal(torch.compile(layer.encode, fullgraph=True)(x), layer.encode(x))


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_layer_under_cpu_autocast(backend):
    torch.manual_seed(0)
    layer = nf.NestedHashLayer(32, (8, 16, 32), relax="tanh", backend=backend)
    x = torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = layer(x)
        packed = layer.encode(x)
    assert codes.full.dtype == torch.bfloat16
    torch.testing.assert_close(codes.full.float(), torch.tanh(F.linear(x, layer.weight, layer.bias)),
                               rtol=0.05, atol=0.05)
    codes.full.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()
    assert packed.shape == (8, 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layer_under_cuda_autocast(dtype):
    torch.manual_seed(0)
    layer = nf.NestedHashLayer(256, (8, 16, 32, 64, 128), relax="tanh").cuda()
    x = torch.randn(64, 256, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        codes = layer(x)
        packed = layer.encode(x)
    assert codes.full.dtype == dtype
    want = torch.tanh(F.linear(x, layer.weight, layer.bias))
    torch.testing.assert_close(codes.full.float(), want, rtol=0.02, atol=0.02)
    codes.full.float().sum().backward()
    assert torch.isfinite(layer.weight.grad).all()
    z = F.linear(x.to(dtype), layer.weight.to(dtype), layer.bias.to(dtype))
    assert (packed == R.pack(z.float())).float().mean() > 0.99  # ties at ~0 may round differently
