"""Base deep-hashing losses: each vs an independent naive formula (loops over pairs/triplets,
one length at a time, the references' literal per-length definitions), values and gradients;
the nested one-call evaluation equals K separate calls; the shared bank equals per-length banks."""
import math

import pytest
import torch

import nhl_fast.losses as L
from nhl_fast.losses import centers as C

BITS = (3, 8, 13)          # not powers of two, not multiples of 64, a tiny first length
BITS_P2 = (4, 8, 16)       # Hadamard lengths
NC = 4
NT = 12


def labels_single(B, gen):
    return torch.nn.functional.one_hot(torch.randint(0, NC, (B,), generator=gen), NC).double()


def labels_multi(B, gen):
    y = (torch.rand(B, NC, generator=gen) < 0.4).double()
    y[0] = 0.0            # an unlabeled row: no similar pair, random centre tie-break
    y[1] = 1.0            # an all-labels row
    return y


LABELS = {"single": labels_single, "multi": labels_multi}


pytestmark = pytest.mark.usefixtures("one_thread")


def naive_bce(p, t):
    # torch.nn.BCELoss elementwise, with its log clamp at -100
    return -(t * torch.log(p).clamp(min=-100) + (1 - t) * torch.log(1 - p).clamp(min=-100))


def naive_target(y_row, cen, tie):
    s = torch.zeros(cen.shape[1], dtype=cen.dtype)
    for c in range(cen.shape[0]):
        if y_row[c] > 0:
            s = s + y_row[c] * cen[c]
    return torch.tensor([tie[j] if s[j] == 0 else (1.0 if s[j] > 0 else -1.0) for j in range(len(s))], dtype=cen.dtype)


# ---- naive per-length formulas: fn(loss_module, k, u_k, y, idx, state) -> scalar ---------------------------

def naive_csq(m, k, u, y, idx, state):
    cen, tie = m.centers_for(k).double(), tie_for(m, k)
    v = u.tanh()
    tot = 0.0
    for i in range(u.shape[0]):
        t = naive_target(y[i], cen, tie)
        tot = tot + naive_bce(0.5 * (v[i] + 1), 0.5 * (t + 1)).sum()
    q = (v.abs() - 1).pow(2).mean()
    return tot / u.numel() + m.lambda_ * q


def tie_for(m, k):
    if m.nested:
        return m.tie[: m.bit_list[k]].double()
    s = sum(m.bit_list[:k])
    return m.tie[s : s + m.bit_list[k]].double()


def bank_write(state, k, u, y, idx, b):
    U, Y = state.setdefault(k, (torch.zeros(NT, b, dtype=torch.float64), torch.zeros(NT, NC, dtype=torch.float64)))
    U[idx] = u.detach()
    Y[idx] = y
    return U, Y


def naive_dsh(m, k, u, y, idx, state):
    b = u.shape[1]
    U, Y = bank_write(state, k, u, y, idx, b)
    tot = 0.0
    for i in range(u.shape[0]):
        for n in range(NT):
            d = ((u[i] - U[n]) ** 2).sum()
            dis = float((y[i] * Y[n]).sum() == 0)
            tot = tot + (1 - dis) / 2 * d + dis / 2 * torch.clamp(2 * b - d, min=0)
    return tot / (u.shape[0] * NT) + m.alpha * (1 - u.abs()).abs().mean()


def sim(a, b):
    return float((a * b).sum() > 0)


def naive_likelihood(u, y, U, Y):
    tot = 0.0
    for i in range(u.shape[0]):
        for n in range(U.shape[0]):
            th = 0.5 * (u[i] * U[n]).sum()
            tot = tot + torch.log(1 + torch.exp(th)) - sim(y[i], Y[n]) * th
    return tot / (u.shape[0] * U.shape[0])


def naive_dpsh(m, k, u, y, idx, state):
    U, Y = bank_write(state, k, u, y, idx, u.shape[1])
    return naive_likelihood(u, y, U, Y) + m.alpha * (u - u.sign()).pow(2).mean()


def naive_dhn(m, k, u, y, idx, state):
    U, Y = bank_write(state, k, u, y, idx, u.shape[1])
    return naive_likelihood(u, y, U, Y) + m.alpha * torch.log(torch.cosh(u.abs() - 1)).mean()


def naive_dbdh(m, k, u, y, idx, state):
    u = u.clamp(-1, 1)
    U, Y = bank_write(state, k, u, y, idx, u.shape[1])
    bal = sum(u[i].mean() ** 2 for i in range(u.shape[0])) / u.shape[0]
    return naive_likelihood(u, y, U, Y) + m.alpha * bal


def naive_hashnet(m, k, u, y, idx, state):
    u = torch.tanh(m.scale * u)
    B = u.shape[0]
    S = [[sim(y[i], y[j]) for j in range(B)] for i in range(B)]
    s1 = sum(map(sum, S))
    s0 = B * B - s1
    tot = 0.0
    for i in range(B):
        for j in range(B):
            a = m.alpha * (u[i] * u[j]).sum()
            nlp = a + torch.log(1 + torch.exp(-a)) - S[i][j] * a
            tot = tot + nlp * (B * B / s1 if S[i][j] else B * B / s0)
    return tot / (B * B)


def naive_dch(m, k, u, y, idx, state):
    B, b = u.shape
    g = m.gamma

    def d(x, z):
        cos = (x * z).sum() / max(x.norm() * z.norm(), 1e-4)
        return (1 - torch.clamp(cos, max=0.99)) * b / 2

    S = [[sim(y[i], y[j]) for j in range(B)] for i in range(B)]
    s1 = sum(map(sum, S))
    tot = 0.0
    for i in range(B):
        for j in range(B):
            w = (B * B / s1 if S[i][j] else B * B / (B * B - s1)) if 0 < s1 < B * B else 1.0
            dij = d(u[i], u[j])
            tot = tot + w * (S[i][j] * torch.log(dij / g) + torch.log(1 + g / dij))
    q = sum(torch.log(1 + d(u[i].abs(), torch.ones(b, dtype=u.dtype)) / g) for i in range(B)) / B
    return tot / (B * B) + m.lambda_ * q


def naive_dtsh(m, k, u, y, idx, state):
    B = u.shape[0]
    tot, count = 0.0, 0
    for a in range(B):
        P = [p for p in range(B) if sim(y[a], y[p])]
        N = [n for n in range(B) if not sim(y[a], y[n])]
        if not P or not N:
            continue
        count += 1
        row = 0.0
        for p in P:
            for n in N:
                t = torch.clamp((u[a] * u[p]).sum() - (u[a] * u[n]).sum() - m.alpha, -100, 50)
                row = row - (t - torch.log(1 + torch.exp(t)))
        tot = tot + row / (len(P) * len(N))
    trip = tot / count if count else 0.0
    return trip + m.lambda_ * (u - u.sign()).pow(2).mean()


def naive_lcdsh(m, k, u, y, idx, state):
    B = u.shape[0]
    b = u.sign()
    l1 = l2 = 0.0
    for i in range(B):
        for j in range(B):
            s = 2 * sim(y[i], y[j]) - 1
            phi = torch.clamp(0.5 * (u[i] * u[j]).sum(), -50, 50)
            l1 = l1 + torch.log(1 + torch.exp(-s * phi))
            l2 = l2 + (torch.sigmoid(phi) - torch.sigmoid(0.5 * (b[i] * b[j]).sum())) ** 2
    return l1 / B**2 + m.lambda_ * l2 / B**2


def naive_dpn(m, k, u, y, idx, state):
    cen, tie = m.centers_for(k).double(), tie_for(m, k)
    tot = 0.0
    for i in range(u.shape[0]):
        t = naive_target(y[i], cen, tie)
        tot = tot + torch.clamp(m.m - u[i] * t, min=0).sum()
    return tot / u.numel()


def naive_cos(u, cen):
    return torch.stack([torch.stack([(u[i] @ c) / (u[i].norm() * c.norm()) for c in cen]) for i in range(u.shape[0])])


def naive_mdsh(m, k, u, y, idx, state):
    cen = m.centers_for(k).double()
    p = torch.softmax(u.shape[1] ** 0.5 * naive_cos(u, cen), 1)
    ce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    return ce + m.lambda_ * (u.abs() - 1).pow(2).mean()


def naive_shcir(m, k, u, y, idx, state):
    cen = m.centers_for(k).double()
    ncls = cen.shape[0]
    cos = naive_cos(u, cen)
    tot = 0.0
    for i in range(u.shape[0]):
        P = [c for c in range(ncls) if y[i, c] > 0]
        N = [c for c in range(ncls) if y[i, c] == 0]
        e = torch.exp(u.shape[1] ** 0.5 * (cos[i] - m.margin))
        row = 0.0
        for p in P:   # the reference's formula, once per positive label
            den = e[p] + sum(e[n] for n in N)
            row = row + torch.log(e[p] / den) + sum(torch.log(1 - e[n] / den) for n in N) / (ncls - 1)
        tot = tot + (row / len(P) if P else 0.0)
    return -tot / u.shape[0] + m.lambda_ * (u.abs() - 1).pow(2).mean()


NAIVE = {
    "csq": naive_csq,
    "dsh": naive_dsh,
    "dpsh": naive_dpsh,
    "dhn": naive_dhn,
    "dbdh": naive_dbdh,
    "hashnet": naive_hashnet,
    "dch": naive_dch,
    "dtsh": naive_dtsh,
    "lcdsh": naive_lcdsh,
    "dpn": naive_dpn,
    "mdsh": naive_mdsh,
    "shcir": naive_shcir,
}

CASES = [pytest.param(name, lab, bits, id=f"{name}-{lab}-{'x'.join(map(str, bits))}")
         for name in NAIVE for lab in LABELS for bits in (BITS, BITS_P2)]


def make(name, bits, **kw):
    return L.get_loss(name, bits, num_classes=NC, num_train=NT, **kw).double()


def run_both(name, lab, bits, steps=2, B=6, scale=1.0, **kw):
    """Runs the nested loss and the naive per-length formulas side by side for `steps` steps
    (overlapping bank indices); returns lists of (nested value, naive value, nested grad, naive grad)."""
    gen = torch.Generator().manual_seed(hash((name, lab, bits)) % 2**31)
    m = make(name, bits, **kw)
    if hasattr(m, "set_epoch"):
        m.set_epoch(45)            # HashNet continuation: scale sqrt(3)
    state = {}
    out = []
    for step in range(steps):
        u0 = scale * torch.randn(B, bits[-1], generator=gen, dtype=torch.float64)
        y = LABELS[lab](B, gen)
        idx = torch.randperm(NT, generator=gen)[:B]
        w = torch.rand(len(bits), generator=gen, dtype=torch.float64) + 0.5
        u1 = u0.clone().requires_grad_()
        got = m(u1, y, idx)
        (got * w).sum().backward()
        u2 = u0.clone().requires_grad_()
        want = torch.stack([NAIVE[name](m, k, u2[:, :b], y, idx, state) for k, b in enumerate(bits)])
        (want * w).sum().backward()
        out.append((got.detach(), want.detach(), u1.grad, u2.grad))
    return out


@pytest.mark.parametrize("name,lab,bits", CASES)
def test_matches_naive_values_and_grads(name, lab, bits):
    for got, want, g1, g2 in run_both(name, lab, bits):
        assert got.shape == (len(bits),)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", sorted(NAIVE))
def test_nested_call_equals_separate_calls_and_shared_bank(name):
    """One nested call == K single-length instances (each with its own bank/centres) on the prefixes."""
    gen = torch.Generator().manual_seed(7)
    bits = BITS
    nested = make(name, bits)
    singles = [make(name, (b,)) for b in bits]
    for k, s in enumerate(singles):   # same centres (the nested instance's length-k centres)
        if hasattr(s, "centers_table"):
            s.centers_table.copy_(nested.centers_for(k))
            s.tie.copy_(tie_for(nested, k))
    for _ in range(3):
        u = torch.randn(5, bits[-1], generator=gen, dtype=torch.float64)
        y = labels_multi(5, gen)
        idx = torch.randperm(NT, generator=gen)[:5]
        got = nested(u, y, idx)
        want = torch.stack([s(u[:, :b], y, idx)[0] for s, b in zip(singles, bits)])
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        if nested.uses_bank:
            for s, b in zip(singles, bits):
                assert torch.equal(nested.U[:, :b], s.U)


# ---- centres -------------------------------------------------------------------------------------------

def test_hadamard_and_reference_centres():
    h = C.hadamard(16)
    assert torch.equal(h @ h.T, 16 * torch.eye(16))
    g = torch.Generator().manual_seed(0)
    cen = C.csq_centers(10, 16, g)
    assert torch.equal(cen, torch.cat([h, -h])[:10])
    cen = C.csq_centers(40, 16, g)          # beyond 2b: random balanced rows
    assert torch.equal(cen[:32], torch.cat([h, -h])) and (cen[32:].sum(1) == 0).all()
    odd = C.csq_centers(5, 12, g)           # no Hadamard of 12: +-1 i.i.d.
    assert odd.shape == (5, 12) and set(odd.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("ncls,layout,want", [
    (10, "per_length", [4, 8, 16, 32, 64]),
    (10, "nested", [4, 8, 16, 32, 64]),
    (100, "per_length", [0, 2, 6, 32, 64]),
    (100, "nested", [2, 3, 6, 18, 44]),
])
def test_prefix_distances_documented(ncls, layout, want):
    """The table in nhl_fast/losses/centers.py (and README) is what the code produces."""
    bits = (8, 16, 32, 64, 128)
    g = torch.Generator().manual_seed(0)
    cen = C.nested_centers(ncls, bits, g) if layout == "nested" else C.per_length_centers(ncls, bits, g)
    assert C.min_prefix_distance(cen, bits) == want


def test_nested_centres_are_prefixes_and_optimal_for_few_classes():
    for bits in [(8, 16, 32, 64, 128), (16, 32, 64)]:
        cen = C.nested_centers(2 * bits[0], bits, torch.Generator().manual_seed(1))
        assert C.min_prefix_distance(cen, bits) == [b // 2 for b in bits]
        assert len({tuple(r.tolist()) for r in cen}) == cen.shape[0]


def test_csq_nested_mode_uses_prefixes():
    m = L.get_loss("csq", (8, 16, 32), num_classes=6, centers="nested")
    assert torch.equal(m.centers_for(0), m.centers_for(2)[:, :8])
    m2 = L.get_loss("csq", (8, 16, 32), num_classes=6, centers=m.centers_table)
    u, y = torch.randn(4, 32), torch.randint(0, 6, (4,))
    torch.testing.assert_close(m(u, y), m2(u, y))


# ---- bad inputs ----------------------------------------------------------------------------------------

def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        L.get_loss("nope", (8, 16))
    for name in L.available():
        assert name in str(e.value)


@pytest.mark.parametrize("name", sorted(NAIVE))
def test_bad_inputs(name):
    m = make(name, BITS)
    u = torch.randn(4, BITS[-1], dtype=torch.float64)
    idx = torch.arange(4)
    with pytest.raises(ValueError, match="labels"):
        m(u, torch.ones(4, NC + 1), idx)
    with pytest.raises(ValueError, match="labels"):
        m(u, torch.ones(4, NC, 2), idx)
    with pytest.raises(ValueError, match="rows"):
        m(u, torch.ones(3, NC), idx)
    with pytest.raises(ValueError, match="u must"):
        m(u[:, :5], torch.ones(4, NC), idx)
    with pytest.raises(TypeError, match="u must"):
        m(u.long(), torch.ones(4, NC), idx)
    if m.uses_bank:
        with pytest.raises(ValueError, match="indices"):
            m(u, torch.ones(4, NC), torch.tensor([0, 1, 2, NT]))
        with pytest.raises(ValueError, match="indices"):
            m(u, torch.ones(4, NC), None)
        with pytest.raises(ValueError, match="num_train"):
            L.get_loss(name, BITS, num_classes=NC)
    one = (u[:1], torch.ones(1, NC), idx[:1])
    if m.min_batch > 1:
        with pytest.raises(ValueError, match="batch"):
            m(*one)
    else:
        assert torch.isfinite(m(*one)).all()
    with pytest.raises(ValueError, match="bit_list"):
        L.get_loss(name, (16, 8), num_classes=NC, num_train=NT)


# ---- schedules, target updates, compile ------------------------------------------------------------------

def test_hashnet_continuation_schedule():
    m = L.get_loss("hashnet", BITS)
    for epoch, want in [(0, 1.0), (19, 1.0), (20, math.sqrt(2)), (45, math.sqrt(3))]:
        m.set_epoch(epoch)
        assert m.scale == pytest.approx(want)


def test_dpn_adaptive_update_matches_reference_rule():
    m = L.get_loss("dpn", BITS, num_classes=NC, num_train=NT, adaptive=True)
    gen = torch.Generator().manual_seed(3)
    u = 2 * torch.randn(NT, BITS[-1], generator=gen)
    y = labels_single(NT, gen).float()
    m(u, y, torch.arange(NT))
    m.update_targets()
    tern = (u.abs() > m.m).float() * u.sign()
    for k, b in enumerate(BITS):   # per length: sign(Y^T ternary(U[:, :b])) as the reference's K banks give
        assert torch.equal(m.centers_for(k), (y.T @ tern[:, :b]).sign())
    with pytest.raises(RuntimeError, match="adaptive"):
        L.get_loss("dpn", BITS, num_classes=NC).update_targets()


@pytest.mark.parametrize("name", ["csq", "dsh", "dch", "dtsh", "mdsh", "shcir"])
def test_traces_under_compile_fullgraph(name):
    torch._dynamo.reset()
    m = L.get_loss(name, BITS, num_classes=NC, num_train=NT)
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(6, BITS[-1], generator=gen)
    y = labels_multi(6, gen).float()
    idx = torch.arange(6)
    want = m(u, y, idx)
    got = torch.compile(m, fullgraph=True, backend="aot_eager")(u, y, idx)
    torch.testing.assert_close(got, want)
