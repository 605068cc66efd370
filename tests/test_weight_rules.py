"""The bounded and PCGrad weight rules and the per-length loss scale: against naive float64 math and autograd, and the
objective's defaults (centres, weight rule) with every alternative still selectable."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import nhl_fast as nf
from nhl_fast import reference
from nhl_fast.app.train import TrainConfig, make_objective
from nhl_fast.weight_rules import BoundedWeights, PCGradWeights, bounded_weights, pcgrad_weights
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from reference_head import sp_distill  # noqa: E402  (the reference code's rendition, shared with bench/)

BITS = (4, 8, 13, 30)


def naive_bounded(dots, beta, floor):
    k = len(dots)
    w = [1.0]
    for j in range(1, k):
        worst = 1.0
        for i in range(j):
            tau = beta * dots[i][i] / (k - 1)
            if dots[i][j] < -tau:
                worst = min(worst, tau / -dots[i][j])
        w.append(max(floor, worst))
    return [k * v / sum(w) for v in w]


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("floor", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_bounded_weights_match_naive_math(k, floor, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, 6, generator=g, dtype=torch.float64)
    a[1:] -= 2 * a[0]  # longer lengths pulling against the first: conflicts of every size
    dots = a @ a.T
    w, conflicts = bounded_weights(dots, 0.7, floor)
    torch.testing.assert_close(w, torch.tensor(naive_bounded(dots.tolist(), 0.7, floor), dtype=torch.float64))
    for i in range(k):
        for j in range(k):
            assert bool(conflicts[i, j]) == (i < j and dots[i, j].item() < -0.7 * dots[i, i].item() / (k - 1))
    assert conflicts.any()
    assert w.sum().item() == pytest.approx(k) and (w >= k * floor / (1 + (k - 1)) - 1e-12).all()


def test_bounded_weights_never_collapse_where_dominance_does():
    # the backbone regime of the issue: the first length's gradient is small and every other conflicts with it
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 8, generator=g, dtype=torch.float64)
    a[0] *= 0.01
    a[1:] -= 5 * a[0] / 0.01 * 0.05
    dots = a @ a.T
    dom, _ = reference.dominance_weights(dots, 1.0)
    bnd, _ = bounded_weights(dots, 1.0, 0.5)
    assert dom.max() / dom.min() > 10  # the product compounds
    assert bnd.max() / bnd.min() <= 2 + 1e-9  # floor 0.5: at most 2 : 1


def test_bounded_weights_module_smooths_over_steps():
    rule = BoundedWeights(beta=1.0, floor=0.2, momentum=0.75)
    g = torch.Generator().manual_seed(2)
    ema = None
    for _ in range(4):
        a = torch.randn(3, 5, generator=g, dtype=torch.float64)
        a[1:] -= 3 * a[0]
        dots = a @ a.T
        w, _ = rule(dots)
        raw = torch.tensor(naive_bounded(dots.tolist(), 1.0, 0.2), dtype=torch.float64)
        ema = raw if ema is None else 0.75 * ema + 0.25 * raw
        torch.testing.assert_close(w, ema)
    rule.eval()  # evaluation: this step's weights, no update
    w, _ = rule(dots)
    torch.testing.assert_close(w, raw)
    torch.testing.assert_close(rule.ema, ema)
    for kw, msg in (({"floor": 0.0}, "weight_floor"), ({"momentum": 1.0}, "weight_momentum")):
        with pytest.raises(ValueError, match=msg):
            BoundedWeights(**kw)


def _problem(seed=0, relax="tanh"):
    torch.manual_seed(seed)
    layer = nf.NestedHashLayer(12, BITS, relax=relax, dtype=torch.float64)
    x = torch.randn(16, 12, dtype=torch.float64)
    labels = torch.randint(0, 5, (16,))
    return layer, x, labels


@pytest.mark.parametrize("loss", ["csq", "dpsh"])
@pytest.mark.parametrize("distill", [0.0, 0.2])
def test_objective_bounded_rule_weights_and_gradient(loss, distill):
    """weights = the bounded rule of the recorded dots (momentum 0); the head's gradient = that of
    sum_k w_k (L_k + distill D_k) with w held constant (autograd over the naive per-length sum)."""
    layer, x, labels = _problem(1)
    obj = nf.NHLObjective(loss, BITS, weight_rule="bounded", weight_floor=0.3, weight_momentum=0.0,
                          distill=distill, num_classes=5, num_train=16, centers="per_length" if loss == "csq" else None)
    codes = layer(x)
    total = obj(codes, labels, torch.arange(16))
    w = obj.last_weights
    torch.testing.assert_close(w, bounded_weights(obj.last_grad_dots, 1.0, 0.3)[0])
    gw, = torch.autograd.grad(total, layer.weight)
    layer.zero_grad()
    codes = layer(x)
    ref = nf.NHLObjective(loss, BITS, adaptive=False, distill=0.0, num_classes=5, num_train=16,
                          centers="per_length" if loss == "csq" else None)
    per = ref.base(codes.full, F.one_hot(labels, 5).double(), torch.arange(16))
    naive = (w * per).sum()
    if distill:  # the long-short cascade, teacher detached
        naive = naive + distill * sum(w[k] * sp_distill(codes[k], codes[k + 1].detach())
                                      for k in range(len(BITS) - 1))
    want, = torch.autograd.grad(naive, layer.weight)
    torch.testing.assert_close(gw, want)


@pytest.mark.parametrize("loss", ["csq", "dpsh"])
@pytest.mark.parametrize("scale,power", [("bits", 1.0), ("sqrt_bits", 0.5), ("inv_bits", -1.0)])
def test_length_scale_is_the_scaled_sum(loss, scale, power):
    layer, x, labels = _problem(2)
    kw = dict(adaptive=False, distill=0.0, num_classes=5, num_train=16)
    obj = nf.NHLObjective(loss, BITS, length_scale=scale, **kw)
    plain = nf.NHLObjective(loss, BITS, **kw)
    codes = layer(x)
    total = obj(codes, labels, torch.arange(16))
    gw, = torch.autograd.grad(total, layer.weight)
    codes = layer(x)
    per = plain.base(codes.full, F.one_hot(labels, 5).double(), torch.arange(16))
    s = torch.tensor(BITS, dtype=torch.float64) ** power
    want_total = (s / s.mean() * per).sum()
    want, = torch.autograd.grad(want_total, layer.weight)
    torch.testing.assert_close(total, want_total)
    torch.testing.assert_close(gw, want)


def test_defaults_and_alternatives():
    obj = nf.NHLObjective("csq", BITS, num_classes=5)
    assert (obj.adaptive, obj.distill, obj.weight_rule, obj.length_scale) == (True, 0.1, "bounded", "mean")
    assert obj.base.nested and isinstance(obj.rule, BoundedWeights)  # joint centres, the bounded rule
    ref = nf.NHLObjective("csq", BITS, num_classes=5, faithful=True)
    assert ref.weight_rule == "dominance" and ref.rule is None and not ref.base.nested
    dom = nf.NHLObjective("csq", BITS, num_classes=5, weight_rule="dominance")
    assert dom.rule is None
    assert isinstance(nf.NHLObjective("csq", BITS, num_classes=5, weight_rule="pcgrad").rule, PCGradWeights)
    with pytest.raises(ValueError, match="weight_rule must be one of"):
        nf.NHLObjective("csq", BITS, num_classes=5, weight_rule="mgda")
    with pytest.raises(ValueError, match="cannot be faithful"):
        nf.NHLObjective("csq", BITS, num_classes=5, faithful=True, weight_rule="pcgrad")
    with pytest.raises(ValueError, match="cannot be faithful"):
        nf.NHLObjective("csq", BITS, num_classes=5, faithful=True, weight_rule="bounded")
    with pytest.raises(ValueError, match="length_scale"):
        nf.NHLObjective("csq", BITS, num_classes=5, length_scale="sum")
    with pytest.raises(ValueError, match="length_scale must be 'mean'"):
        nf.NHLObjective("csq", BITS, num_classes=5, faithful=True, length_scale="bits")

    class D:
        num_classes, train = 5, range(10)

    cfg = TrainConfig()
    assert (cfg.adaptive, cfg.distill, cfg.weight_rule, cfg.centers, cfg.length_scale, cfg.faithful) == \
        (True, 0.1, None, None, "mean", False)
    made = make_objective(TrainConfig(weight_rule="dominance", centers="nested", length_scale="bits"), D())
    assert (made.weight_rule, made.length_scale, made.base.nested) == ("dominance", "bits", True)
    faithful = make_objective(TrainConfig(faithful=True), D())
    assert faithful.faithful and faithful.weight_rule == "dominance"


def test_train_command_options():
    from nhl_fast.app import cli

    args = cli.build_parser().parse_args(["train"])
    assert (args.weight_rule, args.centers, args.length_scale, args.faithful) == (None, None, "mean", False)
    assert cli.build_parser().parse_args(["train", "--length-scale", "backbone_bits"]).length_scale == "backbone_bits"
    args = cli.build_parser().parse_args(["train", "--weight-rule", "dominance", "--centers", "per_length",
                                          "--length-scale", "bits", "--faithful"])
    assert (args.weight_rule, args.centers, args.length_scale, args.faithful) == ("dominance", "per_length", "bits",
                                                                                True)
    assert cli.build_parser().parse_args(["train", "--weight-rule", "pcgrad"]).weight_rule == "pcgrad"
    assert make_objective(TrainConfig(weight_rule="pcgrad"), type("D", (), {"num_classes": 5, "train": range(10)})
                          ).weight_rule == "pcgrad"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--centers", "best"])


def naive_pcgrad(grads):
    """Yu et al. 2020, Algorithm 1 on plain vectors (float64 lists), the projection order fixed: for each i,
    j = 0..K-1 (j != i), each against the original g_j; returns sum_i g_i^PC."""
    def dot(a, b):
        return sum(p * q for p, q in zip(a, b))

    out = [0.0] * len(grads[0])
    for i, gi in enumerate(grads):
        pc = list(gi)
        for j, gj in enumerate(grads):
            d, n = dot(pc, gj), dot(gj, gj)
            if j != i and d < 0 and n > 0:
                pc = [p - d / n * q for p, q in zip(pc, gj)]
        out = [o + p for o, p in zip(out, pc)]
    return out


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcgrad_weights_combine_to_the_naive_surgery(k, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, 7, generator=g, dtype=torch.float64)
    a[1:] -= 1.5 * a[0]  # conflicts with the first length, and among the others
    if k == 5:
        a[3] = 0  # a zero gradient: never projected on
    w, conflicts = pcgrad_weights(a @ a.T)
    torch.testing.assert_close(w @ a, torch.tensor(naive_pcgrad(a.tolist()), dtype=torch.float64))
    dots = a @ a.T
    for i in range(k):
        for j in range(k):
            assert bool(conflicts[i, j]) == (i < j and dots[i, j].item() < 0)
    assert conflicts.any()
    b = a.abs()  # no conflicts: PCGrad is the plain sum
    torch.testing.assert_close(pcgrad_weights(b @ b.T)[0], torch.ones(k, dtype=torch.float64))
    torch.testing.assert_close(PCGradWeights()(a @ a.T)[0], w)


def _tug_of_war(u, labels, indices):
    """A per-length loss whose lengths pull the shared bits opposite ways (4 and 13 bits up, 8 and 30 down)."""
    return (u * (-1.0 if u.shape[1] in (4, 13) else 1.0)).mean() + 0.1 * (u * u * labels[:, :1]).mean()


@pytest.mark.parametrize("loss", ["csq", "callable"])
@pytest.mark.parametrize("distill", [0.0, 0.2])
def test_objective_pcgrad_head_gradient_is_naive_pcgrad(loss, distill):
    """W's gradient under weight_rule="pcgrad" = PCGrad over the K per-length gradients of W, each from its own
    autograd pass over the naive O_k = L_k + distill D_k; the layer input's gradient = the same combination.
    csq: the closed-form path; a callable: the batched-autograd path."""
    layer, x, labels = _problem(2)
    x.requires_grad_(True)
    base, kw = (_tug_of_war, {}) if loss == "callable" else ("csq", dict(num_classes=5, centers="per_length"))
    onehot = F.one_hot(labels, 5).double()
    obj = nf.NHLObjective(base, BITS, weight_rule="pcgrad", distill=distill, **kw)
    total = obj(layer(x), onehot if loss == "callable" else labels, torch.arange(16))
    gw, gx = torch.autograd.grad(total, (layer.weight, x))
    assert obj.last_conflicts.any()  # the case PCGrad changes
    plain = nf.NHLObjective(base, BITS, adaptive=False, distill=0.0, **kw)
    codes = layer(x)
    per = plain.base(codes.full, onehot, torch.arange(16))
    objs = [per[k] + (distill * sp_distill(codes[k], codes[k + 1].detach()) if distill and k < len(BITS) - 1 else 0)
            for k in range(len(BITS))]
    per_w = [torch.autograd.grad(o, layer.weight, retain_graph=True)[0] for o in objs]
    want = torch.tensor(naive_pcgrad([g.flatten().tolist() for g in per_w]), dtype=torch.float64)
    torch.testing.assert_close(gw.flatten(), want)
    w = obj.last_weights
    per_x = [torch.autograd.grad(o, x, retain_graph=True)[0] for o in objs]
    torch.testing.assert_close(gx, sum(wk * g for wk, g in zip(w, per_x)))


@pytest.mark.parametrize("loss", ["csq", "dpsh"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_backbone_bits_scales_the_backbone_gradient_only(loss, adaptive):
    """length_scale="backbone_bits": W's gradient and the total are those of "mean" (same weights); the layer
    input's gradient is that of sum_k w_k (s_k L_k + distill D_k), s_k = b_k / mean(b) (autograd, naive sum)."""
    layer, x, labels = _problem(4)
    x.requires_grad_(True)
    kw = dict(adaptive=adaptive, distill=0.1 if adaptive else 0.0, num_classes=5, num_train=16, weight_momentum=0.0)
    obj = nf.NHLObjective(loss, BITS, length_scale="backbone_bits", **kw)
    plain = nf.NHLObjective(loss, BITS, **kw)
    total = obj(layer(x), labels, torch.arange(16))
    gw, gx = torch.autograd.grad(total, (layer.weight, x))
    want_total = plain(layer(x), labels, torch.arange(16))
    want_w, = torch.autograd.grad(want_total, layer.weight)
    torch.testing.assert_close(total, want_total)
    torch.testing.assert_close(gw, want_w)
    torch.testing.assert_close(obj.last_weights, plain.last_weights)
    w = obj.last_weights
    codes = layer(x)
    per = plain.base(codes.full, F.one_hot(labels, 5).double(), torch.arange(16))
    s = torch.tensor(BITS, dtype=torch.float64)
    naive = (w * s / s.mean() * per).sum()
    if kw["distill"]:
        naive = naive + kw["distill"] * sum(w[k] * sp_distill(codes[k], codes[k + 1].detach())
                                            for k in range(len(BITS) - 1))
    want_x, = torch.autograd.grad(naive, x)
    torch.testing.assert_close(gx, want_x)
    # feature mode (no gradient below the head): exactly "mean"
    feat = nf.NHLObjective(loss, BITS, length_scale="backbone_bits", **kw)
    torch.testing.assert_close(feat(layer(x.detach()), labels, torch.arange(16)),
                               plain(layer(x.detach()), labels, torch.arange(16)))
    with pytest.raises(ValueError, match="needs the NestedCodes"):
        feat(list(layer(x)), labels, torch.arange(16), x=x)
