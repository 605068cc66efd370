"""What is specific to the GPU paths of the engine (the backend x reference matrix is in
test_engine.py): Triton block boundaries, W > 2, bit 63, chunked top-k merges with large k;
the CUDA kernels on bigger shapes (several database chunks, heavy ties, > 32 lengths) and
mixed-device errors. Triton runs on CPU tensors under TRITON_INTERPRET=1 (keep shapes tiny)."""
import inspect
import os
import subprocess
import sys

import pytest
import torch

import nhl_fast
from nhl_fast import reference as ref
from nhl_fast._dispatch import not_supported_reasons

from conftest import HAS_CUDA

TRITON_DEVICES = [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d
                  for d in ("cpu", "cuda") if not not_supported_reasons("triton", torch.device(d))
                  and (d == "cpu" or torch.cuda.is_available())]
needs_triton = pytest.mark.skipif(not TRITON_DEVICES, reason="triton cannot run here (set TRITON_INTERPRET=1)")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and the CUDA extension")
INT64_MIN = -(1 << 63)


def random_words(n, words, gen, distinct=None):
    """(n, words) int64 codes with every bit random (bit 63 included); `distinct` codes only, for ties."""
    full = torch.randint(INT64_MIN, 2**63 - 1, (distinct or n, words), generator=gen, dtype=torch.int64)
    return full if distinct is None else full[torch.randint(0, distinct, (n,), generator=gen)]


def triton_ops():
    return torch.ops.nhl_fast  # nhl_fast::<op>_triton: registered by `import nhl_fast`


# ------------------------------------------------------------------ Triton


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.bool])
def test_triton_pack_block_edges(device, dtype):
    gen = torch.Generator().manual_seed(1)
    # 33 rows: one past the 32-row block; 200 bits: W=4 with a partial last word.
    codes = torch.randn(33, 200, generator=gen)
    codes[3] = 0.0  # sign(0) packs as 0
    codes = (codes > 0) if dtype == torch.bool else codes.to(dtype)
    got = triton_ops().pack_triton(codes.to(device)).cpu()
    assert torch.equal(got, ref.pack(codes))


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_bit63(device):
    codes = -torch.ones(3, 128)
    codes[0, 63] = 1  # only bit 63 of word 0 -> INT64_MIN
    codes[1, 127] = 1  # only bit 63 of word 1
    codes[2] = 1  # all ones -> -1, -1
    packed = triton_ops().pack_triton(codes.to(device)).cpu()
    assert packed.tolist() == [[INT64_MIN, 0], [0, INT64_MIN], [-1, -1]]
    assert torch.equal(triton_ops().unpack_triton(packed.to(device), 128).cpu(), codes)
    # Distances that differ only in bit 63 (sign bit of the word): 1 at length 64, 0 at 63.
    q, db = packed[:1].to(device), torch.zeros(1, 2, dtype=torch.int64, device=device)
    assert triton_ops().hamming_triton(q, db, [63, 64, 128]).cpu().flatten().tolist() == [0, 1, 1]


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("bits", [1, 63, 129, 256])
def test_triton_unpack_block_edges(device, bits):
    packed = random_words(17, 4, torch.Generator().manual_seed(bits))  # 17 rows: one past the 16-row block
    got = triton_ops().unpack_triton(packed.to(device), bits).cpu()
    assert torch.equal(got, ref.unpack(packed, bits))


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("words, bits", [(3, [1, 63, 64, 65, 130, 192]), (1, [5]), (2, [64, 128])])
def test_triton_hamming_tile_edges(device, words, bits):
    gen = torch.Generator().manual_seed(words)
    q, db = random_words(17, words, gen), random_words(65, words, gen)  # one past 16 x 64 tiles
    db[0] = q[0]
    db[1] = q[1] ^ INT64_MIN  # differs in bit 63 of every word
    got = triton_ops().hamming_triton(q.to(device), db.to(device), bits).cpu()
    assert torch.equal(got, ref.hamming(q, db, bits))


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("k", [1, 15, 16, 17, 40, 97])
def test_triton_topk_chunk_merges(device, k, monkeypatch):
    from nhl_fast.kernels import topk as topk_kernel

    # Small chunks and key budget: many merges (k below, at and above the chunk) and query batches.
    monkeypatch.setattr(topk_kernel, "MIN_CHUNK", 16)
    monkeypatch.setattr(topk_kernel, "max_keys", lambda device: 3 * 2 * (97 + 16))
    gen = torch.Generator().manual_seed(k)
    q, db = random_words(7, 2, gen, distinct=3), random_words(97, 2, gen, distinct=4)  # heavy ties
    bits = [3, 64, 100]
    dist, idx = topk_kernel.topk_triton(q.to(device), db.to(device), k, bits)
    want_dist, want_idx = ref.topk(q, db, k, bits)
    assert torch.equal(dist.cpu(), want_dist) and torch.equal(idx.cpu(), want_idx)


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_public_api_pins_backend(device):
    gen = torch.Generator().manual_seed(5)
    q, db = random_words(3, 2, gen).to(device), random_words(20, 2, gen).to(device)
    dist, idx = nhl_fast.topk(q, db, 20, bits=(12, 48, 128), backend="triton")
    want_dist, want_idx = ref.topk(q.cpu(), db.cpu(), 20, (12, 48, 128))
    assert torch.equal(dist.cpu(), want_dist) and torch.equal(idx.cpu(), want_idx)


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_opcheck(device):
    gen = torch.Generator().manual_seed(6)
    q, db = random_words(2, 2, gen).to(device), random_words(9, 2, gen).to(device)
    ops = triton_ops()
    torch.library.opcheck(ops.pack_triton, (torch.randn(3, 70, generator=gen).to(device),))
    torch.library.opcheck(ops.unpack_triton, (q, 100))
    torch.library.opcheck(ops.hamming_triton, (q, db, [8, 100]))
    torch.library.opcheck(ops.topk_triton, (q, db, 4, [8, 100]))


_COMPILE_FOR_SM90 = """
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from nhl_fast.kernels import hamming, pack, unpack

def ptx(fn, signature, constexprs):
    return compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                   target=GPUTarget("cuda", 90, 32)).asm["ptx"]

for keys in (False, True):
    sig = {"q_ptr": "*i64", "db_ptr": "*i64", "out_ptr": "*i64" if keys else "*i32", "table_ptr": "*i64",
           "nq": "i32", "ndb": "i32", "words": "i32", "words_used": "i32", "plane": "i32", "key_n": "i32",
           "key_base": "i32", "KEYS": "constexpr", "BLOCK_Q": "constexpr", "BLOCK_N": "constexpr"}
    code = ptx(hamming.hamming_tile_kernel, sig, {"KEYS": keys, "BLOCK_Q": 16, "BLOCK_N": 64})
    assert "popc.b64" in code, "the SWAR popcount did not become the popc instruction"
for p in ("*fp32", "*bf16", "*u8"):
    ptx(pack._pack_kernel, {"codes_ptr": p, "out_ptr": "*i64", "n": "i32", "bits": "i32", "words": "i32",
                            "BLOCK_N": "constexpr"}, {"BLOCK_N": 32})
ptx(unpack._unpack_kernel, {"packed_ptr": "*i64", "out_ptr": "*fp32", "n": "i32", "words": "i32", "bits": "i32",
                            "BLOCK_N": "constexpr", "BLOCK_B": "constexpr"}, {"BLOCK_N": 16, "BLOCK_B": 128})
print("compiled")
"""


def test_triton_kernels_compile_for_sm90():
    """The Triton kernels lower to sm_90 PTX with no GPU (in a subprocess: the interpreter cannot compile)."""
    compiler = pytest.importorskip("triton.compiler")
    if "constexprs" not in inspect.signature(compiler.ASTSource).parameters:
        pytest.skip("this triton's ASTSource predates constexprs= (triton < 3.3)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-3000:]


# ------------------------------------------------------------------ CUDA


def _cuda_topk_matches(q, db, k, bits):
    dist, idx = torch.ops.nhl_fast.topk(q.cuda(), db.cuda(), k, list(bits))
    want_dist, want_idx = ref.topk(q, db, k, bits)
    assert torch.equal(dist.cpu(), want_dist)
    assert torch.equal(idx.cpu(), want_idx)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.bool])
def test_cuda_pack_unpack(dtype):
    gen = torch.Generator().manual_seed(7)
    codes = torch.randn(1000, 300, generator=gen)
    codes[:, 63] = 1  # bit 63 of word 0 set everywhere
    codes[5] = 0
    codes = (codes > 0) if dtype == torch.bool else codes.to(dtype)
    packed = nhl_fast.pack(codes.cuda(), backend="cuda")
    assert torch.equal(packed.cpu(), ref.pack(codes))
    for bits in (1, 63, 64, 65, 300):
        assert torch.equal(nhl_fast.unpack(packed, bits, backend="cuda").cpu(), ref.unpack(packed.cpu(), bits))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("words, bits", [(2, (8, 16, 32, 64, 128)), (3, (1, 12, 48, 100, 129, 192)),
                                         (1, tuple(range(1, 41)))])  # 40 lengths: two groups of <= 32
def test_cuda_hamming(words, bits):
    gen = torch.Generator().manual_seed(words)
    q, db = random_words(37, words, gen), random_words(5001, words, gen)
    got = nhl_fast.hamming(q.cuda(), db.cuda(), bits, backend="cuda")
    assert torch.equal(got.cpu(), ref.hamming(q, db, bits))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("nq, n, k, distinct", [
    (1, 1, 1, None),
    (9, 70_001, 1000, None),  # 35 database chunks of 2048, 2 query tiles
    (9, 70_001, 1000, 5),  # heavy ties: the lowest indices at the threshold win
    (3, 4099, 4099, 2),  # k = N
    (20, 3000, 10, 1),  # every code equal
])
def test_cuda_topk(nq, n, k, distinct):
    gen = torch.Generator().manual_seed(n + k)
    q, db = random_words(nq, 2, gen), random_words(n, 2, gen, distinct=distinct)
    _cuda_topk_matches(q, db, k, (8, 16, 32, 64, 100, 128))


@pytest.mark.cuda
@needs_cuda
def test_cuda_topk_many_lengths_and_wide_codes():
    gen = torch.Generator().manual_seed(11)
    q, db = random_words(5, 40, gen), random_words(3000, 40, gen, distinct=50)  # 2560 bits: global histogram
    _cuda_topk_matches(q, db, 77, (1, 2, 3, 1000, 2047, 2560))
    q, db = random_words(4, 1, gen), random_words(2000, 1, gen, distinct=30)
    _cuda_topk_matches(q, db, 300, tuple(range(1, 65)))  # two groups of 32 lengths


@pytest.mark.cuda
@needs_cuda
def test_cuda_topk_query_batches():
    gen = torch.Generator().manual_seed(12)
    q, db = random_words(5000, 2, gen), random_words(3000, 2, gen, distinct=100)  # > 4096 queries: 2 batches
    _cuda_topk_matches(q, db, 5, (16, 128))


@pytest.mark.cuda
@needs_cuda
def test_cuda_noncontiguous_inputs():
    gen = torch.Generator().manual_seed(13)
    q, db = random_words(10, 4, gen), random_words(500, 4, gen)
    qs, dbs = q.cuda()[::2, 1:3], db.cuda()[:, 1:3]  # strided views
    assert torch.equal(nhl_fast.hamming(qs, dbs, (100, 128), backend="cuda").cpu(),
                       ref.hamming(q[::2, 1:3], db[:, 1:3], (100, 128)))


@pytest.mark.cuda
@needs_cuda
def test_cuda_mixed_devices_error():
    q = torch.zeros(2, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="same device"):
        nhl_fast.topk(q.cuda(), q, 1, backend="cuda")
    with pytest.raises(ValueError, match="db must be a CUDA tensor"):
        torch.ops.nhl_fast.topk(q.cuda(), q, 1, [64])  # the op itself, past the Python checks
    with pytest.raises(ValueError, match="db must be a CUDA tensor"):
        torch.ops.nhl_fast.hamming(q.cuda(), q, [64])


@pytest.mark.cuda
@needs_cuda
def test_cuda_opcheck():
    gen = torch.Generator().manual_seed(14)
    q, db = random_words(3, 2, gen).cuda(), random_words(50, 2, gen).cuda()
    ops = torch.ops.nhl_fast
    torch.library.opcheck(ops.pack, (torch.randn(4, 100, generator=gen).cuda(),))
    torch.library.opcheck(ops.unpack, (q, 100))
    torch.library.opcheck(ops.hamming, (q, db, [8, 100]))
    torch.library.opcheck(ops.topk, (q, db, 7, [8, 100]))
