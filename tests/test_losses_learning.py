"""Every registered loss, inside NHLObjective (adaptive weights + distillation), trains a
NestedHashLayer on a small class-clustered problem and improves mAP at every length.

The class signal lives in a few input directions under larger isotropic noise, so a random
projection retrieves poorly and a learned one well. mAP here is a small in-test Hamming-ranking
mAP (ties by database index), independent of nhl_fast.metrics.
"""
import pytest
import torch

import nhl_fast.losses as L
from nhl_fast.layers import NestedHashLayer
from nhl_fast.objective import NHLObjective

BITS = (8, 16, 32)
NCLS, DIM, NTRAIN, NQUERY = 4, 32, 256, 64


def make_data(gen):
    means = torch.zeros(NCLS, DIM)
    means[:, :NCLS] = 4.0 * torch.eye(NCLS)           # signal in 4 directions
    yt = torch.arange(NTRAIN) % NCLS
    yq = torch.arange(NQUERY) % NCLS
    xt = means[yt] + 1.5 * torch.randn(NTRAIN, DIM, generator=gen)
    xq = means[yq] + 1.5 * torch.randn(NQUERY, DIM, generator=gen)
    return xt, yt, xq, yq


def hamming_map(q, db, yq, ydb):
    """Mean AP of sign-code Hamming ranking over the whole database (stable: ties by index)."""
    d = (q.shape[1] - q @ db.T) / 2
    order = torch.sort(d, dim=1, stable=True).indices
    rel = (yq[:, None] == ydb[order]).double()
    hits = rel.cumsum(1)
    prec = hits / torch.arange(1, db.shape[0] + 1)
    return ((prec * rel).sum(1) / rel.sum(1).clamp(min=1)).mean().item()


def maps(layer, xt, yt, xq, yq):
    with torch.no_grad():
        zt = torch.where(layer(xt)[-1] > 0, 1.0, -1.0).double()
        zq = torch.where(layer(xq)[-1] > 0, 1.0, -1.0).double()
    return [hamming_map(zq[:, :b], zt[:, :b], yq, yt) for b in BITS]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", [n for n in L.available() if not getattr(L._REGISTRY[n], "unsupervised", False)])
def test_loss_trains_layer_at_every_length(name):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    xt, yt, xq, yq = make_data(gen)
    layer = NestedHashLayer(DIM, bit_list=BITS, relax="none")
    obj = NHLObjective(name, bit_list=BITS, adaptive=True, distill=0.1, num_classes=NCLS, num_train=NTRAIN)
    before = maps(layer, xt, yt, xq, yq)
    opt = torch.optim.Adam(layer.parameters(), lr=3e-3)
    for step in range(300):
        idx = torch.randint(0, NTRAIN, (32,), generator=gen)
        loss = obj(layer(xt[idx]), yt[idx], idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = maps(layer, xt, yt, xq, yq)
    assert torch.isfinite(obj.last_losses).all()
    for b, m0, m1 in zip(BITS, before, after):
        assert m1 > m0 + 0.2 and m1 > 0.6, f"{name} {b} bits: mAP {m0:.3f} -> {m1:.3f}"
