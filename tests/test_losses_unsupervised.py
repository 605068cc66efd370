"""The unsupervised nested losses (cibhash, greedyhash, bihalf) against naive per-length loops
written from the reference code (float64, values and gradients), nesting = K separate calls,
the code memory, and bad input."""
import pytest
import torch
import torch.nn.functional as F

from nhl_fast.losses import get_loss
from nhl_fast.losses._code_memory import CodeMemory

BITS = (5, 16, 37, 64)
MINE = ("cibhash", "greedyhash", "bihalf")


def _views(B=7, b=64, d=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = (2 * torch.randn(B, b, generator=g, dtype=torch.float64)).requires_grad_()
    v = (2 * torch.randn(B, b, generator=g, dtype=torch.float64)).requires_grad_()
    z = torch.randn(B, d, generator=g, dtype=torch.float64)
    z2 = z + 0.3 * torch.randn(B, d, generator=g, dtype=torch.float64)
    return u, v, z, z2


class _Sign(torch.autograd.Function):  # GreedyHash / CIBHash hash layer: sign forward, identity backward
    @staticmethod
    def forward(ctx, x):
        return torch.where(x > 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


class _BiHalf(torch.autograd.Function):  # the reference bi-half layer
    @staticmethod
    def forward(ctx, U, gamma):
        _, index = torch.sort(U, dim=0, descending=True, stable=True)
        N, D = U.shape
        B_creat = torch.cat((torch.ones([N // 2, D]), -torch.ones([N - N // 2, D]))).to(U.dtype)
        B = torch.zeros_like(U).scatter_(0, index, B_creat)
        ctx.save_for_backward(U, B)
        ctx.gamma = gamma
        return B

    @staticmethod
    def backward(ctx, g):
        U, B = ctx.saved_tensors
        return g + ctx.gamma * (U - B) / B.numel(), None


def _nt_xent_naive(zi, zj, tau, mem=None, prior=0.0):
    """The reference NtXentLoss (cosine, 2B anchors, CE over [positive, negatives]) with optional
    memory negatives and the debiased denominator, one anchor at a time."""
    z = torch.cat([zi, zj])
    n, B = z.shape[0], zi.shape[0]
    total = 0.0
    for a in range(n):
        p = (a + B) % n
        sims = [F.cosine_similarity(z[a], z[j], dim=0) for j in range(n) if j not in (a, p)]
        if mem is not None:
            sims += [F.cosine_similarity(z[a], m, dim=0) for m in mem]
        neg = torch.exp(torch.stack(sims) / tau)
        pos = torch.exp(F.cosine_similarity(z[a], z[p], dim=0) / tau)
        N = neg.shape[0]
        ng = neg.sum()
        if prior > 0:
            ng = torch.clamp((ng - N * prior * pos) / (1 - prior), min=N * torch.exp(torch.tensor(-1 / tau)))
        total = total - torch.log(pos / (pos + ng))
    return total / n


def _kl(p, q):
    q = q.detach()
    kl = p * (torch.log(p + 1e-8) - torch.log(q + 1e-8)) + (1 - p) * (torch.log(1 - p + 1e-8) - torch.log(1 - q + 1e-8))
    return kl.sum(1).mean()


def naive(name, u, v, z, z2, bits, noise=None, mem=None, prior=0.0, **kw):
    out = []
    for b in bits:
        a, c = u[:, :b], v[:, :b]
        if name == "cibhash":
            p, q = torch.sigmoid(a), torch.sigmoid(c)
            r1, r2 = (0.5, 0.5) if noise is None else (noise[0][:, :b], noise[1][:, :b])
            h1, h2 = _Sign.apply(p - r1), _Sign.apply(q - r2)
            m = None if mem is None else mem[:, :b]
            out.append(_nt_xent_naive(h1, h2, kw.get("temperature", 0.3), m, prior)
                       + kw.get("beta", 0.001) * (_kl(p, q) + _kl(q, p)) / 2)
        else:
            if name == "greedyhash":
                b1, b2 = _Sign.apply(a), _Sign.apply(c)
            else:
                Bh = _BiHalf.apply(torch.cat([a, c]), kw.get("gamma", 6.0))
                b1, b2 = Bh[: a.shape[0]], Bh[a.shape[0]:]
            cos_b = torch.stack([F.cosine_similarity(b1[i:i + 1], b2, dim=1) for i in range(a.shape[0])])
            cos_z = torch.stack([F.cosine_similarity(z[i:i + 1], z2, dim=1) for i in range(a.shape[0])])
            loss = F.mse_loss(cos_b, cos_z)
            if name == "greedyhash":
                loss = loss + kw.get("alpha", 0.1) * (torch.cat([a, c]).abs() - 1).pow(3).abs().mean()
            else:  # the value of the penalty whose gradient the reference layer adds in its backward
                U = torch.cat([a, c])
                loss = loss + kw.get("gamma", 6.0) / (2 * U.numel()) * ((U - Bh).detach() ** 2).sum()
            out.append(loss)
    return out  # a list: stacking would send zero gradients into every length's bi-half backward


def _grads(vals, u, v):
    """Every length's gradient on its own (BiHalf's reference layer adds its penalty gradient whatever
    gradient reaches it, so the naive lengths stay separate graphs and are never summed)."""
    return [g for k in range(len(vals)) for g in torch.autograd.grad(vals[k], (u, v), retain_graph=True)]


def _check(got, want):
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", MINE)
@pytest.mark.parametrize("B", [2, 7])
def test_matches_naive_loop(name, B):
    u, v, z, z2 = _views(B=B)
    loss = get_loss(name, BITS)
    if name == "cibhash":  # the stochastic codes: the same draws in the naive loop
        torch.manual_seed(3)
        got = loss(u, v, z=z, z_other=z2)
        torch.manual_seed(3)
        noise = (torch.rand_like(u), torch.rand_like(v))
        want = naive(name, u, v, z, z2, BITS, noise=noise)
    else:
        got = loss(u, v, z=z, z_other=z2)
        want = naive(name, u, v, z, z2, BITS)
    _check(got, want)
    for g, w in zip(_grads(got, u, v), _grads(want, u, v)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(temperature=0.1, beta=0.5), dict(temperature=1.0, beta=0.0)])
def test_cibhash_options_match_naive(kw):
    u, v, z, z2 = _views(B=5)
    loss = get_loss("cibhash", BITS, stochastic=False, **kw)
    got, want = loss(u, v), naive("cibhash", u, v, z, z2, BITS, **kw)
    _check(got, want)
    for g, w in zip(_grads(got, u, v), _grads(want, u, v)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", MINE)
def test_nesting_equals_separate_calls(name):
    u, v, z, z2 = _views(B=6)
    kw = dict(stochastic=False) if name == "cibhash" else {}
    nested = get_loss(name, BITS, **kw)(u, v, z=z, z_other=z2)
    for k, b in enumerate(BITS):
        one = get_loss(name, (b,), **kw)(u[:, :b], v[:, :b], z=z, z_other=z2)
        torch.testing.assert_close(nested[k:k + 1], one, rtol=1e-12, atol=1e-12)


def test_bihalf_codes_are_half_half_and_nested():
    from nhl_fast.losses.bihalf import bi_half
    U = torch.randn(9, 20)
    B = bi_half(U)
    assert set(B.unique().tolist()) == {-1.0, 1.0}
    assert (B.sum(0) == -1).all()  # 4 of 9 are +1 per bit
    assert torch.equal(bi_half(U[:, :7]), B[:, :7])
    ties = bi_half(torch.zeros(4, 2))  # ties: the lower rows first
    assert ties[:, 0].tolist() == [1, 1, -1, -1]


# ------------------------------------------------------------------------------------------ memory

def test_memory_ring_order_and_wrap():
    m = CodeMemory(5, 3)
    assert not m.ready and m.prefix(3).shape == (0, 3)
    rows = torch.arange(24, dtype=torch.float32).view(8, 3)
    m.push(rows[:2])
    assert torch.equal(m.prefix(3), rows[:2]) and int(m.ptr) == 2
    m.push(rows[2:4])
    assert torch.equal(m.prefix(2), rows[:4, :2])
    m.push(rows[4:7])  # wraps: rows 5, 6 overwrite slots 0, 1
    assert int(m.filled) == 5 and int(m.ptr) == 2
    assert torch.equal(m.codes, torch.cat([rows[5:7], rows[2:5]]))
    big = torch.arange(21, dtype=torch.float32).view(7, 3) + 100  # a push larger than the ring keeps its last 5
    m.push(big)
    assert int(m.ptr) == (2 + 5) % 5 and torch.equal(m.codes, torch.cat([big[-2:], big[-5:-2]]))
    m.push(torch.ones(0, 3))
    assert int(m.ptr) == 2
    with pytest.raises(ValueError, match="codes must be"):
        m.push(torch.ones(2, 2))
    with pytest.raises(ValueError, match="memory"):
        CodeMemory(0, 3)


def test_memory_latents_follow_the_codes_ring():
    m = CodeMemory(4, 2)
    assert m.latents is None
    codes = torch.arange(12, dtype=torch.float32).view(6, 2)
    lat = torch.arange(18, dtype=torch.float64).view(6, 3) + 0.5
    m.push(codes[:3], lat[:3])
    assert m.latents.shape == (4, 3) and m.latents.dtype == torch.float64  # created at the first push
    assert torch.equal(m.stored_latents(), lat[:3])
    m.push(codes[3:], lat[3:])  # wraps: rows 4, 5 overwrite slots 0, 1
    assert torch.equal(m.codes, torch.cat([codes[4:], codes[2:4]]))
    assert torch.equal(m.latents, torch.cat([lat[4:], lat[2:4]]))
    with pytest.raises(ValueError, match="latents must be"):
        m.push(codes[:2], lat[:1])
    with pytest.raises(ValueError, match="d = 3"):
        m.push(codes[:2], torch.ones(2, 5))
    with pytest.raises(ValueError, match="with every push or with none"):
        m.push(codes[:2])
    with pytest.raises(ValueError, match="holds no latents"):
        CodeMemory(3, 2).stored_latents()


def test_memory_warmup_and_state_dict():
    m = CodeMemory(4, 2, warmup_epochs=2)
    m.push(torch.ones(3, 2))
    assert not m.ready
    m.set_epoch(1)
    assert not m.ready
    m.set_epoch(2)
    assert m.ready
    m2 = CodeMemory(4, 2)
    m2.load_state_dict(m.state_dict())
    assert int(m2.filled) == 3 and int(m2.ptr) == 3


@pytest.mark.parametrize("prior", [0.0, 0.1])
def test_cibhash_memory_negatives_match_naive(prior):
    u, v, z, z2 = _views(B=4)
    loss = get_loss("cibhash", BITS, stochastic=False, memory=6, warmup_epochs=1, debiased=prior).double()
    first = loss(u, v)  # warm-up: the memory is written, not read
    _check(first, naive("cibhash", u, v, z, z2, BITS, prior=prior))
    stored = loss.memory.prefix(64).clone()
    assert torch.equal(stored, torch.where(torch.sigmoid(u.detach()) > 0.5, 1.0, -1.0).double())
    loss.set_epoch(1)
    u2, v2, _, _ = _views(B=4, seed=1)
    got = loss(u2, v2)
    want = naive("cibhash", u2, v2, z, z2, BITS, mem=stored, prior=prior)
    _check(got, want)
    for g, w in zip(_grads(got, u2, v2), _grads(want, u2, v2)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    assert int(loss.memory.filled) == 6  # 4 + 4 rows into a ring of 6
    loss.eval()
    loss(u2, v2)
    assert int(loss.memory.ptr) == 2  # eval mode reads, never writes


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("name", MINE)
def test_bad_input(name):
    u, v, z, z2 = _views(B=4)
    loss = get_loss(name, BITS)
    with pytest.raises(TypeError, match="u_other"):
        loss(u, None, z=z, z_other=z2)                 # one view missing
    with pytest.raises(TypeError):
        loss(u)
    with pytest.raises(ValueError, match="one shape"):
        loss(u, v[:3], z=z, z_other=z2)                # views of different shapes
    with pytest.raises(ValueError, match="u_other must be"):
        loss(u, v[:, :10], z=z, z_other=z2)
    with pytest.raises(TypeError, match="labels"):
        loss(u, torch.arange(4), z=z, z_other=z2)      # labels where the second view goes
    with pytest.raises(TypeError, match="labels"):
        loss(u, v, labels=torch.arange(4))
    with pytest.raises(ValueError, match="both latents"):
        loss(u, v, z=z)
    with pytest.raises(ValueError, match="B >= 2"):
        loss(u[:1], v[:1], z=z[:1], z_other=z2[:1])
    if name != "cibhash":
        with pytest.raises(ValueError, match="needs the latents"):
            loss(u, v)


def test_bad_options():
    with pytest.raises(ValueError, match="temperature"):
        get_loss("cibhash", BITS, temperature=0)
    with pytest.raises(ValueError, match="debiased"):
        get_loss("cibhash", BITS, debiased=1.0)
    with pytest.raises(ValueError, match="alpha"):
        get_loss("greedyhash", BITS, alpha=-1)
    with pytest.raises(ValueError, match="gamma"):
        get_loss("bihalf", BITS, gamma="6")
