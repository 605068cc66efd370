"""NHLObjective with unsupervised (two-view) base losses: adaptive weights and cascade distillation
exactly as for the supervised losses, against K separate autograd.grad passes over both views."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nhl_fast as nf
from nhl_fast.losses import UnsupervisedNestedLoss, get_loss
from test_objective import naive_weights
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from reference_head import sp_distill  # noqa: E402  (the reference code's rendition, shared with bench/)

BITS = (4, 8, 13, 30)


def two_views(seed, n_in=24, batch=10, relax="none", dtype=torch.float64):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(10, n_in), nn.Tanh()).to(dtype)
    layer = nf.NestedHashLayer(n_in, BITS, relax=relax, dtype=dtype)
    x = torch.randn(batch, 10, dtype=dtype)
    return net, layer, x, x + 0.3 * torch.randn_like(x)


def naive_per_length(make, c1, c2, f1, f2, distill):
    """O_k = L_k (a single-length loss make((b_k,)) on the prefixes) + distill * D_k on the 2B stacked codes."""
    out = []
    for k, b in enumerate(BITS):
        o = make((b,))(c1[k], c2[k], z=f1, z_other=f2)[0]
        if distill and k < len(BITS) - 1:
            o = o + distill * sp_distill(torch.cat([c1[k], c2[k]]), torch.cat([c1[k + 1], c2[k + 1]]).detach())
        out.append(o)
    return out


def check_against_k_passes(obj, make, relax, beta, distill):
    """One objective step vs K separate autograd.grad passes: weights, total and every parameter's gradient."""
    net, layer, x1, x2 = two_views(4, relax=relax)
    f1, f2 = net(x1), net(x2)
    loss = obj(layer(f1), u_other=layer(f2), z=f1, z_other=f2)
    loss.backward()
    params = (*net.parameters(), *layer.parameters())
    grads = [p.grad.clone() for p in params]

    net.zero_grad(), layer.zero_grad()
    f1, f2 = net(x1), net(x2)
    per_length = naive_per_length(make, layer(f1), layer(f2), f1, f2, distill)
    want = naive_weights(per_length, layer.weight, BITS, beta)
    torch.testing.assert_close(obj.last_weights, want, rtol=1e-6, atol=0)
    naive_total = sum(w * o for w, o in zip(want.tolist(), per_length))
    torch.testing.assert_close(loss, naive_total)
    naive_total.backward()
    for got, ref in zip(grads, params):
        torch.testing.assert_close(got, ref.grad)
    return want


class Conflicting(UnsupervisedNestedLoss):
    """Lengths that pull apart: the length at position k of BITS matches the cross-view code cosines
    to (-1)^k times the latents' cosines (not detached: the latent path's gradient reaches the
    backbone too)."""

    name = "conflicting"

    def forward(self, u, u_other, indices=None, *, z=None, z_other=None):
        self.check_views(u, u_other, z, z_other)
        out = []
        for b in self.bit_list:
            a, c = torch.tanh(u[:, :b]), torch.tanh(u_other[:, :b])
            cos = F.normalize(a, dim=1) @ F.normalize(c, dim=1).T
            t = F.normalize(z, dim=1) @ F.normalize(z_other, dim=1).T
            out.append(((cos - (-1) ** BITS.index(b) * t) ** 2).mean())
        return torch.stack(out)


@pytest.mark.parametrize("relax", ["none", "tanh", "sign_ste"])
@pytest.mark.parametrize("distill", [0.0, 0.1])
def test_conflicting_lengths_weights_match_k_separate_backward_passes(relax, distill):
    obj = nf.NHLObjective(Conflicting(BITS), BITS, beta=0.2, distill=distill, weight_rule="dominance")  # the paper's rule
    want = check_against_k_passes(obj, Conflicting, relax, 0.2, distill)
    assert not torch.allclose(want, torch.ones_like(want))  # the lengths conflict: this test can fail
    assert bool(obj.last_conflicts.any())


CASES = [("greedyhash", {}, "none"), ("bihalf", {}, "none"), ("cibhash", {"stochastic": False}, "none"),
         ("greedyhash", {}, "tanh")]


@pytest.mark.parametrize("name,kw,relax", CASES)
@pytest.mark.parametrize("distill", [0.0, 0.1])
def test_registered_losses_weights_match_k_separate_backward_passes(name, kw, relax, distill):
    obj = nf.NHLObjective(name, BITS, beta=0.05, distill=distill, **kw)
    check_against_k_passes(obj, lambda bits: get_loss(name, bits, **kw), relax, 0.05, distill)


def test_plain_lists_with_inputs_match_nested_codes():
    net, layer, x1, x2 = two_views(1)
    f1, f2 = net(x1).detach(), net(x2).detach()
    obj = nf.NHLObjective("greedyhash", BITS, beta=0.05)
    want = obj(layer(f1), u_other=layer(f2), z=f1, z_other=f2)
    w_nested = obj.last_weights
    u1, u2 = (f @ layer.weight.T + layer.bias for f in (f1, f2))
    got = obj([u1[:, :b] for b in BITS], u_other=[u2[:, :b] for b in BITS], z=f1, z_other=f2, x=f1, x_other=f2)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(obj.last_weights, w_nested)


def test_cibhash_memory_through_the_objective():
    net, layer, x1, x2 = two_views(2)
    obj = nf.NHLObjective("cibhash", BITS, memory=16, warmup_epochs=1)
    for _ in range(2):
        obj(layer(net(x1)), u_other=layer(net(x2))).backward()
    assert int(obj.base.memory.filled) == 16 and not obj.base.memory.ready
    obj.base.set_epoch(1)
    assert obj.base.memory.ready
    loss = obj(layer(net(x1)), u_other=layer(net(x2)))
    assert torch.isfinite(loss)


def test_bad_input():
    net, layer, x1, x2 = two_views(3)
    f1, f2 = net(x1), net(x2)
    c1, c2 = layer(f1), layer(f2)
    obj = nf.NHLObjective("greedyhash", BITS)
    with pytest.raises(TypeError, match="no labels"):
        obj(c1, torch.arange(10), u_other=c2, z=f1, z_other=f2)
    with pytest.raises(TypeError, match="second view"):
        obj(c1, z=f1, z_other=f2)
    with pytest.raises(ValueError, match="one shape"):
        obj(c1, u_other=layer(f2[:6]), z=f1, z_other=f2)
    other = nf.NestedHashLayer(24, BITS, dtype=torch.float64)
    with pytest.raises(ValueError, match="same NestedHashLayer"):
        obj(c1, u_other=other(f2), z=f1, z_other=f2)
    with pytest.raises(ValueError, match="needs the latents"):
        obj(c1, u_other=c2)
    with pytest.raises(ValueError, match="x= and x_other="):
        obj([c1[-1][:, :b] for b in BITS], u_other=[c2[-1][:, :b] for b in BITS], z=f1, z_other=f2, x=f1)
    sup = nf.NHLObjective("csq", BITS, num_classes=3)
    with pytest.raises(TypeError, match="supervised"):
        sup(c1, u_other=c2)
    with pytest.raises(TypeError, match="supervised"):
        sup(c1, None)
