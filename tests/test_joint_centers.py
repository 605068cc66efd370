"""centers="joint": prefix distances against naive loops, the coding bound against exhaustive search, the
measured min-distance table, and the objective's default centres."""
import itertools

import numpy as np
import pytest
import torch

import nhl_fast as nf
from nhl_fast.losses import centers as C
from nhl_fast.losses import get_loss
from nhl_fast.losses import joint_centers as J

BITS = (8, 16, 32, 64, 128)


def naive_prefix_min(codes, bits):
    out = []
    for b in bits:
        best = b
        for i in range(len(codes)):
            for j in range(i + 1, len(codes)):
                best = min(best, sum(1 for t in range(b) if codes[i][t] != codes[j][t]))
        out.append(best)
    return out


def test_prefix_distances_match_naive_loops():
    g = torch.Generator().manual_seed(3)
    codes = torch.where(torch.rand(7, 13, generator=g) < 0.5, -1.0, 1.0)
    bits = (3, 8, 13)
    d = J.prefix_distances(codes.numpy(), bits)
    for k, b in enumerate(bits):
        for i, j in itertools.product(range(7), repeat=2):
            assert d[k, i, j] == int((codes[i, :b] != codes[j, :b]).sum())
    assert J.min_distances(codes, bits) == naive_prefix_min(codes.tolist(), bits)
    assert J.min_distances(codes[:1], bits) == list(bits)  # one centre: nothing to separate


@pytest.mark.parametrize("n,m_max", [(1, 2), (2, 4), (3, 6), (4, 6), (5, 4)])
def test_distance_bound_holds_against_exhaustive_search(n, m_max):
    words = list(itertools.product((0, 1), repeat=n))
    dist = np.array([[sum(a != b for a, b in zip(u, v)) for v in words] for u in words])
    for m in range(2, min(m_max, 2 ** n) + 1):
        best = max(min(dist[i, j] for i, j in itertools.combinations(s, 2))
                   for s in itertools.combinations(range(len(words)), m))
        assert best <= J.distance_bound(n, m), (n, m, best)


def test_distance_bound_known_values():
    assert [J.distance_bound(b, 100) for b in BITS] == [2, 6, 16, 32, 64]
    assert J.distance_bound(7, 2) == 7 and J.distance_bound(7, 16) == 3  # the Hamming [7, 4, 3] code is perfect
    with pytest.raises(ValueError, match="m >= 2"):
        J.distance_bound(8, 1)


@pytest.mark.parametrize("ncls,layout,want", [
    (10, "joint", [4, 8, 16, 32, 64]),
    (100, "per_length", [0, 2, 6, 32, 64]),
    (100, "nested", [2, 3, 6, 18, 44]),
    (100, "joint", [2, 4, 11, 26, 59]),
    (100, "bound", [2, 6, 16, 32, 64]),
])
def test_min_distance_table(ncls, layout, want):
    """The table in nhl_fast/losses/joint_centers.py, README and bench/README.md is what the code produces."""
    assert J.min_distance_table(ncls, BITS)[layout] == want


@pytest.mark.parametrize("ncls,bits", [(100, BITS), (20, BITS), (7, (3, 8, 13))])
def test_joint_centres_are_valid_and_beat_both_layouts_on_the_worst_length(ncls, bits):
    cen = J.joint_centers(ncls, bits, seed=1)
    assert cen.shape == (ncls, bits[-1]) and set(cen.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(cen, J.joint_centers(ncls, bits, seed=1))  # deterministic
    got = J.min_distances(cen, bits)
    assert got == naive_prefix_min(cen.tolist(), bits)
    bound = [J.distance_bound(b, ncls) for b in bits]
    assert all(d <= bd for d, bd in zip(got, bound))

    def worst(d):
        return min(v / bd for v, bd in zip(d, bound))

    g = torch.Generator().manual_seed(1)
    assert worst(got) >= worst(C.min_prefix_distance(C.per_length_centers(ncls, bits, g), bits))
    assert worst(got) >= worst(C.min_prefix_distance(C.nested_centers(ncls, bits, g), bits))


def test_energy_search_lowers_the_energy():
    def energy(c, a=16.0):
        d = J.prefix_distances(c, BITS).astype(np.float64)
        iu = np.triu_indices(c.shape[0], 1)
        return sum(np.exp(-a * d[k][iu] / b).sum() for k, b in enumerate(BITS))

    start = C.nested_centers(40, BITS, torch.Generator().manual_seed(0)).numpy()
    out = J.energy_search(start, BITS, sweeps=5)
    assert energy(out) < energy(start)
    assert (np.abs(out) == 1).all()


def test_joint_centres_in_the_losses_and_the_objective_default():
    m = get_loss("csq", (8, 16, 32), num_classes=30, centers="joint")
    assert m.nested and torch.equal(m.centers_for(0), m.centers_for(2)[:, :8])
    assert torch.equal(m.centers_table, J.joint_centers(30, (8, 16, 32), 0))
    obj = nf.NHLObjective("csq", (8, 16, 32), num_classes=30)
    assert torch.equal(obj.base.centers_table, m.centers_table)  # the default: joint
    ref = nf.NHLObjective("csq", (8, 16, 32), num_classes=30, faithful=True)
    assert not ref.base.nested  # faithful: the reference's per-length centres
    own = nf.NHLObjective("csq", (8, 16, 32), num_classes=30, centers="per_length")
    assert not own.base.nested
    for name in ("dpn", "mdsh", "shcir"):
        assert nf.NHLObjective(name, (8, 16, 32), num_classes=30).base.nested
    nf.NHLObjective("dpsh", (8, 16, 32), num_classes=30, num_train=10)  # no centres: nothing added
    with pytest.raises(ValueError, match="centers= applies to the centre losses"):
        nf.NHLObjective("dpsh", (8, 16, 32), num_classes=30, num_train=10, centers="joint")
    with pytest.raises(ValueError, match="centers must be one of"):
        nf.NHLObjective("csq", (8, 16, 32), num_classes=30, centers="best")
