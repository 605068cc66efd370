"""NHLObjective: exact adaptive weights vs K separate autograd passes, the faithful mode vs a
literal re-implementation of the reference training step, distillation vs the per-pair formula."""
import copy
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nhl_fast as nf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from reference_head import ReferenceHead, sp_distill  # noqa: E402  (the reference code's rendition, shared with bench/)

BITS = (4, 8, 13, 30)  # any increasing lengths; 13 and 30 are not powers of two
N_CLASS = 5


def alternating_center_loss(bits, seed=0, per_bit_sum=False):
    """A CSQ-like per-length loss (BCE of tanh(u) to a class center). The centers of
    consecutive lengths have opposite signs on their shared prefix, so the lengths'
    gradients conflict and the adaptive weights move away from 1. per_bit_sum sums the BCE
    over the bits (instead of averaging) so long codes' gradients are as large as short ones'."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N_CLASS, bits[-1], generator=g).sign()
    centers = {b: base[:, :b] * (-1) ** k for k, b in enumerate(bits)}

    def loss(u, labels, indices):
        target = (labels.to(u.dtype) @ centers[u.shape[1]].to(u.dtype) > 0).to(u.dtype)
        t = torch.tanh(u)
        bce = F.binary_cross_entropy(0.5 * (t + 1), target) * (u.shape[1] if per_bit_sum else 1)
        return bce + 1e-4 * (t.abs() - 1).pow(2).mean()

    return loss


def pairwise_loss(u, labels, indices):
    """A DSH-like pairwise loss: inner products of relaxed codes vs label similarity."""
    sim = (labels @ labels.T > 0).to(u.dtype) * 2 - 1
    t = torch.tanh(u)
    return ((t @ t.T) / u.shape[1] - sim).pow(2).mean()


def make_problem(seed, n_in=24, batch=12, dtype=torch.float64, relax="none"):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(10, n_in), nn.ReLU()).to(dtype)
    layer = nf.NestedHashLayer(n_in, BITS, relax=relax, dtype=dtype)
    x = torch.randn(batch, 10, dtype=dtype)
    labels = F.one_hot(torch.randint(0, N_CLASS, (batch,)), N_CLASS).to(dtype)
    return net, layer, x, labels, torch.arange(batch)


def naive_weights(per_length, weight, bits, beta):
    """The issue's formula with K separate autograd.grad passes down to W and Python loops."""
    k = len(bits)
    g = [torch.autograd.grad(o, weight, retain_graph=True)[0] for o in per_length]
    alpha = [[1.0] * k for _ in range(k)]
    for i in range(k - 1):
        tau = beta * (g[i][:bits[i]] ** 2).sum().item() / (k - 1)
        for j in range(i + 1, k):
            d = (g[i][:bits[i]] * g[j][:bits[i]]).sum().item()
            alpha[i][j] = tau / -d if d < -tau else 1.0
        for j in range(i + 2, k):
            alpha[i][j] = min(alpha[i][j], alpha[i][i + 1])
    w = [1.0]
    for j in range(1, k):
        p = 1.0
        for i in range(j):
            p *= alpha[i][j]
        w.append(p)
    return torch.tensor([k * v / sum(w) for v in w], dtype=torch.float64)


def naive_per_length(codes, fn, labels, idx, distill):
    out = []
    for k, u in enumerate(codes):
        o = fn(u, labels, idx)
        if distill and k < len(codes) - 1:
            o = o + distill * sp_distill(u, codes[k + 1].detach())
        out.append(o)
    return out


@pytest.mark.parametrize("relax", ["none", "tanh", "sign_ste"])
@pytest.mark.parametrize("distill", [0.0, 0.1])
@pytest.mark.parametrize("seed", [1, 2])
def test_adaptive_weights_match_k_separate_backward_passes(relax, distill, seed):
    net, layer, x, labels, idx = make_problem(seed, relax=relax)
    fn = alternating_center_loss(BITS, seed)
    beta = 0.2
    obj = nf.NHLObjective(fn, BITS, beta=beta, weight_rule="dominance", distill=distill)
    loss = obj(layer(net(x)), labels, idx)
    loss.backward()
    grads = [p.grad.clone() for p in (*net.parameters(), *layer.parameters())]

    net.zero_grad(), layer.zero_grad()
    per_length = naive_per_length(layer(net(x)), fn, labels, idx, distill)
    want = naive_weights(per_length, layer.weight, BITS, beta)
    torch.testing.assert_close(obj.last_weights, want, rtol=1e-6, atol=0)
    assert not obj.last_weights.requires_grad  # constants of the final backward
    assert not torch.allclose(want, torch.ones_like(want))  # conflicts happened: the test can fail
    assert bool(obj.last_conflicts.any())
    # the final loss and its gradient: the weights are constants of the backward
    naive_total = sum(w * o for w, o in zip(want.tolist(), per_length))
    torch.testing.assert_close(loss, naive_total)
    naive_total.backward()
    for got, ref in zip(grads, (*net.parameters(), *layer.parameters())):
        torch.testing.assert_close(got, ref.grad)


def test_adaptive_weights_direct_path_for_large_batches():
    # B > sum(b_k) takes the g_k = G_k^T X branch instead of the B x B Gram
    net, layer, x, labels, idx = make_problem(1, n_in=6, batch=sum(BITS) + 3)
    fn = alternating_center_loss(BITS, 1)
    obj = nf.NHLObjective(fn, BITS, beta=0.5, weight_rule="dominance", distill=0.1)
    obj(layer(net(x)), labels, idx)
    want = naive_weights(naive_per_length(layer(net(x)), fn, labels, idx, 0.1), layer.weight, BITS, 0.5)
    torch.testing.assert_close(obj.last_weights, want, rtol=1e-6, atol=0)


def test_batched_grad_falls_back_when_vmap_cannot_batch():
    class NoVmap(torch.autograd.Function):  # a backward that is_grads_batched cannot run
        @staticmethod
        def forward(ctx, u):
            return u * 1.0

        @staticmethod
        def backward(ctx, g):
            return g * float(g.abs().max() >= 0)  # .item() in a backward: vmap refuses it

    fn = alternating_center_loss(BITS, 0)
    net, layer, x, labels, idx = make_problem(0)
    obj = nf.NHLObjective(lambda u, y, i: fn(NoVmap.apply(u), y, i), BITS, beta=0.5, distill=0.1,
                          weight_rule="dominance")
    with pytest.warns(RuntimeWarning, match=r"4 separate backward passes.*") as record:  # says so, once
        obj(layer(net(x)), labels, idx)
        obj(layer(net(x)), labels, idx)
    assert len([w for w in record if "separate backward" in str(w.message)]) == 1
    assert "item" in str(record[0].message)  # names why
    assert obj._batched_grad is False
    want = naive_weights(naive_per_length(layer(net(x)), fn, labels, idx, 0.1), layer.weight, BITS, 0.5)
    torch.testing.assert_close(obj.last_weights, want, rtol=1e-6, atol=0)



def test_out_of_memory_in_the_batched_grads_propagates():
    """An out-of-memory error is not a loss vmap cannot batch: it reaches the caller, and the objective keeps
    its batched path (no silent switch to K passes)."""
    class OutOfMemory(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u):
            return u * 1.0

        @staticmethod
        def backward(ctx, g):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    fn = alternating_center_loss(BITS, 0)
    net, layer, x, labels, idx = make_problem(0)
    obj = nf.NHLObjective(lambda u, y, i: fn(OutOfMemory.apply(u), y, i), BITS, beta=0.5, distill=0.1,
                          weight_rule="dominance")
    with pytest.raises(torch.OutOfMemoryError, match="out of memory"):
        obj(layer(net(x)), labels, idx)
    assert obj._batched_grad is True


def test_non_adaptive_objective_is_plain_sum():
    net, layer, x, labels, idx = make_problem(3)
    obj = nf.NHLObjective(pairwise_loss, BITS, adaptive=False, distill=0.2)
    codes = layer(net(x))
    loss = obj(codes, labels, idx)
    want = sum(naive_per_length(codes, pairwise_loss, labels, idx, 0.2))
    torch.testing.assert_close(loss, want)
    assert torch.equal(obj.last_weights, torch.ones(len(BITS), dtype=torch.float64))


def test_plain_list_with_input_matches_nested_codes():
    # a reference-style head (K separate matmuls) + x= gives the same weights as the fused layer
    net, layer, x, labels, idx = make_problem(0)
    fn = alternating_center_loss(BITS, 0)
    obj = nf.NHLObjective(fn, BITS, beta=0.5, weight_rule="dominance", distill=0.1)
    obj(layer(net(x)), labels, idx)
    fused = obj.last_weights
    feat = net(x)
    plain = [feat @ layer.weight[:b].T + layer.bias[:b] for b in BITS]
    obj(plain, labels, idx, x=feat)
    torch.testing.assert_close(obj.last_weights, fused, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="layer input"):
        obj(plain, labels, idx)


# ------------------------------------------------------------- the reference's step, literally


def reference_step(net, head, criteria, image, label, ind, distill, distill_weight, in_features=2048):
    """model_grand_sd.py's RML_E + analysis step with its loops, .item() calls and optimizer grads."""
    bits = head.bits
    k = len(bits)
    optimizer = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.1)
    optimizer.zero_grad()
    feature = net(image)
    outputs = head(feature.detach())
    w_grad = []
    for idx, (criterion, output) in enumerate(zip(criteria, outputs)):
        obj = criterion(output, label, ind)
        if distill and idx < k - 1:
            obj = obj + distill_weight * sp_distill(output, outputs[idx + 1].detach())
        optimizer.zero_grad(set_to_none=True)
        obj.backward(retain_graph=True)
        w_grad.append(optimizer.param_groups[0]["params"][-2].grad.flatten())
    grad_dots = [[] for _ in bits[:-1]]
    grad_norm = [[] for _ in bits[:-1]]
    for idx, shortest in enumerate(bits[:-1]):
        n = in_features * shortest
        for wgh in w_grad[idx + 1:]:
            grad_dots[idx].append(torch.dot(w_grad[idx][:n], wgh[:n]).item())
        for wgh in w_grad:
            grad_norm[idx].append(wgh[:n].norm().item())
    alpha = [[1.0] for _ in bits[:-1]]
    beta = 1.0
    for idx, (dots, norms) in enumerate(zip(grad_dots, grad_norm)):
        short_norm = norms[0]
        for d in dots:
            threshold = beta * short_norm * short_norm / (k - 1)
            alpha[idx].append(threshold / (-d) if d < 0 and -d > threshold else 1.0)
    for i, alp in enumerate(alpha):
        anchor = alp[1]
        for j, al in enumerate(alp[2:]):
            if al > anchor:
                alpha[i][j + 2] = anchor
    ws = [1.0]
    for idx in range(k - 1):
        w = 1.0
        for jdx in range(idx + 1):
            w = w * alpha[jdx][idx + 1 - jdx]
        ws.append(w)
    ws = [v * k / sum(ws) for v in ws]
    outputs = head(feature)
    if distill:
        distill_losses = [sp_distill(outputs[i], outputs[i + 1].detach()) for i in range(k - 1)]
        losses = [w * (c(o, label, ind) + distill_weight * d) for w, c, o, d in zip(ws, criteria, outputs, distill_losses)]
    else:
        losses = [w * c(o, label, ind) for w, c, o in zip(ws, criteria, outputs)]
    total = torch.stack(losses).sum()
    total.backward()
    return ws, total.detach()


@pytest.mark.parametrize("distill", [0.0, 0.1])
def test_faithful_mode_matches_literal_reference_step(distill):
    bits = (8, 16, 32)
    torch.manual_seed(11)
    net = nn.Sequential(nn.Linear(10, 2048), nn.ReLU()).double()
    head = ReferenceHead(2048, bits).double()
    x = torch.randn(8, 10, dtype=torch.float64)
    labels = F.one_hot(torch.randint(0, N_CLASS, (8,)), N_CLASS).double()
    idx = torch.arange(8)
    fn = alternating_center_loss(bits, 4, per_bit_sum=True)
    ours_net = copy.deepcopy(net)
    layer = nf.NestedHashLayer(2048, bits, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(head.hash_layer.weight)
        layer.bias.copy_(head.hash_layer.bias)

    ws, ref_total = reference_step(net, head, [fn] * len(bits), x, labels, idx, distill > 0, distill)
    obj = nf.NHLObjective(fn, bits, beta=1.0, distill=distill, faithful=True)
    loss = obj(layer(ours_net(x)), labels, idx)
    loss.backward()

    assert ws != [1.0] * len(bits)  # conflicts: the quirks matter for this step
    torch.testing.assert_close(obj.last_weights, torch.tensor(ws, dtype=torch.float64), rtol=1e-9, atol=0)
    torch.testing.assert_close(loss, ref_total)
    torch.testing.assert_close(layer.weight.grad, head.hash_layer.weight.grad)
    torch.testing.assert_close(layer.bias.grad, head.hash_layer.bias.grad)
    for ours, ref in zip(ours_net.parameters(), net.parameters()):
        torch.testing.assert_close(ours.grad, ref.grad)
    # and the corrected (default) objective is a different step on the same data
    layer.zero_grad()
    corrected = nf.NHLObjective(fn, bits, beta=1.0, weight_rule="dominance", distill=distill)
    corrected(layer(ours_net(x)), labels, idx).backward()
    assert not torch.allclose(corrected.last_weights, obj.last_weights, rtol=1e-3)
    assert not torch.allclose(layer.weight.grad, head.hash_layer.weight.grad, rtol=1e-3)


def test_whole_step_under_torch_compile():
    net, layer, x, labels, idx = make_problem(0, dtype=torch.float32)
    fn = alternating_center_loss(BITS, 0)
    obj = nf.NHLObjective(fn, BITS, beta=0.5, weight_rule="dominance", distill=0.1)
    params = [*net.parameters(), *layer.parameters()]

    def step():
        for p in params:
            p.grad = None
        loss = obj(layer(net(x)), labels, idx)
        loss.backward()
        return loss.detach(), obj.last_weights, [p.grad.clone() for p in params]

    eager = step()
    # aot_eager: Dynamo + AOTAutograd trace the whole step (layer fakes, autograd formula, the graph
    # break at the batched autograd.grad) without Inductor's C++ build, which takes a minute on 2 cores;
    # Inductor itself compiles the layer in tests/test_layer.py.
    compiled = torch.compile(step, backend="aot_eager")()
    torch.testing.assert_close(compiled[0], eager[0])
    torch.testing.assert_close(compiled[1], eager[1])
    for a, b in zip(compiled[2], eager[2]):
        torch.testing.assert_close(a, b)


def test_objective_call_under_torch_compile_matches_eager():
    net, layer, x, labels, idx = make_problem(1, dtype=torch.float32)
    obj = nf.NHLObjective(alternating_center_loss(BITS, 1), BITS, beta=0.5, weight_rule="dominance", distill=0.1)
    codes = layer(net(x))
    want = obj(codes, labels, idx)
    w_eager = obj.last_weights
    got = torch.compile(obj, backend="aot_eager")(codes, labels, idx)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(obj.last_weights, w_eager)


def test_bad_arguments():
    with pytest.raises(TypeError, match="base_loss"):
        nf.NHLObjective(3, BITS)
    with pytest.raises(ValueError, match="unknown base_loss"):
        nf.NHLObjective("no-such-loss", BITS)
    with pytest.raises(ValueError, match="beta"):
        nf.NHLObjective(pairwise_loss, BITS, beta=0)
    with pytest.raises(ValueError, match="distill"):
        nf.NHLObjective(pairwise_loss, BITS, distill=-1)
    with pytest.raises(ValueError, match="strictly increasing"):
        nf.NHLObjective(pairwise_loss, (8, 4))
    with pytest.raises(ValueError, match="bit_list"):
        nf.NHLObjective(nf.losses.PerLengthLoss(pairwise_loss, (8, 16)), BITS)
    obj = nf.NHLObjective(pairwise_loss, BITS)
    net, layer, x, labels, idx = make_problem(0)
    codes = layer(net(x))
    with pytest.raises(ValueError, match="codes"):
        obj(codes[:2], labels, idx)
    with pytest.raises(ValueError, match=r"\(B, b_k\)"):
        obj([c[:, :-1] for c in codes], labels, idx)
    with pytest.raises(TypeError, match="u_list"):
        obj(codes.full, labels, idx)

    class WrongShape(nf.losses.NestedLoss):
        def forward(self, u, labels, indices):
            return u.sum(0)

    with pytest.raises(ValueError, match="shape"):
        nf.NHLObjective(WrongShape(BITS), BITS)(codes, labels, idx)


def test_no_grad_evaluation_keeps_plain_sum():
    net, layer, x, labels, idx = make_problem(0)
    obj = nf.NHLObjective(alternating_center_loss(BITS, 0), BITS, weight_rule="dominance", distill=0.1)
    with torch.no_grad():
        loss = obj(layer(net(x)), labels, idx)
    want = sum(naive_per_length(layer(net(x)), alternating_center_loss(BITS, 0), labels, idx, 0.1))
    torch.testing.assert_close(loss, want.detach())


@pytest.mark.parametrize("name", ["csq", "dsh"])
@pytest.mark.parametrize("faithful", [False, True])
def test_registered_losses_weights_match_k_separate_backward_passes(name, faithful):
    beta, k = 0.01, len(BITS)
    net, layer, x, labels, idx = make_problem(2)
    centers = {"centers": "per_length"} if name == "csq" else {}  # the reference's centres conflict (joint: not)
    obj = nf.NHLObjective(name, BITS, beta=beta, weight_rule="dominance", distill=0.1, faithful=faithful,
                          num_classes=N_CLASS, num_train=64, **centers).double()
    obj(layer(net(x)), labels, idx + 7)
    codes = layer(net(x))
    base = obj.base(codes.full, labels, idx + 7)  # a bank loss rewrites the same rows: same state
    per_length = [base[i] + (0.1 * sp_distill(codes[i], codes[i + 1].detach()) if i < k - 1 else 0)
                  for i in range(k)]
    g = [torch.autograd.grad(o, layer.weight, retain_graph=True)[0] for o in per_length]
    dots = torch.tensor([[(g[i][:BITS[i]] * g[j][:BITS[i]]).sum().item() for j in range(k)] for i in range(k)],
                        dtype=torch.float64)
    upper = torch.ones(k, k, dtype=torch.bool).triu(1)
    torch.testing.assert_close(obj.last_grad_dots[upper], dots[upper], rtol=1e-6, atol=0)
    # the weights: faithful takes every tau from the shortest length's gradient norm (quirk 1)
    alpha = torch.ones(k, k, dtype=torch.float64)
    for i in range(k - 1):
        norm2 = (g[0][:BITS[i]] ** 2).sum() if faithful else (g[i][:BITS[i]] ** 2).sum()
        tau = beta * norm2 / (k - 1)
        for j in range(i + 1, k):
            alpha[i, j] = tau / -dots[i, j] if dots[i, j] < -tau else 1.0
            if j > i + 1:
                alpha[i, j] = min(alpha[i, j], alpha[i, i + 1])
    w = alpha.prod(0)
    torch.testing.assert_close(obj.last_weights, k * w / w.sum(), rtol=1e-6, atol=0)
    if name == "csq":  # CSQ's lengths conflict on this batch (DSH's agree: weights 1, dots checked above)
        assert bool(obj.last_conflicts.any())


def test_step_under_cpu_autocast():
    net, layer, x, labels, idx = make_problem(1, dtype=torch.float32, relax="tanh")
    obj = nf.NHLObjective("csq", BITS, weight_rule="dominance", distill=0.1, num_classes=N_CLASS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = layer(net(x))
        loss = obj(codes, labels, idx)
    assert codes.full.dtype == torch.bfloat16
    loss.backward()
    assert obj.last_weights.dtype == torch.float32 and torch.isfinite(obj.last_weights).all()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
    # the weights agree with the float32 step up to bf16 rounding
    ref = nf.NHLObjective("csq", BITS, weight_rule="dominance", distill=0.1, num_classes=N_CLASS)
    ref(layer(net(x)), labels, idx)
    torch.testing.assert_close(obj.last_weights, ref.last_weights, rtol=0.1, atol=0.05)


@pytest.mark.parametrize("centers", ["per_length", "nested"])
@pytest.mark.parametrize("relax", ["none", "tanh"])
def test_closed_form_csq_grads_match_autograd(centers, relax):
    """CSQ's length_grads (the objective's fast path) == autograd through the loss: losses, dL_k/du,
    and a whole objective step (weights, dots, gradients of W, b and the backbone) == the generic path."""
    net, layer, x, labels, idx = make_problem(3, relax=relax)
    loss = nf.losses.get_loss("csq", BITS, num_classes=N_CLASS, centers=centers).double()
    u = layer(net(x)).full.detach().requires_grad_()
    u.data[0, :3] = 0.0  # sign(0): autograd's abs gives 0 there
    want = loss(u, labels)
    got, packed = loss.length_grads(u.detach(), labels)
    torch.testing.assert_close(got, want.detach())
    lo = 0
    for k, b in enumerate(BITS):  # packed: dL_k/du[:, :b_k] side by side; L_k depends on nothing past b_k
        (auto,) = torch.autograd.grad(want[k], u, retain_graph=True)
        torch.testing.assert_close(packed[:, lo:lo + b], auto[:, :b])
        assert torch.count_nonzero(auto[:, b:]) == 0
        lo += b
    results = []
    for closed in (True, False):
        obj = nf.NHLObjective("csq", BITS, beta=0.01, weight_rule="dominance", distill=0.1, num_classes=N_CLASS,
                              centers=centers).double()
        obj.closed_form = closed
        net.zero_grad()
        layer.zero_grad()
        total = obj(layer(net(x)), labels, idx)
        total.backward()
        results.append((total.detach(), obj.last_weights, obj.last_grad_dots, layer.weight.grad.clone(),
                        layer.bias.grad.clone(), net[0].weight.grad.clone()))
    for fast, generic in zip(*results):
        torch.testing.assert_close(fast, generic, rtol=1e-9, atol=1e-12)
