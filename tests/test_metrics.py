"""nhl_fast.metrics against independent math: the classic per-query loop with a stable sort,
brute force over every order of tied items, Monte-Carlo over random tie orders; every backend
against the reference; opcheck; bad input."""
import itertools

import numpy as np
import pytest
import torch

import nhl_fast as nf
from nhl_fast import reference
from nhl_fast.metrics import _pack_rows
from conftest import backend_params

BITS = (3, 8, 16, 64, 100)


# ---------------------------------------------------------------- independent re-implementations


def signs_and_codes(n, b, gen, centres=None, flip=0.3):
    """+-1 codes (n, b) (class-clustered when centres is given, so ties and relevance correlate)."""
    if centres is None:
        s = torch.where(torch.rand(n, b, generator=gen) < 0.5, -1.0, 1.0)
        return s, None
    y = torch.randint(0, centres.shape[0], (n,), generator=gen)
    s = centres[y] * torch.where(torch.rand(n, b, generator=gen) < flip, -1.0, 1.0)
    return s, y


def distances(qs, dbs, b):
    return ((b - qs[:, :b].double() @ dbs[:, :b].double().T) / 2).round().long().numpy()


def classic_ap(dist_row, rel_row, topk):
    """The DeepHash per-query loop with a STABLE sort (ties by database index)."""
    order = np.argsort(dist_row, kind="stable")
    kept = rel_row[order][:topk]
    found = int(kept.sum())
    if found == 0:
        return 0.0
    ranks = np.flatnonzero(kept) + 1.0
    return float(np.mean(np.arange(1, found + 1) / ranks))


def ap_of_order(rel_sorted, topk):
    kept = rel_sorted[:topk]
    found = kept.sum()
    if found == 0:
        return 0.0
    return float((np.cumsum(kept) / np.arange(1, len(kept) + 1) * kept).sum() / found)


def tie_orders(dist_row):
    """Every ranking consistent with the distances (all permutations inside each tie group)."""
    groups = [np.flatnonzero(dist_row == d) for d in np.unique(dist_row)]
    for perms in itertools.product(*[itertools.permutations(g) for g in groups]):
        yield np.concatenate(perms)


def relevance_np(ql, dl):
    if ql.dim() == 1:
        return (ql[:, None] == dl[None, :]).numpy()
    return ((ql.double() @ dl.double().T) > 0).numpy()


def problem(Q, N, gen, multi=False, classes=4, bits_max=100):
    centres = torch.where(torch.rand(classes, 128, generator=gen) < 0.5, -1.0, 1.0)
    qs, qy = signs_and_codes(Q, 128, gen, centres)
    dbs, dy = signs_and_codes(N, 128, gen, centres)
    dbs[3] = qs[0]  # exact duplicates: distance 0 at every length
    dbs[N - 1] = qs[0]
    if multi:
        ql = (torch.rand(Q, 70, generator=gen) < 0.04).long()
        dl = (torch.rand(N, 70, generator=gen) < 0.04).long()
        ql[:, 0] = (qy == 0).long()  # keep relevance correlated with the codes
        dl[:, 0] = (dy == 0).long()
    else:
        ql, dl = qy, dy
    return qs, dbs, ql, dl


# ---------------------------------------------------------------- ties="index" == classic stable loop


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("topk", [1, 10, "N", None])
def test_index_ap_equals_classic_stable_loop(multi, topk):
    gen = torch.Generator().manual_seed(1 + multi)
    Q, N = 9, 257
    qs, dbs, ql, dl = problem(Q, N, gen, multi)
    k = N if topk == "N" else topk
    got = nf.mean_average_precision(nf.pack(qs), nf.pack(dbs), ql, dl, BITS, topk=k, reduction="none")
    rel = relevance_np(ql, dl).astype(np.float64)
    assert got.shape == (len(BITS), Q) and got.dtype == torch.float64
    for li, b in enumerate(BITS):
        dist = distances(qs, dbs, b)
        want = [classic_ap(dist[i], rel[i], k or N) for i in range(Q)]
        np.testing.assert_allclose(got[li].numpy(), want, rtol=0, atol=1e-12)
    mean = nf.mean_average_precision(nf.pack(qs), nf.pack(dbs), ql, dl, BITS, topk=k)
    torch.testing.assert_close(mean, got.mean(1))


def _ap_path_case(case, gen):
    """(q signs, db signs, q labels, db labels, bits) of one edge case of index_ap's two C++ paths."""
    if case in ("single", "multi"):  # multi: 70 classes, 2 mask words
        return (*problem(9, 257, gen, multi=case == "multi"), BITS)
    if case == "multi_one_word":  # 40 classes: 1 mask word
        qs, dbs, ql, dl = problem(9, 257, gen, multi=True)
        return qs, dbs, ql[:, :40], dl[:, :40], BITS
    if case == "ties8":  # 8-bit and shorter codes: a few distances for 300 items
        return (*problem(7, 300, gen, classes=3), (2, 5, 8))
    if case == "few_codes":  # 3 distinct database codes: huge tie groups at every length
        qs, dbs, ql, dl = problem(5, 300, gen, classes=3)
        return qs, dbs[torch.randint(0, 3, (300,), generator=gen)], ql, dl, BITS
    if case == "no_relevant":  # query 0's class is absent from the database
        qs, dbs, ql, dl = problem(6, 200, gen)
        ql[0] = 99
        return qs, dbs, ql, dl, BITS
    if case == "one_query":  # Q < 2 * threads: the top-k engine splits the database and merges
        return (*problem(1, 40000, gen), BITS)
    if case == "warm_start":  # N >= 32768 rows: the top-k engine's sampled starting thresholds
        return (*problem(8, 40000, gen), (8, 16, 32, 64, 128))
    centres = torch.where(torch.rand(4, 320, generator=gen) < 0.5, -1.0, 1.0)
    qs, qy = signs_and_codes(5, 320, gen, centres)
    dbs, dy = signs_and_codes(150, 320, gen, centres)
    if case == "three_words":  # scalar scan, records
        return qs, dbs, qy, dy, (5, 13, 77, 130, 191)
    return qs, dbs, qy, dy, (7, 100, 300)  # "long": > 255 bits, per-length candidate lists


@pytest.mark.parametrize("path", ["topk", "histogram"])
@pytest.mark.parametrize("case", ["single", "multi", "multi_one_word", "ties8", "few_codes", "no_relevant", "one_query", "warm_start",
                                  "three_words", "long"])
def test_index_ap_paths_equal_classic_stable_loop(path, case, monkeypatch):
    """Both C++ index_ap paths (NHL_INDEX_AP_PATH forces one; by default k/N chooses) against the
    stable-sort loop: AP@k and the hits of precision@k, topk 1, 10, N-1, N."""
    from conftest import cpu_backends

    if "cpp" not in cpu_backends():
        pytest.skip("the C++ extension is not built")
    monkeypatch.setenv("NHL_INDEX_AP_PATH", path)
    gen = torch.Generator().manual_seed(21)
    qs, dbs, ql, dl, bits = _ap_path_case(case, gen)
    q, db = nf.pack(qs), nf.pack(dbs)
    lab_q, lab_db = (ql, dl) if ql.dim() == 1 else (_pack_rows(ql != 0), _pack_rows(dl != 0))
    Q, N = q.shape[0], db.shape[0]
    rel = relevance_np(ql, dl).astype(np.float64)
    dist = {b: distances(qs, dbs, b) for b in bits}
    for k in (1, 10, N - 1, N):
        ap, hits = torch.ops.nhl_fast.index_ap(q, db, lab_q, lab_db, list(bits), k)
        for li, b in enumerate(bits):
            order = [np.argsort(dist[b][i], kind="stable") for i in range(Q)]
            want = [classic_ap(dist[b][i], rel[i], k) for i in range(Q)]
            np.testing.assert_allclose(ap[li].numpy(), want, rtol=0, atol=1e-12, err_msg=f"bits {b} k {k}")
            assert hits[li].tolist() == [int(rel[i][order[i][:k]].sum()) for i in range(Q)], f"bits {b} k {k}"
    if case == "no_relevant":
        assert (ap[:, 0] == 0).all() and (hits[:, 0] == 0).all()


def test_noncontiguous_inputs():
    gen = torch.Generator().manual_seed(3)
    qs, dbs, ql, dl = problem(6, 120, gen)
    q, db = nf.pack(qs), nf.pack(dbs)
    qt = q.t().contiguous().t()  # same values, column-major
    want = nf.mean_average_precision(q, db, ql, dl, BITS, topk=10)
    got = nf.mean_average_precision(qt, db[::1], ql.repeat_interleave(2)[::2], dl, BITS, topk=10)
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- ties="average": exact expectation


@pytest.mark.parametrize("topk", [None, 1, 3, 5, 8])
def test_tie_aware_equals_average_over_all_tie_orders(topk):
    gen = torch.Generator().manual_seed(5)
    Q, N, bits = 4, 8, (2, 3)
    qs, dbs, ql, dl = problem(Q, N, gen, classes=2)
    got = nf.mean_average_precision(nf.pack(qs), nf.pack(dbs), ql, dl, bits, topk=topk, ties="average", reduction="none")
    rel = relevance_np(ql, dl).astype(np.float64)
    for li, b in enumerate(bits):
        dist = distances(qs, dbs, b)
        for i in range(Q):
            aps = [ap_of_order(rel[i][order], topk or N) for order in tie_orders(dist[i])]
            assert abs(got[li, i].item() - np.mean(aps)) < 1e-12


def test_all_items_tied_one_bit():
    """b = 1 and identical database codes: one tie group holds everything."""
    n = 7
    qs = torch.ones(3, 64)
    qs[1] = -1
    dbs = torch.ones(n, 64)
    ql = torch.tensor([0, 1, 2])
    dl = torch.tensor([0, 1, 0, 0, 1, 2, 1])
    q, db = nf.pack(qs), nf.pack(dbs)
    rel = relevance_np(ql, dl).astype(np.float64)
    for topk in (None, 1, 4, n):
        avg = nf.mean_average_precision(q, db, ql, dl, (1,), topk=topk, ties="average", reduction="none")[0]
        idx = nf.mean_average_precision(q, db, ql, dl, (1,), topk=topk, ties="index", reduction="none")[0]
        for i in range(3):
            orders = itertools.permutations(range(n))
            assert abs(avg[i].item() - np.mean([ap_of_order(rel[i][list(o)], topk or n) for o in orders])) < 1e-12
            assert abs(idx[i].item() - ap_of_order(rel[i], topk or n)) < 1e-12  # index order itself


@pytest.mark.parametrize("topk", [None, 40])
def test_tie_aware_matches_monte_carlo(topk):
    gen = torch.Generator().manual_seed(7)
    Q, N, b, M = 3, 300, 4, 4000
    qs, dbs, ql, dl = problem(Q, N, gen, classes=3)
    got = nf.mean_average_precision(nf.pack(qs), nf.pack(dbs), ql, dl, (b,), topk=topk, ties="average", reduction="none")[0]
    rel = torch.from_numpy(relevance_np(ql, dl)).double()
    dist = torch.from_numpy(distances(qs, dbs, b)).double()
    k = topk or N
    for i in range(Q):
        key = dist[i] + torch.rand(M, N, generator=gen)  # random order inside every tie group
        r = rel[i][key.argsort(-1)][:, :k]
        found = r.sum(-1)
        ap = torch.where(found > 0, (r.cumsum(-1) / torch.arange(1, k + 1) * r).sum(-1) / found.clamp(min=1), 0.0)
        tol = 5 * ap.std().item() / M ** 0.5 + 1e-12
        assert abs(got[i].item() - ap.mean().item()) <= tol


def test_index_and_average_agree_without_ties():
    """Distinct distances everywhere (one item per distance): both modes are the same number."""
    N, b = 9, 8
    db_bits = torch.tensor([[1 if j < d else -1 for j in range(64)] for d in range(N)], dtype=torch.float32)
    q = nf.pack(-torch.ones(1, 64))
    db = nf.pack(db_bits)
    ql, dl = torch.tensor([1]), torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1])
    for topk in (None, 4):
        a = nf.mean_average_precision(q, db, ql, dl, (b,), topk=topk, ties="average")
        i = nf.mean_average_precision(q, db, ql, dl, (b,), topk=topk, ties="index")
        torch.testing.assert_close(a, i, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("ties", ["index", "average"])
def test_query_without_relevant_item_scores_zero(ties):
    gen = torch.Generator().manual_seed(8)
    qs, dbs, _, _ = problem(3, 50, gen)
    ql = torch.tensor([0, 9, 1])  # class 9 is absent from the database
    dl = torch.randint(0, 2, (50,), generator=gen)
    ap = nf.mean_average_precision(nf.pack(qs), nf.pack(dbs), ql, dl, BITS, topk=5, ties=ties, reduction="none")
    assert (ap[:, 1] == 0).all()
    torch.testing.assert_close(nf.mean_average_precision(nf.pack(qs), nf.pack(dbs), ql, dl, BITS, topk=5, ties=ties), ap.mean(1))


def test_bad_arguments_raise_clear_errors():
    gen = torch.Generator().manual_seed(9)
    qs, dbs, ql, dl = problem(4, 30, gen)
    q, db = nf.pack(qs), nf.pack(dbs)
    with pytest.raises(ValueError, match="topk"):
        nf.mean_average_precision(q, db, ql, dl, topk=31)
    with pytest.raises(ValueError, match="topk"):
        nf.mean_average_precision(q, db, ql, dl, topk=0)
    with pytest.raises(TypeError, match="topk"):
        nf.mean_average_precision(q, db, ql, dl, topk=2.5)
    with pytest.raises(ValueError, match="k="):
        nf.precision_at_k(q, db, ql, dl, 31)
    with pytest.raises(ValueError, match="q_labels"):
        nf.mean_average_precision(q, db, ql[:3], dl)
    with pytest.raises(ValueError, match="db_labels"):
        nf.mean_average_precision(q, db, ql, dl[None])
    with pytest.raises(TypeError, match="q_labels"):
        nf.mean_average_precision(q, db, ql.float(), dl)
    with pytest.raises(TypeError, match="db_labels"):
        nf.mean_average_precision(q, db, ql, dl.numpy())
    with pytest.raises(ValueError, match="one kind"):
        nf.mean_average_precision(q, db, ql, torch.nn.functional.one_hot(dl, 4))
    with pytest.raises(ValueError, match="multi-hot"):
        nf.mean_average_precision(q, db, torch.full((4, 3), 2), torch.ones(30, 3))
    with pytest.raises(ValueError, match="classes"):
        nf.mean_average_precision(q, db, torch.ones(4, 3), torch.ones(30, 5))
    with pytest.raises(ValueError, match="empty"):
        nf.mean_average_precision(q[:0], db, ql[:0], dl)
    with pytest.raises(ValueError, match="ties"):
        nf.mean_average_precision(q, db, ql, dl, ties="random")
    with pytest.raises(ValueError, match="reduction"):
        nf.mean_average_precision(q, db, ql, dl, reduction="sum")
    with pytest.raises(ValueError, match="radius"):
        nf.precision_at_radius(q, db, ql, dl, radius=-1)
    with pytest.raises(TypeError, match="int64"):
        nf.mean_average_precision(q.int(), db, ql, dl)


# ---------------------------------------------------------------- histogram metrics vs brute force


def test_precision_at_radius_and_pr_curve_brute_force():
    gen = torch.Generator().manual_seed(10)
    qs, dbs, ql, dl = problem(7, 150, gen, multi=True)
    q, db = nf.pack(qs), nf.pack(dbs)
    rel = relevance_np(ql, dl)
    p_r = nf.precision_at_radius(q, db, ql, dl, BITS, radius=2, reduction="none")
    prec, rec = nf.precision_recall_curve(q, db, ql, dl, BITS, reduction="none")
    assert prec.shape == (len(BITS), 7, max(BITS) + 1)
    for li, b in enumerate(BITS):
        dist = distances(qs, dbs, b)
        for i in range(7):
            for r in (2, 0, b // 2, b, max(BITS)):
                inside = dist[i] <= r
                want_p = rel[i][inside].sum() / inside.sum() if inside.any() else 0.0
                want_r = rel[i][inside].sum() / rel[i].sum() if rel[i].any() else 0.0
                assert abs(prec[li, i, r].item() - want_p) < 1e-12 and abs(rec[li, i, r].item() - want_r) < 1e-12
                if r == 2:
                    assert abs(p_r[li, i].item() - want_p) < 1e-12
    mp, mr = nf.precision_recall_curve(q, db, ql, dl, BITS)
    torch.testing.assert_close(mp, prec.mean(1))
    torch.testing.assert_close(mr, rec.mean(1))


@pytest.mark.parametrize("k", [1, 7, 150])
def test_precision_recall_at_k(k):
    gen = torch.Generator().manual_seed(11)
    qs, dbs, ql, dl = problem(5, 150, gen)
    q, db = nf.pack(qs), nf.pack(dbs)
    rel = relevance_np(ql, dl).astype(np.float64)
    p_i = nf.precision_at_k(q, db, ql, dl, k, BITS, reduction="none")
    r_i = nf.recall_at_k(q, db, ql, dl, k, BITS, reduction="none")
    p_a = nf.precision_at_k(q, db, ql, dl, k, BITS, ties="average", reduction="none")
    r_a = nf.recall_at_k(q, db, ql, dl, k, BITS, ties="average", reduction="none")
    for li, b in enumerate(BITS):
        dist = distances(qs, dbs, b)
        for i in range(5):
            hits = rel[i][np.argsort(dist[i], kind="stable")][:k].sum()
            assert abs(p_i[li, i].item() - hits / k) < 1e-12
            assert abs(r_i[li, i].item() - hits / rel[i].sum()) < 1e-12
            # expectation over tie orders: bins before the cut fully, the cut bin pro rata
            order = np.argsort(dist[i], kind="stable")
            dk = dist[i][order][k - 1]
            before, at = dist[i] < dk, dist[i] == dk
            e_hits = rel[i][before].sum() + (k - before.sum()) * rel[i][at].sum() / at.sum()
            assert abs(p_a[li, i].item() - e_hits / k) < 1e-12
            assert abs(r_a[li, i].item() - e_hits / rel[i].sum()) < 1e-12


# ---------------------------------------------------------------- backends and op registration


def labels_for(kind, Q, N, gen):
    if kind == "class":
        return torch.randint(0, 3, (Q,), generator=gen), torch.randint(0, 3, (N,), generator=gen)
    c = 70 if kind == "mask2" else 150
    return (_pack_rows(torch.rand(Q, c, generator=gen) < 0.06), _pack_rows(torch.rand(N, c, generator=gen) < 0.06))


SHAPES = [(1, [8, 16, 32, 64]), (2, [3, 8, 16, 64, 100]), (2, [8, 16, 32, 64, 128]), (3, [5, 150, 192])]
LABELS = ["class", "mask2", "mask3"]


def op_cases():
    """Every shape x label layout on each backend; the Triton interpreter is slow, so on CPU it
    gets a covering subset (every shape once, every label layout once)."""
    cases = []
    for p in backend_params():
        backend, device = p.values
        interp = backend == "triton" and device == "cpu"
        combos = list(zip(SHAPES, LABELS + LABELS[:1])) if interp else list(itertools.product(SHAPES, LABELS))
        for (words, bits), labels in combos:
            cases.append(pytest.param(backend, device, words, bits, labels, marks=p.marks,
                                      id=f"{p.id}-w{words}-{'_'.join(map(str, bits))}-{labels}"))
    return cases


@pytest.mark.parametrize("backend,device,words,bits,labels", op_cases())
def test_ops_match_reference(backend, device, words, bits, labels):
    gen = torch.Generator().manual_seed(12)
    Q, N = (3, 37) if backend == "triton" else (11, 203)
    q = nf.pack(torch.randn(Q, 64 * words, generator=gen))
    db = nf.pack(torch.randn(N, 64 * words, generator=gen))
    db[2] = q[0]
    ql, dl = labels_for(labels, Q, N, gen)
    args = [t.to(device) for t in (q, db, ql, dl)]
    from nhl_fast._dispatch import implementation as op

    tot, rel = op("distance_histogram", backend)(*args, bits)
    want_tot, want_rel = reference.distance_histogram(q, db, ql, dl, bits)
    assert torch.equal(tot.cpu(), want_tot) and torch.equal(rel.cpu(), want_rel)
    for k in ((None, 5) if backend == "triton" and device == "cpu" else (None, 1, 5, N)):
        ap, hits = op("index_ap", backend)(*args, bits, k)
        want_ap, want_hits = reference.index_ap(q, db, ql, dl, bits, k)
        torch.testing.assert_close(ap.cpu(), want_ap, rtol=0, atol=1e-12)
        assert torch.equal(hits.cpu(), want_hits)


@pytest.mark.parametrize("backend,device", backend_params())
def test_public_functions_on_every_backend(backend, device):
    gen = torch.Generator().manual_seed(13)
    qs, dbs, ql, dl = problem(4, 60, gen, multi=True)
    q, db = nf.pack(qs).to(device), nf.pack(dbs).to(device)
    ql, dl = ql.to(device), dl.to(device)
    for ties in ("index", "average"):
        got = nf.mean_average_precision(q, db, ql, dl, BITS, topk=9, ties=ties, backend=backend)
        want = nf.mean_average_precision(q, db, ql, dl, BITS, topk=9, ties=ties, backend="torch")
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=0, atol=1e-12)
    got = nf.precision_recall_curve(q, db, ql, dl, BITS, backend=backend)
    want = nf.precision_recall_curve(q, db, ql, dl, BITS, backend="torch")
    torch.testing.assert_close(got[0].cpu(), want[0].cpu())


@pytest.mark.parametrize("topk", [None, 1, 7, 40, 200, 300])
def test_tie_ap_op_matches_reference(topk):
    """The C++ closed form (digamma, hypergeometric summed outward from its mode) vs the torch spec."""
    from conftest import cpu_backends

    if "cpp" not in cpu_backends():
        pytest.skip("the C++ extension is not built")
    gen = torch.Generator().manual_seed(15)
    qs, dbs, ql, dl = problem(12, 300, gen, classes=3)
    tot, rel = reference.distance_histogram(nf.pack(qs), nf.pack(dbs), ql, dl, BITS)
    got = torch.ops.nhl_fast.tie_ap(tot, rel, topk)
    torch.testing.assert_close(got, reference.tie_ap(tot, rel, topk), rtol=0, atol=1e-12)


def _compiled_ops():
    ops = []
    from conftest import cpu_backends

    if "cpp" in cpu_backends():
        ops += [torch.ops.nhl_fast.distance_histogram.default, torch.ops.nhl_fast.index_ap.default,
                torch.ops.nhl_fast.tie_ap.default]
    if "triton" in cpu_backends():
        ops += [torch.ops.nhl_fast.distance_histogram_triton.default, torch.ops.nhl_fast.index_ap_triton.default]
    return ops


@pytest.mark.parametrize("op", _compiled_ops(), ids=str)
def test_opcheck(op):
    gen = torch.Generator().manual_seed(14)
    q = nf.pack(torch.randn(3, 100, generator=gen))
    db = nf.pack(torch.randn(19, 100, generator=gen))
    ql, dl = torch.randint(0, 2, (3,), generator=gen), torch.randint(0, 2, (19,), generator=gen)
    args = (q, db, ql, dl, [8, 16, 100])
    if "tie_ap" in str(op):
        tot, rel = reference.distance_histogram(*args)
        for k in (None, 4):
            torch.library.opcheck(op, (tot, rel, k))
    elif "index_ap" in str(op):
        for k in (None, 4):
            torch.library.opcheck(op, args + (k,))
    else:
        torch.library.opcheck(op, args)
