"""Views for unsupervised training (nhl_fast.augment) and the classic baselines (LSH, ITQ)."""
import numpy as np
import pytest
import torch

import nhl_fast as nf
from nhl_fast.augment import TwoViews, feature_view, image_view
from nhl_fast.baselines import ITQ, LSH


def _images(n=6, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_image_view_identity_settings_return_the_input():
    x = _images()
    out = image_view(x, degrees=0, translate=0, scale=(1, 1), crop=1, noise=0)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_image_view_matches_per_sample_affine():
    """The batched transform equals one affine per sample, drawn in the documented order."""
    x = _images(3)
    g = torch.Generator().manual_seed(5)
    got = image_view(x, degrees=30, translate=0.1, scale=(0.8, 1.2), crop=0.7, noise=0.0, generator=g)
    g = torch.Generator().manual_seed(5)
    n = 3
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)
    ang = (u(-30, 30) * np.pi / 180).tolist()
    side_t = u(0.7, 1.0) / u(0.8, 1.2)
    room = (1 - side_t).clamp_min(0)
    tx = (u(-1, 1) * room + u(-0.2, 0.2)).tolist()
    ty = (u(-1, 1) * room + u(-0.2, 0.2)).tolist()
    side = side_t.tolist()
    for i in range(n):  # bilinear sampling of pixel centres, border padding, one image at a time
        th = torch.tensor([[side[i] * np.cos(ang[i]), -side[i] * np.sin(ang[i]), tx[i]],
                           [side[i] * np.sin(ang[i]), side[i] * np.cos(ang[i]), ty[i]]], dtype=torch.float32)
        want = torch.zeros(8, 8)
        for r in range(8):
            for c in range(8):
                px, py = (2 * c + 1) / 8 - 1, (2 * r + 1) / 8 - 1
                sx = float(th[0, 0] * px + th[0, 1] * py + th[0, 2])
                sy = float(th[1, 0] * px + th[1, 1] * py + th[1, 2])
                fx = min(max(((sx + 1) * 8 - 1) / 2, 0.0), 7.0)
                fy = min(max(((sy + 1) * 8 - 1) / 2, 0.0), 7.0)
                x0, y0 = int(np.floor(fx)), int(np.floor(fy))
                x1, y1 = min(x0 + 1, 7), min(y0 + 1, 7)
                wx, wy = fx - x0, fy - y0
                img = x[i, 0]
                want[r, c] = ((1 - wx) * (1 - wy) * img[y0, x0] + wx * (1 - wy) * img[y0, x1]
                              + (1 - wx) * wy * img[y1, x0] + wx * wy * img[y1, x1])
        torch.testing.assert_close(got[i, 0], want, atol=1e-5, rtol=0)


def test_views_reproducible_and_independent():
    x = _images()
    a = image_view(x, generator=torch.Generator().manual_seed(1))
    b = image_view(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    v1, v2 = TwoViews("image", generator=torch.Generator().manual_seed(2))(x)
    assert v1.shape == x.shape and not torch.equal(v1, v2)
    f = torch.randn(50, 7)
    out = feature_view(f, noise=0.0, dropout=0.5, generator=torch.Generator().manual_seed(0))
    zeroed = out == 0
    assert 0.3 < zeroed.float().mean() < 0.7 and torch.equal(out[~zeroed], f[~zeroed])
    noisy = feature_view(f, noise=0.5, dropout=0.0, generator=torch.Generator().manual_seed(0))
    ratio = ((noisy - f).std(0) / f.std(0)).mean()
    assert 0.4 < float(ratio) < 0.6
    a, b = TwoViews("none")(f)
    assert a is f and b is f


def test_views_bad_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        image_view(torch.randn(4, 64))
    with pytest.raises(ValueError, match="crop"):
        image_view(_images(), crop=0)
    with pytest.raises(ValueError, match="scale"):
        image_view(_images(), scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="dropout"):
        feature_view(torch.randn(4, 3), dropout=1.0)
    with pytest.raises(ValueError, match="noise"):
        TwoViews("features", noise=-1)
    with pytest.raises(ValueError, match="kind"):
        TwoViews("audio")
    with pytest.raises(TypeError, match="x must be"):
        image_view(None)


def _clusters(n=300, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(4, d, generator=g)
    y = torch.arange(n) % 4
    return centres[y] + torch.randn(n, d, generator=g), y


def test_itq_rotation_orthogonal_and_loss_decreases():
    x, _ = _clusters()
    itq = ITQ(8, iterations=30, seed=3).fit(x)
    r = itq.rotation
    torch.testing.assert_close(r.T @ r, torch.eye(8, dtype=r.dtype), atol=1e-10, rtol=0)
    losses = np.array(itq.losses)
    assert (np.diff(losses) <= 1e-9).all() and losses[-1] < losses[0]
    # pca columns: orthonormal, leading eigenvectors of the covariance
    torch.testing.assert_close(itq.pca.T @ itq.pca, torch.eye(8, dtype=torch.float64), atol=1e-10, rtol=0)
    # the codes are the signs of the rotated PCA projection, in the engine's layout
    v = (x.double() - x.double().mean(0)) @ itq.pca @ r
    assert torch.equal(itq.encode(x), nf.pack(v.float()))


def test_itq_beats_random_rotation_loss_and_retrieves():
    x, y = _clusters()
    itq = ITQ(8, iterations=50).fit(x)
    codes = itq.encode(x)
    m = nf.mean_average_precision(codes, codes, y, y, bits=(8,))
    assert float(m[0]) > 0.9  # well separated clusters


def test_lsh_reproducible_by_seed_and_nested():
    x, y = _clusters()
    a, b, c = LSH(70, seed=1).fit(x), LSH(70, seed=1).fit(x), LSH(70, seed=2).fit(x)
    assert torch.equal(a.encode(x), b.encode(x)) and not torch.equal(a.encode(x), c.encode(x))
    short = LSH(16, seed=1).fit(x)  # the first 16 projections of the 70-bit model
    assert torch.equal(nf.unpack(short.encode(x), 16), nf.unpack(a.encode(x), 16))
    assert a.encode(x).shape == (300, 2)
    xc = x - x.mean(0)
    assert torch.equal(a.encode(x), nf.pack(xc @ a.projection))


def test_baselines_bad_input():
    x, _ = _clusters(d=6)
    with pytest.raises(ValueError, match="at most as many bits"):
        ITQ(8).fit(x)
    with pytest.raises(ValueError, match="call fit"):
        ITQ(4).encode(x)
    with pytest.raises(ValueError, match="features"):
        LSH(4).fit(x).encode(torch.randn(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        LSH(4).fit(torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="bits"):
        LSH(0)
