"""MultiIndexHammingIndex: every search equals the flat top-k (the reference's stable sort), ties included."""
import itertools
import math

import pytest
import torch

import nhl_fast as nf
from nhl_fast import reference
from nhl_fast.mih import plan_substrings

MIH = nf.MultiIndexHammingIndex


def random_codes(n, bits, seed):
    return nf.pack(torch.randn(n, bits, generator=torch.Generator().manual_seed(seed)))


def clustered_codes(n, bits, classes, flip, seed, centers_seed=0):
    """Class centers with each bit flipped with probability `flip`: how trained codes look."""
    centers = torch.rand(classes, bits, generator=torch.Generator().manual_seed(centers_seed)) < 0.5
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return nf.pack(centers[labels] ^ (torch.rand(n, bits, generator=g) < flip))


def assert_exact(index, q, db, k, bits):
    dist, ids = index.search(q, k, bits)
    ref_dist, ref_ids = reference.topk(q, db, k, bits)
    assert torch.equal(dist, ref_dist)
    assert torch.equal(ids, ref_ids)


# flat_fraction=None: every (query, length) is answered by the tables, never by the flat fallback
@pytest.mark.parametrize("flat_fraction", [None, 0.05])
@pytest.mark.parametrize("k", [1, 10])
def test_random_codes_every_nested_length(k, flat_fraction, one_thread):
    bits = (8, 16, 32, 64, 128)
    db, q = random_codes(3000, 128, 0), random_codes(9, 128, 1)
    for tables in (None, [8, 16, 32, 64, 96, 128]):  # the second has a table inside every length
        index = MIH(bits, tables, flat_fraction=flat_fraction)
        index.add(db)
        assert_exact(index, q, db, k, bits)
        if flat_fraction is None:
            first = index.substrings()[0]
            assert index.last_stats["flat_lengths"] == [b for b in bits if b < first[0] + first[1]]
            assert not any(index.last_stats["fallback"].values())


@pytest.mark.parametrize("flip", [0.02, 0.1])
def test_clustered_codes(flip, one_thread):
    bits = (16, 32, 64)
    db = clustered_codes(4000, 64, 20, flip, 2)
    q = clustered_codes(12, 64, 20, flip, 3)  # the same centers, other draws
    index = MIH(bits, flat_fraction=None)
    index.add(db)
    for k in (1, 10, 100):
        assert_exact(index, q, db, k, bits)


def test_lengths_not_multiples_of_64_and_batches(one_thread):
    bits = (8, 20, 72)
    batches = [random_codes(n, 72, s) for s, n in enumerate((1, 700, 3, 500))]
    index = MIH(bits, flat_fraction=None)
    for b in batches[:2]:
        index.add(b)
    q = random_codes(6, 72, 50)
    assert_exact(index, q, torch.cat(batches[:2]), 5, bits)
    for b in batches[2:]:  # adds after a search rebuild the tables
        index.add(b)
    db = torch.cat(batches)
    assert index.ntotal == db.shape[0]
    assert_exact(index, q, db, 5, bits)
    assert_exact(index, q, db, 3, (9, 33, 71))  # lengths other than the index's own


def test_duplicates_and_heavy_ties_go_to_lower_ids(one_thread):
    base = random_codes(40, 64, 3)
    g = torch.Generator().manual_seed(4)
    db = base[torch.randint(0, 40, (2000,), generator=g)]  # every code about 50 times
    q = torch.cat([base[:3], random_codes(3, 64, 5)])
    index = MIH((8, 32, 64), tables=4, flat_fraction=None)
    index.add(db)
    for k in (1, 7, 60, 500):
        assert_exact(index, q, db, k, (8, 32, 64))


def test_k_equals_n_and_one_query(one_thread):
    db = random_codes(200, 40, 6)
    index = MIH((8, 24, 40), flat_fraction=None)
    index.add(db)
    assert_exact(index, random_codes(3, 40, 7), db, 200, (8, 24, 40))
    assert_exact(index, db[5:6], db, 1, (8, 24, 40))
    # with the fallback on, k = N goes to the flat scan: the same answer
    index.flat_fraction = 0.01
    assert_exact(index, random_codes(3, 40, 7), db, 200, (8, 24, 40))
    assert index.last_stats["flat_lengths"] == [8, 24, 40]


def test_tiny_database():
    index = MIH((8, 64), flat_fraction=None)
    one = random_codes(1, 64, 8)
    index.add(one)
    dist, ids = index.search(random_codes(2, 64, 9), 1)
    assert ids.tolist() == [[[0], [0]], [[0], [0]]]
    assert torch.equal(dist, reference.topk(random_codes(2, 64, 9), one, 1, (8, 64))[0])


@pytest.mark.parametrize("tables", [1, 3, [8, 20, 72], [10, 50]])
def test_table_overrides(tables, one_thread):
    db, q = random_codes(1500, 72, 10), random_codes(5, 72, 11)
    index = MIH((8, 20, 72), tables=tables, flat_fraction=None)
    index.add(db)
    assert_exact(index, q, db, 4, (8, 20, 72))


def test_fallback_queries_are_exact(one_thread):
    db = clustered_codes(3000, 64, 3, 0.3, 12)  # dense clusters: many codes in every bucket
    q = random_codes(8, 64, 13)
    index = MIH((32, 64), flat_fraction=0.01)
    index.add(db)
    assert_exact(index, q, db, 20, (32, 64))
    assert sum(index.last_stats["fallback"].values()) > 0  # this data makes some queries give up


def test_pilot_sends_a_hopeless_length_to_the_flat_scan(one_thread):
    db, q = random_codes(3000, 64, 22), random_codes(100, 64, 23)
    index = MIH((64,), flat_fraction=0.001)  # a budget of 67: random 64-bit codes at k = 5 pass it
    index.add(db)
    assert_exact(index, q, db, 5, (64,))
    assert index.last_stats["fallback"][64] >= 100 - 32  # everything after the pilot went flat


def test_remove(one_thread):
    db = random_codes(1000, 64, 14)
    index = MIH((16, 64), flat_fraction=None)
    index.add(db)
    q = random_codes(4, 64, 15)
    index.search(q, 3)
    gone = torch.tensor([0, 5, 999, 5, 400])
    assert index.remove(gone) == 4
    keep = torch.ones(1000, dtype=torch.bool)
    keep[gone] = False
    assert_exact(index, q, db[keep], 3, (16, 64))
    assert index.remove([]) == 0
    with pytest.raises(ValueError, match=r"ids must be in \[0, 996\)"):
        index.remove([996])
    with pytest.raises(TypeError, match="ids must be integer"):
        index.remove(torch.tensor([1.0]))


def test_plan_follows_the_paper_and_the_nested_lengths():
    # m = round(b / log2 N); cuts move onto nested lengths nearby; widths capped at floor(log2 N) - 2
    subs = plan_substrings(10_000_000, (8, 16, 32, 64, 128))
    assert len(subs) == round(128 / math.log2(10_000_000)) == 6
    assert [s for s, _ in subs][:3] == [0, 16, 43] and (64, 21) in subs
    assert all(w <= 21 for _, w in subs)
    assert plan_substrings(10_000_000, (64,)) == [(0, 21), (21, 21), (43, 21)]
    for (s0, w0), (s1, _) in itertools.pairwise(plan_substrings(1_000_000, (8, 20, 72))):
        assert s0 + w0 <= s1  # disjoint


def test_memory_within_3x_the_codes():
    db = random_codes(1 << 16, 64, 16)
    index = MIH((64,))
    index.add(db)
    index.build()
    mem = index.memory_bytes()
    assert mem["codes"] == db.numel() * 8
    assert mem["codes"] + mem["tables"] <= 3 * mem["codes"]


def test_save_load_roundtrip(tmp_path):
    db, q = random_codes(500, 72, 17), random_codes(3, 72, 18)
    index = MIH((8, 20, 72), tables=[20, 50, 72], flat_fraction=None)
    index.add(db[:300])
    index.add(db[300:])
    path = tmp_path / "mih.safetensors"
    index.save(str(path))
    loaded = MIH.load(str(path))
    assert loaded.bits == index.bits and loaded.tables == index.tables and loaded.flat_fraction is None
    assert torch.equal(loaded.codes, db)
    assert_exact(loaded, q, db, 6, (8, 20, 72))


def test_corrupt_or_foreign_file_is_a_clear_error_and_keeps_the_old_file(tmp_path):
    index = MIH((8, 64))
    index.add(random_codes(20, 64, 19))
    path = tmp_path / "mih.safetensors"
    index.save(str(path))
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a MultiIndexHammingIndex file"):
        MIH.load(str(path))
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a MultiIndexHammingIndex file"):
        MIH.load(str(path))
    flat = nf.NestedHammingIndex(bits=(8, 64))
    flat.add(random_codes(4, 64, 20))
    flat.save(str(path))
    with pytest.raises(ValueError, match="not a MultiIndexHammingIndex file"):
        MIH.load(str(path))
    # a failed save (unwritable directory target) leaves the previous file as it was
    path.write_bytes(good)
    with pytest.raises(OSError):
        index.save(str(tmp_path / "missing_dir" / "mih.safetensors"))
    assert path.read_bytes() == good


def test_newer_version_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "future.safetensors"
    save_file({"codes": random_codes(2, 64, 21)}, str(path),
              metadata={"nhl_fast_mih": '{"format": "nhl_fast.MultiIndexHammingIndex", "version": 99}'})
    with pytest.raises(ValueError, match="version 99"):
        MIH.load(str(path))


def test_bad_inputs_name_the_argument():
    """The arguments of its own; those it shares with NestedHammingIndex are in test_index.py."""
    with pytest.raises(TypeError, match="tables must be"):
        MIH((8, 64), tables="4")
    with pytest.raises(ValueError, match="tables="):
        MIH((8, 64), tables=[20, 10])
    with pytest.raises(ValueError, match="last cut"):
        MIH((8, 64), tables=[32, 70])
    with pytest.raises(ValueError, match="flat_fraction"):
        MIH((8, 64), flat_fraction=0)
    index = MIH((8, 64))
    index.add(random_codes(3, 64, 0))
    with pytest.raises(ValueError, match="words per code"):
        index.search(random_codes(1, 128, 1), 1)
    dist, ids = index.search(torch.empty(0, 1, dtype=torch.int64), 2)  # no queries: empty answers of the right shape
    assert dist.shape == (2, 0, 2) and ids.shape == (2, 0, 2)
