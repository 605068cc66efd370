import os

import pytest
import torch

import nhl_fast as nf
from nhl_fast import reference


def codes(n, bits, seed):
    return nf.pack(torch.randn(n, bits, generator=torch.Generator().manual_seed(seed)))


def test_search_equals_topk_over_all_added_batches():
    index = nf.NestedHammingIndex(bits=(8, 12, 100))
    batches = [codes(n, 100, s) for s, n in enumerate((5, 1, 300, 64))]
    for b in batches:
        index.add(b)
    db = torch.cat(batches)
    q = codes(7, 100, 99)
    assert index.ntotal == db.shape[0]
    dist, ids = index.search(q, 10)
    ref_dist, ref_ids = reference.topk(q, db, 10, (8, 12, 100))
    assert torch.equal(dist, ref_dist) and torch.equal(ids, ref_ids)
    dist, ids = index.search(q, db.shape[0], bits=(100,))  # k = N, one length
    assert torch.equal(ids, reference.topk(q, db, db.shape[0], (100,))[1])


def test_ties_resolve_to_lower_ids_across_batches():
    index = nf.NestedHammingIndex(bits=(8, 16))
    same = codes(1, 16, 0).repeat(4, 1)
    index.add(same[:2])
    index.add(same[2:])
    _, ids = index.search(same[:1], 3)
    assert ids.tolist() == [[[0, 1, 2]], [[0, 1, 2]]]


@pytest.mark.parametrize("cls", [nf.NestedHammingIndex, nf.MultiIndexHammingIndex])
def test_bad_inputs_name_the_argument(cls):
    index = cls(bits=(8, 64))
    with pytest.raises(ValueError, match="empty"):
        index.search(codes(1, 64, 0), 1)
    with pytest.raises(ValueError, match="words per code"):
        index.add(codes(3, 128, 0))
    with pytest.raises(TypeError, match="packed must be int64"):
        index.add(torch.zeros(3, 1))
    index.add(codes(3, 64, 0))
    with pytest.raises(ValueError, match=r"k=4 must be in \[1, N\]"):
        index.search(codes(1, 64, 1), 4)
    with pytest.raises(ValueError, match="strictly increasing"):
        cls(bits=(16, 8))


def test_save_load_roundtrip_and_corrupt_file_keeps_original(tmp_path):
    index = nf.NestedHammingIndex(bits=(8, 32, 48))
    index.add(codes(50, 48, 0))
    path = tmp_path / "index.safetensors"
    index.save(str(path))
    loaded = nf.NestedHammingIndex.load(str(path))
    assert loaded.bits == index.bits and torch.equal(loaded.codes, index.codes)
    q = codes(2, 48, 5)
    assert torch.equal(loaded.search(q, 5)[1], index.search(q, 5)[1])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a NestedHammingIndex file"):
        nf.NestedHammingIndex.load(str(bad))
    assert bad.read_bytes() == b"not a safetensors file"
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors", "index.safetensors"]  # no temp file left
