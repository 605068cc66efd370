"""The multi-length Hamming engine (pack, unpack, hamming, topk): every backend vs the reference.

Shapes hit the edges: lengths that are not multiples of 64 (or of 4, or of 8), one query,
N = 1, k = 1 and k = N, a database of a few distinct codes (heavy ties pin the tie order:
ascending distance, then lower index). The Triton backend runs under TRITON_INTERPRET=1 on
CPU and is slow, so it gets tiny shapes only.
"""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nhl_fast as nf
from nhl_fast import reference as ref
from nhl_fast._dispatch import BackendUnavailable
from tests.conftest import backend_params

BITS = (1, 8, 12, 16, 32, 48, 64, 100, 128, 256)
BITS_SETS = [(1,), (8, 16, 32, 64, 128), (12, 48, 100), (5, 127), (100, 256), (64,), (3, 33, 65, 200, 256)]


def codes(n: int, bits: int, distinct: int = 0, seed: int = 0) -> torch.Tensor:
    """(n, bits) float32 codes; with `distinct` > 0 only that many different codes (many ties)."""
    g = torch.Generator().manual_seed(seed)
    if distinct:
        pool = torch.randn(distinct, bits, generator=g)
        return pool[torch.randint(distinct, (n,), generator=g)]
    return torch.randn(n, bits, generator=g)


def packed(n, bits, distinct=0, seed=0, device="cpu"):
    return ref.pack(codes(n, bits, distinct, seed)).to(device)


def shapes(backend):
    """(Q, N, distinct) combinations; Triton gets tiny ones."""
    if backend == "triton":
        return [(1, 5, 0), (3, 37, 4)]
    return [(1, 1, 0), (7, 5, 0), (64, 1000, 0), (7, 4099, 3), (1, 4099, 0), (64, 1000, 5)]


def bits_for(backend):
    return (12, 64, 100) if backend == "triton" else BITS


# ------------------------------------------------------------------ pack / unpack


@pytest.mark.parametrize("backend,device", backend_params())
def test_pack_unpack_match_reference(backend, device):
    for b in bits_for(backend):
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.bool):
            c = codes(9, b, seed=b)
            c[0, : min(b, 5)] = 0.0  # sign(0) packs as 0
            c = c > 0 if dtype == torch.bool else c.to(dtype)
            p = nf.pack(c.to(device), backend=backend)
            assert p.dtype == torch.int64 and p.shape == (9, (b + 63) // 64)
            torch.testing.assert_close(p.cpu(), ref.pack(c), rtol=0, atol=0)
        want = ref.unpack(p.cpu(), b)
        for sub in sorted({1, b // 2 or 1, b}):
            got = nf.unpack(p, sub, backend=backend)
            assert got.dtype == torch.float32 and got.shape == (9, sub)
            torch.testing.assert_close(got.cpu(), want[:, :sub], rtol=0, atol=0)
        # unpack inverts pack on the signs
        torch.testing.assert_close(want, torch.where(c.float() > 0, 1.0, -1.0).cpu(), rtol=0, atol=0)


def numpy_faiss_layout(c: np.ndarray) -> np.ndarray:
    """faiss fvecs2bitvecs, written independently: bit j of a code is bit j % 8 of byte j // 8."""
    n, b = c.shape
    out = np.zeros((n, (b + 7) // 8), dtype=np.uint8)
    for j in range(b):
        out[:, j // 8] |= ((c[:, j] > 0).astype(np.uint8) << (j % 8)).astype(np.uint8)
    return out


@pytest.mark.parametrize("b", [8, 12, 64, 100, 128, 256])
def test_pack_bytes_are_the_faiss_layout(b):
    c = codes(33, b, seed=7)
    p = nf.pack(c)
    got = p.view(torch.uint8).numpy()[:, : (b + 7) // 8]
    np.testing.assert_array_equal(got, numpy_faiss_layout(c.numpy()))
    assert not got.reshape(33, -1)[:, (b + 7) // 8 :].any()


def test_pack_matches_faiss_and_its_distances():
    faiss = pytest.importorskip("faiss")
    for b in (64, 128, 256):
        c = codes(200, b, seed=b)
        p = nf.pack(c)
        x = np.ascontiguousarray(c.numpy())
        fb = np.zeros((200, b // 8), dtype=np.uint8)
        faiss.real_to_binary(200 * b, faiss.swig_ptr(x), faiss.swig_ptr(fb))
        np.testing.assert_array_equal(p.view(torch.uint8).numpy(), fb)
        index = faiss.IndexBinaryFlat(b)
        index.add(fb[50:])
        D, I = index.search(fb[:50], 20)
        d, i = nf.topk(p[:50], p[50:], 20, bits=b)
        np.testing.assert_array_equal(d[0].numpy(), D)  # same distances (faiss's tie order is its own)
        full = nf.hamming(p[:50], p[50:], bits=b)[0]
        np.testing.assert_array_equal(torch.gather(full, 1, torch.from_numpy(I)).numpy(), D)


# ------------------------------------------------------------------ hamming / topk


@pytest.mark.parametrize("backend,device", backend_params())
def test_hamming_matches_reference(backend, device):
    for b, (Q, N, distinct) in itertools.product(bits_for(backend), shapes(backend)):
        if backend != "triton" and N == 4099 and b not in (12, 100, 128):
            continue  # the large database on a few widths keeps the test quick
        q, db = packed(Q, b, 0, seed=b), packed(N, b, distinct, seed=b + 1)
        if distinct:
            q[0] = db[N // 2]
        lengths = tuple(sorted({1, max(1, b // 3), b}))
        got = nf.hamming(q.to(device), db.to(device), bits=lengths, backend=backend)
        assert got.dtype == torch.int32 and got.shape == (len(lengths), Q, N)
        torch.testing.assert_close(got.cpu(), ref.hamming(q, db, lengths), rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", backend_params())
def test_hamming_bit_sets(backend, device):
    sets = [(12, 64, 100)] if backend == "triton" else BITS_SETS
    for lengths in sets:
        W = (lengths[-1] + 63) // 64 + (1 if lengths[-1] < 100 else 0)  # sometimes spare words
        q, db = packed(5, 64 * W, seed=1), packed(37, 64 * W, 4, seed=2)
        got = nf.hamming(q.to(device), db.to(device), bits=lengths, backend=backend)
        torch.testing.assert_close(got.cpu(), ref.hamming(q, db, lengths), rtol=0, atol=0)


def check_topk(backend, device, q, db, k, lengths):
    d, i = nf.topk(q.to(device), db.to(device), k, bits=lengths, backend=backend)
    rd, ri = ref.topk(q, db, k, lengths)
    assert d.dtype == torch.int32 and i.dtype == torch.int64 and d.shape == (len(lengths), q.shape[0], k)
    torch.testing.assert_close(d.cpu(), rd, rtol=0, atol=0)
    torch.testing.assert_close(i.cpu(), ri, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", backend_params())
def test_topk_matches_reference(backend, device):
    for b, (Q, N, distinct) in itertools.product(bits_for(backend), shapes(backend)):
        if backend != "triton" and N == 4099 and b not in (1, 12, 64, 100, 128, 256):
            continue
        q, db = packed(Q, b, 0, seed=b), packed(N, b, distinct, seed=b + 1)
        if distinct:
            q[0] = db[N // 2]  # exact matches: a run of ties at distance 0
        lengths = (b,) if b < 8 else tuple(sorted({b // 4 or 1, b // 2, b}))
        for k in sorted({1, min(10, N), N}):
            check_topk(backend, device, q, db, k, lengths)


@pytest.mark.parametrize("backend,device", backend_params())
def test_topk_bit_sets_and_heavy_ties(backend, device):
    sets = [(12, 64, 100)] if backend == "triton" else BITS_SETS
    N = 40 if backend == "triton" else 3000
    for lengths in sets:
        W = (lengths[-1] + 63) // 64
        for distinct in (1, 3, 50):
            q, db = packed(4, 64 * W, seed=distinct), packed(N, 64 * W, distinct, seed=distinct + 9)
            q[1] = db[-1]
            for k in (1, 7, N // 2, N):
                check_topk(backend, device, q, db, k, lengths)


@pytest.mark.parametrize("backend,device", backend_params())
def test_topk_default_bits_and_noncontiguous(backend, device):
    base_q, base_db = packed(6, 256, seed=3), packed(300, 256, 7, seed=4)
    q = base_q[::2, :2]  # strided rows, sliced words: (3, 2), not contiguous
    db = base_db[1::2, 2:]  # (150, 2)
    assert not q.is_contiguous() and not db.is_contiguous()
    d, i = nf.topk(q.to(device), db.to(device), 11, backend=backend)
    rd, ri = ref.topk(q.contiguous(), db.contiguous(), 11, (8, 16, 32, 64, 128))
    torch.testing.assert_close(d.cpu(), rd, rtol=0, atol=0)
    torch.testing.assert_close(i.cpu(), ri, rtol=0, atol=0)
    D = nf.hamming(q.to(device), db.to(device), backend=backend)
    torch.testing.assert_close(D.cpu(), ref.hamming(q.contiguous(), db.contiguous(), (8, 16, 32, 64, 128)))
    c = codes(20, 80, seed=5).t()  # (80, 20) transposed view
    torch.testing.assert_close(nf.pack(c.to(device), backend=backend).cpu(), ref.pack(c.contiguous()))


def test_topk_splits_the_database_for_few_queries():
    """One query on a large database: the C++ op splits the database across threads and merges."""
    q, db = packed(1, 128, seed=11), packed(70_000, 128, 40, seed=12)
    for k in (1, 100, 5000):
        check_topk("cpp", "cpu", q, db, k, (8, 16, 32, 64, 128))


def test_topk_sampled_start_thresholds():
    """A database large enough for the sampled warm start (>= 32768 rows per scan) stays exact,
    with heavy ties and with k large enough that some lists fall back to a full rescan."""
    q, db = packed(8, 128, seed=13), packed(40_000, 128, 300, seed=14)
    q[0] = db[123]
    for k in (1, 100, 3000):
        check_topk("cpp", "cpu", q, db, k, (8, 16, 32, 64, 100, 128))


def test_large_outputs_reuse_freed_memory():
    """Outputs of 1 MiB and up take the memory of freed outputs (nf.empty_cache() frees it): a
    reused block's old contents never show, and outputs of 8 MiB and up (streamed) are exact."""
    ext = nf._dispatch.extension()[0]
    nf.empty_cache()
    db = packed(1200, 128, 30, seed=22)
    lengths = (64, 100)
    check_topk("cpp", "cpu", packed(600, 128, seed=21), db, 1200, lengths)  # 17 MB, streamed
    held = ext.output_cache_bytes()
    assert held >= 600 * 1200 * 2 * 12  # both freed outputs wait in the cache
    check_topk("cpp", "cpu", packed(600, 128, seed=23), db, 1200, lengths)  # reuses them
    q = packed(300, 128, seed=24)
    D = nf.hamming(q, db, bits=lengths, backend="cpp")  # 2.9 MB
    torch.testing.assert_close(D, ref.hamming(q, db, lengths), rtol=0, atol=0)
    d, i = nf.topk(q, db, 1000, bits=lengths)
    i.resize_(3, 5)  # a cached output is an ordinary, resizable tensor
    i.resize_(4000, 1000)
    i.fill_(7)
    d += 1
    del d, i, D
    assert nf.empty_cache() >= held and ext.output_cache_bytes() == 0


def test_output_cache_can_be_turned_off():
    code = ("import torch, nhl_fast as nf; q = torch.randint(0, 2**62, (500, 2)); "
            "d, i = nf.topk(q, q, 500); del d, i; print(nf._dispatch.extension()[0].output_cache_bytes())")
    env = dict(os.environ, NHL_OUTPUT_CACHE_MB="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0"]


@pytest.mark.parametrize("no_avx512", ["0", "1"])
def test_topk_record_paths(no_avx512, monkeypatch):
    """Both record-append paths of the C++ scan (AVX-512 compress where the CPU has it; AVX2 with
    NHL_TOPK_NO_AVX512=1): heavy ties, k = 1 and k = N, 64 lengths, lengths ending mid-nibble,
    a 255-bit length (uint8 distances at the limit), the database split for one query, and
    the sampled warm start with its rescan fallback."""
    monkeypatch.setenv("NHL_TOPK_NO_AVX512", no_avx512)
    q, db = packed(5, 128, seed=21), packed(3000, 128, 4, seed=22)
    q[0] = db[7]
    for k in (1, 64, 3000):
        check_topk("cpp", "cpu", q, db, k, (8, 16, 32, 64, 128))
    check_topk("cpp", "cpu", q, db, 40, tuple(range(2, 129, 2)))
    check_topk("cpp", "cpu", q, db, 25, (3, 9, 22, 67, 101, 127))
    q4, db4 = packed(3, 256, seed=23), packed(500, 256, 6, seed=24)
    for k in (9, 500):
        check_topk("cpp", "cpu", q4[:, :4], db4[:, :4], k, (64, 200, 255))
    big_q, big_db = packed(4, 128, seed=25), packed(40_000, 128, 200, seed=26)
    big_q[1] = big_db[40]
    for k in (1, 700, 9000):
        check_topk("cpp", "cpu", big_q, big_db, k, (8, 16, 32, 64, 128))  # warm start (>= 32768 rows)
        check_topk("cpp", "cpu", big_q[:1], big_db, k, (8, 16, 32, 64, 128))  # one query: split + merge


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    Q=st.integers(1, 9),
    N=st.integers(1, 300),
    words=st.integers(1, 3),
    distinct=st.integers(0, 6),
    data=st.data(),
)
def test_topk_property_cpp(Q, N, words, distinct, data):
    """Random widths, lengths, k and tie structure: cpp == reference, and distances are sorted."""
    lengths = sorted(data.draw(st.sets(st.integers(1, 64 * words), min_size=1, max_size=5)))
    k = data.draw(st.integers(1, N))
    q, db = packed(Q, 64 * words, seed=Q), packed(N, 64 * words, distinct, seed=N)
    d, i = nf.topk(q, db, k, bits=lengths, backend="cpp")
    rd, ri = ref.topk(q, db, k, lengths)
    assert torch.equal(d, rd) and torch.equal(i, ri)
    assert bool((d[..., 1:] >= d[..., :-1]).all())
    D = nf.hamming(q, db, bits=lengths, backend="cpp")
    assert torch.equal(torch.gather(D, 2, i), d)


# ------------------------------------------------------------------ bad input


def test_bad_inputs_name_the_argument():
    q, db = packed(3, 128), packed(10, 128)
    with pytest.raises(TypeError, match="q must be int64"):
        nf.hamming(q.int(), db)
    with pytest.raises(TypeError, match="db must be int64"):
        nf.topk(q, db.float(), 1)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        nf.topk(q.numpy(), db, 1)
    with pytest.raises(ValueError, match="same number of words"):
        nf.hamming(q, db[:, :1])
    with pytest.raises(ValueError, match="strictly increasing"):
        nf.hamming(q, db, bits=(16, 8))
    with pytest.raises(ValueError, match="strictly increasing"):
        nf.topk(q, db, 2, bits=(8, 8))
    with pytest.raises(ValueError, match=r"bits=.*\[1, 128\]"):
        nf.topk(q, db, 2, bits=(64, 129))
    with pytest.raises(ValueError, match="bits"):
        nf.hamming(q, db, bits=(0, 8))
    with pytest.raises(ValueError, match="bits must not be empty"):
        nf.hamming(q, db, bits=())
    with pytest.raises(TypeError, match="bits must contain ints"):
        nf.hamming(q, db, bits=(8.0,))
    with pytest.raises(ValueError, match=r"k=11 must be in \[1, N\]"):
        nf.topk(q, db, 11)
    with pytest.raises(ValueError, match=r"k=0"):
        nf.topk(q, db, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        nf.topk(q, db, 2.0)
    with pytest.raises(ValueError, match="q is empty"):
        nf.topk(q[:0], db, 1)
    with pytest.raises(ValueError, match="db is empty"):
        nf.hamming(q, db[:0])
    with pytest.raises(ValueError, match="q must be 2-D"):
        nf.hamming(q[0], db)
    with pytest.raises(ValueError, match="packed is empty"):
        nf.unpack(db[:0], 8)
    with pytest.raises(ValueError, match="bits"):
        nf.unpack(db, 129)
    with pytest.raises(ValueError, match="NaN"):
        c = codes(4, 16)
        c[2, 3] = float("nan")
        nf.pack(c)
    with pytest.raises(TypeError, match="codes must be a floating-point or bool"):
        nf.pack(torch.ones(3, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="codes is empty"):
        nf.pack(torch.ones(0, 8))
    with pytest.raises(ValueError, match="backend="):
        nf.hamming(q, db, backend="fpga")
    with pytest.raises(BackendUnavailable, match="cuda"):
        nf.hamming(q, db, backend="cuda")


def test_compiled_op_rejects_bad_arguments_without_crashing():
    """A direct torch.ops call bypasses the Python checks: the C++ op still errors cleanly."""
    q, db = packed(3, 128), packed(10, 128)
    with pytest.raises(ValueError, match="k=11 must be in"):
        torch.ops.nhl_fast.topk(q, db, 11, [8])
    with pytest.raises(ValueError, match="strictly increasing"):
        torch.ops.nhl_fast.hamming(q, db, [16, 8])
    with pytest.raises(ValueError, match="same number"):
        torch.ops.nhl_fast.topk(q, db[:, :1], 1, [8])
    with pytest.raises(ValueError, match=r"\[1, 64\*W\]"):
        torch.ops.nhl_fast.hamming(q, db, [200])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixed_devices_are_rejected():
    q, db = packed(3, 64), packed(10, 64)
    with pytest.raises(ValueError, match="same device"):
        nf.hamming(q.cuda(), db)
    with pytest.raises(ValueError, match="same device"):
        nf.topk(q, db.cuda(), 2)


# ------------------------------------------------------------------ registration


def test_opcheck_compiled_ops():
    q, db = packed(5, 100, seed=1), packed(40, 100, 6, seed=2)
    c = codes(6, 70)
    ops = torch.ops.nhl_fast
    torch.library.opcheck(ops.pack.default, (c,))
    torch.library.opcheck(ops.unpack.default, (db, 77))
    torch.library.opcheck(ops.hamming.default, (q, db, [12, 48, 100]))
    torch.library.opcheck(ops.topk.default, (q, db, 9, [12, 48, 100]))


def test_torch_compile_fullgraph_traces_hamming_and_topk():
    torch._dynamo.reset()

    def retrieve(q, db):
        D = nf.hamming(q, db, bits=(8, 16, 64))
        d, i = nf.topk(q, db, 5, bits=(8, 16, 64))
        return D, d, i

    q, db = packed(4, 64, seed=1), packed(50, 64, 5, seed=2)
    got = torch.compile(retrieve, fullgraph=True, backend="eager")(q, db)
    want = retrieve(q, db)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    torch.testing.assert_close(got[0], ref.hamming(q, db, (8, 16, 64)))


def test_build_info_lists_cpp():
    info = nf.build_info()
    assert "cpp" in info["backends"]
    assert info["openmp_threads"] >= 1 and info["compiler"]
