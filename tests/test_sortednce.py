"""The fused soft-sort + SortedNCE op (sorted_nce, sorted_nce_backward) and the `sortednce` loss: values and
gradients against a naive float64 loop and the materialised reference, on the C++ and Triton paths."""
import math

import pytest
import torch

import nhl_fast  # noqa: F401  (registers the ops)
from nhl_fast import reference
from nhl_fast._dispatch import not_supported_reasons
from nhl_fast.losses import get_loss

HAS_EXT = not not_supported_reasons("cpp", torch.device("cpu"))
HAS_TRITON = not not_supported_reasons("triton", torch.device("cpu"))
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="the C++ extension is not built")
OPS = ["sorted_nce"] + (["sorted_nce_triton"] if HAS_TRITON else [])
KERNELS = [pytest.param(name, marks=needs_ext) for name in OPS]


def op(name):
    return getattr(torch.ops.nhl_fast, name)


def make(batch, d, b_max, seed=0, dtype=torch.float64, signs=False, n=None):
    """u (B, b_max), a (B, d) anchors; v (N, b_max), z (N, d) candidates (N = B unless n is given)."""
    n = batch if n is None else n
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, b_max, generator=g, dtype=dtype)
    v = torch.randn(n, b_max, generator=g, dtype=dtype)
    u, v = (u.sign(), v.sign()) if signs else (u.tanh(), v.tanh())
    z = torch.randn(n, d, generator=g, dtype=dtype)
    a = torch.randn(batch, d, generator=g, dtype=dtype)
    return u, v, z, a


def naive(u, v, z, a, bits, m, tau, sort_tau, hard):
    """SortedNCE by explicit loops over lengths, anchors, ranks and candidates (autograd through scalars)."""
    eps, batch, n, out = 1e-8, u.shape[0], v.shape[0], []
    for b, ts in zip(bits, sort_tau):
        total = 0.0
        for i in range(batch):
            d = [(b - (u[i, :b] * v[j, :b]).sum()) / (2 * b) for j in range(n)]
            order = sorted(range(n), key=lambda j: (d[j].item(), j))
            cos = []
            for r in range(n):
                q = d[order[r]]
                p = torch.softmax(torch.stack([-(q - d[j]).abs() / ts for j in range(n)]), 0)
                if hard:
                    first = min(j for j in range(n) if d[j].item() == q.item())
                    p = torch.nn.functional.one_hot(torch.tensor(first), n).to(p) + p - p.detach()
                e = sum(p[j] * z[j] for j in range(n))
                cos.append((e * a[i]).sum() / (e.norm().clamp_min(eps) * a[i].norm().clamp_min(eps)))
            negatives = sum(torch.exp(cos[r] / tau) for r in range(m, n))
            total = total + sum(-torch.log(torch.exp(cos[r] / tau) / (torch.exp(cos[r] / tau) + negatives))
                                for r in range(m)) / m
        out.append(total / batch)
    return torch.stack(out)


def grads(fn, tensors, weights):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    return value.detach(), torch.autograd.grad((value * weights).sum(), leaves)


def assert_close(got, want, rtol, atol):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("n", [5, 8, 3])
def test_reference_equals_a_naive_loop(hard, n):
    u, v, z, a = make(5, 3, 13, seed=1, n=n)
    args = ([5, 13], 2, 0.2, [0.1, 0.4], hard)
    weights = torch.tensor([1.0, -0.5], dtype=torch.float64)
    want, want_g = grads(lambda *t: naive(*t, *args), (u, v, z, a), weights)
    got, got_g = grads(lambda *t: reference.sorted_nce(*t, *args), (u, v, z, a), weights)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_close(got_g, want_g, 1e-10, 1e-12)
    assert all(g.abs().sum() > 0 for g in got_g)  # every input receives a gradient (the codes through SoftSort)


# (batch, d, bits, m): B = 2, d < B and d > B, lengths not multiples of 64, m = 1 and B - 1
SHAPES = [(2, 3, [5], 1), (7, 3, [5, 13, 70], 2), (9, 20, [8, 33], 1), (6, 4, [64, 65], 5), (17, 5, [3, 16], 3)]


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("batch, d, bits, m", SHAPES)
def test_kernel_equals_the_materialised_reference(name, hard, batch, d, bits, m):
    u, v, z, a = make(batch, d, bits[-1], seed=batch + d)
    sort_tau = [0.05 * (k + 1) for k in range(len(bits))]
    args = (bits, m, 0.3, sort_tau, hard)
    weights = torch.linspace(1.0, 0.3, len(bits), dtype=torch.float64)
    want, want_g = grads(lambda *t: reference.sorted_nce(*t, *args), (u, v, z, a), weights)
    got, got_g = grads(lambda *t: op(name)(*t, *args), (u, v, z, a), weights)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_close(got_g, want_g, 1e-9, 1e-12)
    direct = op(name.replace("sorted_nce", "sorted_nce_backward"))(weights, u, v, z, a, *args)
    assert_close(direct, reference.sorted_nce_backward(weights, u, v, z, a, *args), 1e-9, 1e-12)


# (batch, n, d, bits, m): N candidates > B anchors (a code memory's extra rows), N < B, one anchor, N = 2
CANDIDATES = [(3, 8, 4, [5, 13], 2), (7, 4, 3, [6, 70], 3), (1, 6, 5, [8], 1), (5, 2, 3, [4, 9], 1)]


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("batch, n, d, bits, m", CANDIDATES)
def test_kernel_with_more_or_fewer_candidates_than_anchors(name, hard, batch, n, d, bits, m):
    u, v, z, a = make(batch, d, bits[-1], seed=batch + 3 * n, n=n)
    args = (bits, m, 0.3, [0.1 * (k + 1) for k in range(len(bits))], hard)
    weights = torch.linspace(1.0, 0.4, len(bits), dtype=torch.float64)
    want, want_g = grads(lambda *t: reference.sorted_nce(*t, *args), (u, v, z, a), weights)
    got, got_g = grads(lambda *t: op(name)(*t, *args), (u, v, z, a), weights)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_close(got_g, want_g, 1e-9, 1e-12)
    assert [g.shape for g in got_g] == [u.shape, v.shape, z.shape, a.shape]
    direct = op(name.replace("sorted_nce", "sorted_nce_backward"))(weights, u, v, z, a, *args)
    assert_close(direct, reference.sorted_nce_backward(weights, u, v, z, a, *args), 1e-9, 1e-12)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("hard", [False, True])
def test_float32_follows_float64(name, hard):
    u, v, z, a = make(12, 6, 24, seed=3)
    args = ([8, 24], 2, 0.1, [0.2, 0.2], hard)
    want, want_g = grads(lambda *t: reference.sorted_nce(*t, *args), (u, v, z, a), torch.ones(2, dtype=torch.float64))
    got, got_g = grads(lambda *t: op(name)(*t, *args), [t.float() for t in (u, v, z, a)], torch.ones(2))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert_close([g.double() for g in got_g], want_g, 1e-4, 1e-5)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("hard", [False, True])
def test_tied_distances(name, hard):
    """+-1 codes of few bits: many candidates share a distance; the hard rows take the first index of a tie
    (candidates repeat in the sorted list) and the soft rows weigh tied candidates equally."""
    u, v, z, a = make(10, 4, 6, seed=5, signs=True)
    v[3], v[7] = v[1], v[1]  # exact duplicates too
    dist = (6 - u[:, :3] @ v[:, :3].T) / 6
    assert (dist[0].unsqueeze(0) == dist[0].unsqueeze(1)).sum() > 10 + 2 * 3  # ties, beyond the diagonal
    args = ([3, 6], 2, 0.2, [0.1, 0.3], hard)
    weights = torch.tensor([0.6, 1.0], dtype=torch.float64)
    want, want_g = grads(lambda *t: naive(*t, *args), (u, v, z, a), weights)
    got, got_g = grads(lambda *t: op(name)(*t, *args), (u, v, z, a), weights)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_close(got_g, want_g, 1e-9, 1e-12)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("hard", [False, True])
def test_all_lengths_in_one_call_equal_separate_calls(name, hard):
    bits, sort_tau = [4, 16, 37, 64], [0.1, 0.2, 0.3, 0.4]
    u, v, z, a = make(11, 5, 64, seed=7)
    weights = torch.tensor([1.0, 2.0, 0.5, -1.0], dtype=torch.float64)
    got, got_g = grads(lambda *t: op(name)(*t, bits, 2, 0.2, sort_tau, hard), (u, v, z, a), weights)
    for k, (b, ts) in enumerate(zip(bits, sort_tau)):
        one, one_g = grads(lambda *t: op(name)(t[0][:, :b], t[1][:, :b], t[2], t[3], [b], 2, 0.2, [ts], hard),
                           (u, v, z, a), weights[k:k + 1])
        torch.testing.assert_close(got[k], one[0], rtol=1e-13, atol=1e-13)
        total = list(one_g) if k == 0 else [s + g for s, g in zip(total, one_g)]  # one_g: w.r.t. the full u, v
    assert_close(got_g, total, 1e-10, 1e-12)


# SoftSort temperatures from nearly hard to nearly flat (the recurrences' factors exp(-(q_r - q_{r-1}) / tau_s)
# underflow to 0 or sit at 1), on (batch, d, bits, m, +-1 codes): ties in D (+-1 codes), B not a power of 2,
# K = 1 and K > 1, d < B and d > B
SORT_TAUS = [1e-3, 0.05, 1.0, 100.0]
SWEEP = [(7, 3, [5, 13], 2, True), (6, 9, [4], 1, True), (5, 12, [8, 20], 3, False)]


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("sort_tau", SORT_TAUS)
def test_recurrences_over_sort_temperatures_and_ties(name, hard, sort_tau):
    for batch, d, bits, m, signs in SWEEP:
        u, v, z, a = make(batch, d, bits[-1], seed=batch + d, signs=signs)
        args = (bits, m, 0.3, [sort_tau * (k + 1) for k in range(len(bits))], hard)
        weights = torch.linspace(1.0, -0.4, len(bits), dtype=torch.float64)
        torch.testing.assert_close(op(name)(u, v, z, a, *args), reference.sorted_nce(u, v, z, a, *args),
                                   rtol=1e-12, atol=1e-12)
        got = op(name.replace("sorted_nce", "sorted_nce_backward"))(weights, u, v, z, a, *args)
        assert_close(got, reference.sorted_nce_backward(weights, u, v, z, a, *args), 1e-9, 1e-12)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("sort_tau", [1e-3, 0.5])
def test_float32_small_sort_temperature(name, hard, sort_tau):
    """Small tau_s (the loss's default on D in [0, 1] is ~0.5 or below): float32 values within 1e-5 of float64,
    and gradients as close as the materialised form's own float32 ones (the codes' gradient carries 1 / tau_s
    times D's rounding, on every implementation)."""
    u, v, z, a = make(12, 16, 32, seed=31)
    args = ([16, 32], 2, 0.1, [sort_tau, sort_tau], hard)
    ones = torch.ones(2, dtype=torch.float64)
    want, want_g = grads(lambda *t: reference.sorted_nce(*t, *args), (u, v, z, a), ones)
    low = [t.float() for t in (u, v, z, a)]
    got, got_g = grads(lambda *t: op(name)(*t, *args), low, ones.float())
    _, ref_g = grads(lambda *t: reference.sorted_nce(*t, *args), low, ones.float())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    for g, r, w in zip(got_g, ref_g, want_g):
        scale = w.abs().max()
        assert (g.double() - w).abs().max() / scale <= 4 * (r.double() - w).abs().max() / scale + 1e-6


@needs_ext
@pytest.mark.parametrize("sort_tau", [1e-3, 1.0, 100.0])
@pytest.mark.parametrize("batch, d, bits", [(7, 3, [5, 13]), (5, 9, [6])])
def test_gradcheck_soft_over_sort_temperatures(sort_tau, batch, d, bits):
    """Finite differences of the soft variant (distinct distances: the sort and |.| are smooth there)."""
    u, v, z, a = make(batch, d, bits[-1], seed=37 + batch)
    fn = lambda *t: torch.ops.nhl_fast.sorted_nce(*t, bits, 2, 0.3, [sort_tau] * len(bits), False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [t.requires_grad_(True) for t in (u, v, z, a)])


@needs_ext
def test_gradcheck():
    u, v, z, a = make(6, 4, 10, seed=11)
    soft = lambda *t: torch.ops.nhl_fast.sorted_nce(*t, [4, 10], 2, 0.3, [0.2, 0.5], False)  # noqa: E731
    assert torch.autograd.gradcheck(soft, [t.requires_grad_(True) for t in (u, v, z, a)])
    # hard: the forward is piecewise constant in the codes (their gradient is SoftSort's straight-through one,
    # checked against the reference above); exact in the latents
    hard = lambda *t: torch.ops.nhl_fast.sorted_nce(u.detach(), v.detach(), *t, [4, 10], 2, 0.3, [0.2, 0.5], True)  # noqa: E731
    assert torch.autograd.gradcheck(hard, [z, a])


@needs_ext
@pytest.mark.parametrize("batch, n", [(3, 7), (6, 4)])
def test_gradcheck_more_or_fewer_candidates(batch, n):
    u, v, z, a = make(batch, 4, 10, seed=41 + n, n=n)
    soft = lambda *t: torch.ops.nhl_fast.sorted_nce(*t, [4, 10], 2, 0.3, [0.2, 0.5], False)  # noqa: E731
    assert torch.autograd.gradcheck(soft, [t.requires_grad_(True) for t in (u, v, z, a)])


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("n", [6, 9, 4])
def test_opcheck(name, n):
    u, v, z, a = make(6, 4, 10, seed=13, n=n)
    args = ([4, 10], 2, 0.3, [0.2, 0.5])
    for hard in (False, True):
        torch.library.opcheck(op(name), (u, v, z, a, *args, hard))
        torch.library.opcheck(op(name.replace("sorted_nce", "sorted_nce_backward")),
                              (torch.ones(2, dtype=torch.float64), u, v, z, a, *args, hard))


@pytest.mark.parametrize("name", KERNELS)
def test_bad_input(name):
    u, v, z, a = make(6, 4, 10)
    args = ([4, 10], 2, 0.3, [0.2, 0.5], True)
    bad = u.clone()
    bad[2, 3] = math.nan
    with pytest.raises(ValueError, match="u and v must be finite"):
        op(name)(bad, v, z, a, *args)
    with pytest.raises(ValueError, match="m=6"):
        op(name)(u, v, z, a, [4, 10], 6, 0.3, [0.2, 0.5], True)
    with pytest.raises(TypeError, match="z must have u's dtype"):
        op(name)(u, v, z.float(), a.float(), *args)
    with pytest.raises(ValueError, match=r"z_anchor must be \(B, d\)"):
        op(name)(u, v, z, a[:, :3], *args)
    # N candidates != B anchors: v (N, b_max), z (N, d), z_anchor (B, d)
    with pytest.raises(ValueError, match=r"v must be \(N, b_max\) with b_max = 10"):
        op(name)(u, v[:, :8], z, a, *args)
    with pytest.raises(ValueError, match=r"z must be \(N, d\) with N = 4"):
        op(name)(u, v[:4], z, a, *args)
    with pytest.raises(ValueError, match=r"z_anchor must be \(B, d\) = \(6, 4\)"):
        op(name)(u, v, z, a[:5], *args)
    with pytest.raises(ValueError, match="N >= 2 candidates"):
        op(name)(u, v[:1], z[:1], a, [4, 10], 1, 0.3, [0.2, 0.5], True)
    with pytest.raises(ValueError, match=r"m=3 positives must be in \[1, N - 1\] = \[1, 2\]"):
        op(name)(u, v[:3], z[:3], a, [4, 10], 3, 0.3, [0.2, 0.5], True)


@needs_ext
def test_zero_latent_and_zero_weight():
    """A zero anchor latent (norm clamped) gives finite values and gradients; a zero weight's length is skipped."""
    u, v, z, a = make(8, 3, 16, seed=17)
    a[2] = 0
    z[4] = 0
    for hard in (False, True):
        args = ([8, 16], 2, 0.3, [0.2, 0.5], hard)
        w = torch.tensor([0.0, 1.0], dtype=torch.float64)
        got = torch.ops.nhl_fast.sorted_nce_backward(w, u, v, z, a, *args)
        assert_close(got, reference.sorted_nce_backward(w, u, v, z, a, *args), 1e-9, 1e-12)
        assert all(torch.isfinite(g).all() for g in got)


# ------------------------------------------------------------------ the loss


def test_loss_is_registered_with_the_published_defaults():
    loss = get_loss("sortednce", (8, 16, 32))
    assert (loss.m, loss.tau, loss.hard, loss.symmetric) == (2, 0.1, True, False)
    assert loss.sort_tau == [0.05] * 3 and (loss.quant_weight, loss.projection) == (0.0, None)
    assert get_loss("SortedNCE", (8,), sort_tau=0.5).sort_tau == [0.5]


@pytest.mark.parametrize("backend", ["torch"] + (["cpp"] if HAS_EXT else []) + (["triton"] if HAS_TRITON else []))
def test_loss_equals_the_reference_on_every_backend(backend):
    u, v, z, a = make(10, 6, 40, seed=19)
    loss = get_loss("sortednce", (8, 16, 32), m=2, tau=0.2, sort_tau=0.3, backend=backend)
    got, got_g = grads(lambda *t: loss(t[0], t[1], z=t[2], z_other=t[3]), (u, v, z, a), torch.ones(3))
    want, want_g = grads(lambda *t: reference.sorted_nce(t[0][:, :32], t[1][:, :32], *t[2:], [8, 16, 32], 2, 0.2,
                                                         [0.3] * 3, True), (u, v, z, a), torch.ones(3))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_close(got_g, want_g, 1e-9, 1e-12)


def test_symmetric_averages_the_two_directions():
    u, v, z, a = make(8, 5, 16, seed=23)
    sym = get_loss("sortednce", (8, 16), symmetric=True, sort_tau=0.2)(u, v, z=z, z_other=a)
    one = get_loss("sortednce", (8, 16), sort_tau=0.2)
    torch.testing.assert_close(sym, (one(u, v, z=z, z_other=a) + one(v, u, z=a, z_other=z)) / 2)


def test_loss_rejects_missing_or_mismatched_views():
    u, v, z, a = make(8, 5, 16)
    loss = get_loss("sortednce", (8, 16))
    with pytest.raises(ValueError, match="pass z= and z_other="):
        loss(u, v)
    with pytest.raises(ValueError, match="pass z= and z_other="):
        loss(u, v, z=z)
    with pytest.raises(ValueError, match="u_other must be"):
        loss(u, v[:, :12], z=z, z_other=a)
    with pytest.raises(ValueError, match="the two views must have one shape"):
        loss(u, torch.cat([v, v])[:, :16], z=z, z_other=a)
    with pytest.raises(TypeError, match="u_other must be floating"):
        loss(u, torch.arange(8), z=z, z_other=a)  # labels where the second view belongs
    with pytest.raises(ValueError, match="z_other must be"):
        loss(u, v, z=z, z_other=a[:4])
    with pytest.raises(ValueError, match="B > m"):
        loss(u[:2], v[:2], z=z[:2], z_other=a[:2])
    with pytest.raises(ValueError, match="sort_tau"):
        get_loss("sortednce", (8,), sort_tau="soft")
    with pytest.raises(ValueError, match="tau"):
        get_loss("sortednce", (8,), tau=0)


@needs_ext
def test_loss_trains_the_codes_toward_their_view():
    """A few steps of SGD on the codes alone (latents fixed, soft variant) lower the loss."""
    u, v, z, a = make(16, 8, 16, seed=29)
    a = z + 0.1 * a  # the anchor latent is a noisy copy of its own sample's
    u = u.clone().requires_grad_(True)
    loss = get_loss("sortednce", (8, 16), hard=False, sort_tau=0.05, backend="cpp")
    first = loss(u, v, z=z, z_other=a).sum()
    opt = torch.optim.SGD([u], lr=5.0)
    for _ in range(30):
        opt.zero_grad()
        loss(u, v, z=z, z_other=a).sum().backward()
        opt.step()
    assert loss(u, v, z=z, z_other=a).sum() < first - 0.05


# ------------------------------------------------------------------ NSH script: temperature, extra term, latent head


def script_loss(b1, b2, z1, z2, m, tau, sort_tau):
    """The NSH script's step (DimpleCrq/NSH train.py + utils.py), written out in float64 loops for one length:
    s = <b1, b2> / (2 bit) + 0.5, SoftSort rows on s (descending, hard, temperature sort_tau), E = P z1,
    cos(E_r, z2_i), and per positive the cross-entropy of [pos, negatives] / tau (without the script's extra
    softmax before CrossEntropyLoss and its extra 1 / batch_size: see the SortedNCE docstring)."""
    n, bit = b1.shape
    total = 0.0
    for i in range(n):
        s = [(b1[i] * b2[j]).sum() / (2 * bit) + 0.5 for j in range(n)]
        order = sorted(range(n), key=lambda j: (-s[j].item(), j))
        cos = []
        for r in range(n):
            logits = torch.stack([-(s[order[r]] - s[j]).abs() / sort_tau for j in range(n)])
            p = torch.softmax(logits, 0)
            p = torch.nn.functional.one_hot(logits.argmax(), n).to(p) + p - p.detach()
            e = sum(p[j] * z1[j] for j in range(n))
            cos.append((e * z2[i]).sum() / (e.norm() * z2[i].norm()))
        neg = [cos[r] / tau for r in range(m, n)]
        total = total + sum(-torch.log_softmax(torch.stack([cos[r] / tau] + neg), 0)[0] for r in range(m)) / m
    return total / n


@pytest.mark.parametrize("sort_tau", [0.05, 0.7])
def test_sort_tau_is_softsort_on_the_scripts_similarity(sort_tau):
    """sort_tau is SoftSort's temperature on the script's similarity s = 1 - D in [0, 1] (|s_r - s_j| = |D_r - D_j|):
    the loss equals the script's formulation at the same number, values and gradients."""
    u, v, z, a = make(7, 4, 12, seed=31)
    loss = get_loss("sortednce", (12,), sort_tau=sort_tau, backend="torch")
    got, got_g = grads(lambda *t: loss(t[0], t[1], z=t[2], z_other=t[3])[0], (u, v, z, a), torch.ones(()))
    want, want_g = grads(lambda *t: script_loss(*t, 2, 0.1, sort_tau), (u, v, z, a), torch.ones(()))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_close(got_g, want_g, 1e-10, 1e-12)


def test_default_temperature():
    """The default is one temperature for every length on D (SORT_TAU, measured); "bits" keeps the script's
    SoftSort(bit), which makes the rows ~uniform (|D_r - D_j| / b <= 1 / b)."""
    from nhl_fast.losses.sortednce import SORT_TAU

    assert get_loss("sortednce", (8, 16, 32)).sort_tau == [SORT_TAU] * 3
    assert get_loss("sortednce", (8, 16, 32), sort_tau="bits").sort_tau == [8.0, 16.0, 32.0]


def naive_code_term(u, v, bits):
    """The script's ||b1 - P b1||^2 + ||b2 - P b2||^2 over 2B with hard rows (first index of a tie), by loops."""
    n, out = u.shape[0], []
    for b in bits:
        total = 0.0
        for i in range(n):
            d = [((b - (u[i, :b] * v[j, :b]).sum()) / (2 * b)).item() for j in range(n)]
            q = sorted(d)
            for r in range(n):
                j = min(k for k in range(n) if d[k] == q[r])
                for x in (u, v):
                    total = total + ((x[r, :b].detach() - x[j, :b]) ** 2).sum()
        out.append(total / (2 * n))
    return torch.stack(out)


@pytest.mark.parametrize("signs", [False, True])
def test_sorted_code_term_equals_a_naive_loop(signs):
    from nhl_fast.losses.sortednce import sorted_code_term

    u, v, _, _ = make(9, 2, 10, seed=37, signs=signs)
    if signs:
        v[4] = v[2]  # ties
    weights = torch.tensor([1.0, -0.4, 0.7], dtype=torch.float64)
    want, want_g = grads(lambda *t: naive_code_term(*t, [3, 6, 10]), (u, v), weights)
    got, got_g = grads(lambda *t: sorted_code_term(*t, [3, 6, 10]), (u, v), weights)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_close(got_g, want_g, 1e-12, 1e-12)


def test_loss_adds_the_weighted_code_term_and_projects_the_latents():
    from nhl_fast.losses.sortednce import sorted_code_term

    u, v, z, a = make(8, 5, 16, seed=41)
    plain = get_loss("sortednce", (8, 16), sort_tau=0.1, backend="torch")
    loss = get_loss("sortednce", (8, 16), sort_tau=0.1, quant_weight=0.5, backend="torch")
    torch.testing.assert_close(loss(u, v, z=z, z_other=a), plain(u, v, z=z, z_other=a)
                               + 0.5 * sorted_code_term(u, v, [8, 16]))
    sym = get_loss("sortednce", (8, 16), sort_tau=0.1, quant_weight=0.5, symmetric=True, backend="torch")
    torch.testing.assert_close(sym(u, v, z=z, z_other=a), (loss(u, v, z=z, z_other=a) + loss(v, u, z=a, z_other=z)) / 2)
    torch.manual_seed(0)
    proj = get_loss("sortednce", (8, 16), sort_tau=0.1, projection=6, backend="torch").double()
    got = proj(u, v, z=z, z_other=a)
    assert sum(p.numel() for p in proj.parameters()) == 5 * 6 + 6 + 6 * 6 + 6 + 2 * 6
    torch.testing.assert_close(got, plain(u, v, z=proj.projection(z), z_other=proj.projection(a)))


@pytest.mark.parametrize("kw, match", [({"quant_weight": -1.0}, "quant_weight"),
                                       ({"quant_weight": "x"}, "quant_weight"), ({"projection": -2}, "projection"),
                                       ({"projection": 1.5}, "projection"), ({"sort_tau": 0}, "sort_tau"),
                                       ({"sort_tau": True}, "sort_tau")])
def test_bad_options_raise_naming_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        get_loss("sortednce", (8,), **kw)


# ------------------------------------------------------------------ the code memory


@pytest.mark.parametrize("backend", ["torch"] + (["cpp"] if HAS_EXT else []))
def test_memory_appends_the_stored_pairs_to_the_candidates(backend):
    """memory=M: the ring of past (code, latent) candidate pairs joins the candidates once warm; the loss equals
    the op on the concatenated candidates (values and gradients w.r.t. the batch); the stored rows get none."""
    args = ([8, 16], 2, 0.2, [0.3, 0.3], True)
    loss = get_loss("sortednce", (8, 16), m=2, tau=0.2, sort_tau=0.3, memory=7, warmup_epochs=1, backend=backend)
    batches = [make(4, 5, 20, seed=s) for s in (51, 52, 53)]
    u, v, z, a = batches[0]
    first = loss(u, v, z=z, z_other=a)  # warm-up: written, not read
    torch.testing.assert_close(first, reference.sorted_nce(u[:, :16], v[:, :16], z, a, *args))
    assert int(loss.memory.filled) == 4 and int(loss.memory.ptr) == 4
    assert loss.memory.codes.dtype == torch.float32 and loss.memory.latents.dtype == torch.float64
    torch.testing.assert_close(loss.memory.prefix(16), v[:, :16].float())   # the candidates' codes, b_max wide
    assert torch.equal(loss.memory.stored_latents(), z)                      # and their latents, row for row
    loss.set_epoch(1)
    u, v, z, a = batches[1]
    mem_codes, mem_lat = loss.memory.prefix(16).double().clone(), loss.memory.stored_latents().clone()
    got, got_g = grads(lambda *t: loss(t[0], t[1], z=t[2], z_other=t[3]), (u, v, z, a), torch.tensor([1.0, 0.5]))
    want, want_g = grads(lambda *t: reference.sorted_nce(t[0][:, :16], torch.cat([t[1][:, :16], mem_codes]),
                                                         torch.cat([t[2], mem_lat]), t[3], *args),
                         (u, v, z, a), torch.tensor([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_close(got_g, want_g, 1e-9, 1e-12)
    assert not (loss.memory.codes.requires_grad or loss.memory.latents.requires_grad)
    assert loss.memory.codes.grad is None and loss.memory.latents.grad is None
    # the grads() call pushed batch 1 (4 rows into the 3 free slots and slot 0): ring order
    assert int(loss.memory.filled) == 7 and int(loss.memory.ptr) == 1
    u0, v0, z0, _ = batches[0]
    assert torch.equal(loss.memory.latents, torch.cat([z[3:], z0[1:], z[:3]]))
    torch.testing.assert_close(loss.memory.codes, torch.cat([v[3:], v0[1:], v[:3]])[:, :16].float())
    loss.eval()
    loss(*batches[2][:2], z=batches[2][2], z_other=batches[2][3])
    assert int(loss.memory.ptr) == 1  # eval mode reads, never writes


def test_memory_with_projection_and_symmetric_stores_the_contrasted_latents():
    torch.manual_seed(0)
    loss = get_loss("sortednce", (8, 16), sort_tau=0.2, projection=6, memory=10, symmetric=True,
                    backend="torch").double()
    u, v, z, a = make(4, 5, 16, seed=61)
    loss(u, v, z=z, z_other=a)
    stored = loss.memory.stored_latents().clone()
    torch.testing.assert_close(stored, loss.projection(z))  # after the projection, detached
    u2, v2, z2, a2 = make(4, 5, 16, seed=62)
    got = loss(u2, v2, z=z2, z_other=a2)
    codes = loss.memory.prefix(16)[:4].double()
    pz, pa = loss.projection(z2), loss.projection(a2)
    args = ([8, 16], 2, 0.1, [0.2, 0.2], True)
    want = (reference.sorted_nce(u2, torch.cat([v2, codes]), torch.cat([pz, stored]), pa, *args)
            + reference.sorted_nce(v2, torch.cat([u2, codes]), torch.cat([pa, stored]), pz, *args)) / 2
    torch.testing.assert_close(got, want)


def test_memory_state_dict_keeps_the_latents():
    loss = get_loss("sortednce", (8,), memory=5, backend="torch")
    u, v, z, a = make(3, 4, 8, seed=71)
    loss(u, v, z=z, z_other=a)
    fresh = get_loss("sortednce", (8,), memory=5, backend="torch")
    assert fresh.memory.latents is None and "memory.latents" not in fresh.state_dict()
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.memory.latents, loss.memory.latents) and int(fresh.memory.filled) == 3


def test_memory_options_raise():
    with pytest.raises(ValueError, match="debiased=0.1 is not supported"):
        get_loss("sortednce", (8,), memory=8, debiased=0.1)
    with pytest.raises(ValueError, match="memory must be"):
        get_loss("sortednce", (8,), memory=-1)
    with pytest.raises(ValueError, match="warmup_epochs"):
        get_loss("sortednce", (8,), memory=8, warmup_epochs=-1)
